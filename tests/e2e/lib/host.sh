# shellcheck shell=bash
# Host side: tools, the .deb files under test, and the cached Debian 12 root filesystem.

E2E_CACHE=${E2E_CACHE:-/var/cache/shiftd-e2e}
E2E_SUITE=${E2E_SUITE:-bookworm}
# What the container needs besides minbase. adduser is here so that `apt install ./shiftd.deb`
# resolves its dependencies from the root filesystem alone; man-db because
# `systemd-analyze verify` runs `man` for every Documentation=man: of a unit, as on a
# standard Debian install, so it proves the package ships its man page.
E2E_ROOTFS_PACKAGES=${E2E_ROOTFS_PACKAGES:-systemd,systemd-sysv,dbus,nginx-light,curl,procps,ca-certificates,adduser,man-db}
# Bump when customize_rootfs changes, so cached root filesystems are rebuilt.
E2E_ROOTFS_RECIPE=2

# Installs what the harness runs on the host; does nothing when it is all there.
ensure_host_tools() {
  local need=() pkg
  for pkg in systemd-container debootstrap curl util-linux coreutils dpkg; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
  done
  if ((${#need[@]})); then
    log "installing host packages: ${need[*]}"
    bounded 600 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive bounded 900 apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  command -v python3 >/dev/null || die "python3 is needed on the host"
  if ! command -v "${E2E_OHA:-oha}" >/dev/null && [[ ! -x $HOME/.cargo/bin/oha ]]; then
    log "installing the load generator oha (cargo install, a few minutes once)"
    bounded 1800 cargo install oha --locked --quiet
  fi
  E2E_OHA=$(command -v "${E2E_OHA:-oha}" || echo "$HOME/.cargo/bin/oha")
  export E2E_OHA
}

# The newest target/debian/shiftd_*.deb when it is newer than every file it is built
# from, else nothing. CI builds and checks the package (packaging/ci-package.sh) just
# before this suite; building it again would only cost minutes.
fresh_deb() {
  local deb newest_source
  deb=$(find "$REPO_DIR/target" -path '*/debian/shiftd_*.deb' -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -1 | cut -d' ' -f2-)
  [[ -n $deb ]] || return 0
  newest_source=$(cd "$REPO_DIR" && git ls-files -z -- src systemd debian packaging migrations Cargo.toml Cargo.lock build.rs 2>/dev/null |
    xargs -0 -r stat -c '%Y' 2>/dev/null | sort -n | tail -1)
  [[ -n $newest_source ]] && (($(stat -c '%Y' "$deb") >= newest_source)) && echo "$deb"
  return 0
}

# Sets E2E_DEB to the package under test: $E2E_DEB if given; else a target/debian/*.deb
# newer than its sources (unless E2E_REBUILD=1); else built by packaging/ci-package.sh when
# the repository has it, else by `cargo deb`.
build_deb() {
  if [[ -z ${E2E_DEB-} && ${E2E_REBUILD:-0} != 1 ]]; then
    E2E_DEB=$(fresh_deb)
    [[ -n $E2E_DEB ]] && log "reusing $E2E_DEB: it is newer than its sources (E2E_REBUILD=1 builds anew)"
  fi
  if [[ -n ${E2E_DEB-} ]]; then
    [[ -f $E2E_DEB ]] || die "E2E_DEB=$E2E_DEB does not exist"
    E2E_DEB=$(realpath "$E2E_DEB")
  else
    if [[ -x $REPO_DIR/packaging/ci-package.sh ]]; then
      log "building and checking the .deb with packaging/ci-package.sh"
      # It prints the path of the .deb as its last line on stdout.
      E2E_DEB=$(cd "$REPO_DIR" && bounded 3600 packaging/ci-package.sh | tail -1) ||
        die "packaging/ci-package.sh failed"
    else
      command -v cargo-deb >/dev/null || bounded 1800 cargo install cargo-deb --locked --quiet
      log "building the .deb with cargo deb"
      E2E_DEB=$(cd "$REPO_DIR" && bounded 3600 cargo deb | tail -1) || die "cargo deb failed"
    fi
    [[ -f $E2E_DEB ]] || die "the build named no .deb (last line: $E2E_DEB)"
  fi
  log "package under test: $E2E_DEB ($(dpkg-deb -f "$E2E_DEB" Version))"
  export E2E_DEB
}

# deb_compression DEB: the compressor of DEB's payload, as dpkg-deb -Z takes it (gzip, xz
# or zstd), so a repacked package costs apt what the original would.
deb_compression() {
  case $(ar t "$1" | grep '^data\.tar') in
    data.tar.gz) echo gzip ;;
    data.tar.zst) echo zstd ;;
    *) echo xz ;;
  esac
}

# repack_deb SUFFIX: prints the path of $E2E_DEB repacked as version <version>+SUFFIX.
# Repacked rather than rebuilt: same payload, maintainer scripts and compression, so an
# upgrade tests the upgrade path itself and costs seconds, also for a prebuilt $E2E_DEB.
repack_deb() {
  local suffix=$1 dir="$E2E_WORK/next-$1" version next
  version=$(dpkg-deb -f "$E2E_DEB" Version)
  next="${version}+$suffix"
  rm -rf "$dir"; mkdir -p "$dir"
  dpkg-deb -R "$E2E_DEB" "$dir/pkg"
  sed -i "s/^Version: .*/Version: $next/" "$dir/pkg/DEBIAN/control"
  dpkg-deb --root-owner-group "-Z$(deb_compression "$E2E_DEB")" -b "$dir/pkg" "$dir/shiftd_${next}.deb" >/dev/null
  dpkg --compare-versions "$next" gt "$version" || die "repacked version $next is not above $version"
  echo "$dir/shiftd_${next}.deb"
}

# Sets E2E_DEB_NEXT to the same package with a higher version, for the upgrade scenario.
build_next_deb() {
  E2E_DEB_NEXT=$(repack_deb e2e1)
  export E2E_DEB_NEXT
  log "upgrade package: $E2E_DEB_NEXT"
}

# The Debian mirror the host's apt uses, so debootstrap goes where apt already goes.
host_mirror() {
  grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
    grep -v -e security -e '\[' | sed -E 's/^URIs: *//; s/^deb +//' | awk '{print $1}' |
    grep -E '/debian/?$' | head -1 || true
}

rootfs_key() {
  printf '%s|%s|%s' "$E2E_SUITE" "$E2E_ROOTFS_PACKAGES" "$E2E_ROOTFS_RECIPE" | sha256sum | cut -c1-12
}

# A root filesystem is usable when it finished building and its key binaries are there.
rootfs_ok() {
  local root=$1
  [[ -f $root/.e2e-ready && -x $root/lib/systemd/systemd && -x $root/usr/sbin/nginx &&
     -x $root/usr/bin/curl && -x $root/usr/bin/apt ]] &&
    chroot "$root" dpkg-query -W systemd nginx-light dbus >/dev/null 2>&1
}

# What the container needs beyond packages. Part of the cache key via E2E_ROOTFS_RECIPE.
customize_rootfs() {
  local root=$1
  # Keep every line: the audit reads the whole run, and request logs come in bursts.
  mkdir -p "$root/etc/systemd/journald.conf.d" "$root/var/log/journal"
  cat >"$root/etc/systemd/journald.conf.d/e2e.conf" <<'CONF'
[Journal]
Storage=persistent
RateLimitIntervalSec=0
SystemMaxUse=1G
CONF
  # The suite enables the shiftd site itself; nothing else may take the HTTP port.
  rm -f "$root/etc/nginx/sites-enabled/default"
  echo shiftd-e2e >"$root/etc/hostname"
  # No interactive prompts and no recommends inside (apt runs non-interactively).
  printf 'APT::Install-Recommends "false";\nDpkg::Options { "--force-confdef"; "--force-confold"; };\n' \
    >"$root/etc/apt/apt.conf.d/90e2e"
  chroot "$root" apt-get clean
}

# Ephemeral copies (-x) and their .lck files that a killed nspawn left behind sit beside the
# root as .#*.
# A copy that a running container uses (another run sharing this cache) is left alone.
remove_stale_copies() {
  local copy pid
  for pid in $(pgrep -x systemd-nspawn || true); do
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -F -- "-D $E2E_CACHE/" >/dev/null; then
      log "a container from $E2E_CACHE is running (pid $pid); leaving its copies alone"
      return 0
    fi
  done
  for copy in "$E2E_CACHE"/.#*; do
    [[ -e $copy ]] && rm -rf "$copy"
  done
  return 0
}

# Sets E2E_ROOT to a cached root filesystem, building it when missing or broken.
ensure_rootfs() {
  mkdir -p "$E2E_CACHE"
  local key root tmp mirror started
  key=$(rootfs_key)
  root="$E2E_CACHE/rootfs-$key"
  remove_stale_copies
  if rootfs_ok "$root"; then
    log "reusing cached root filesystem $root"
  else
    started=$SECONDS
    if [[ -e $root ]]; then log "cached root filesystem $root is broken; rebuilding"; rm -rf "$root"; fi
    tmp="$E2E_CACHE/.build-$key"
    rm -rf "$tmp"
    mirror=$(host_mirror)
    log "building a $E2E_SUITE root filesystem with debootstrap (about a minute)"
    bounded 1200 debootstrap --variant=minbase --include="$E2E_ROOTFS_PACKAGES" \
      "$E2E_SUITE" "$tmp" ${mirror:+"$mirror"} >"$E2E_WORK/debootstrap.log" 2>&1 ||
      { tail -20 "$E2E_WORK/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
    customize_rootfs "$tmp"
    touch "$tmp/.e2e-ready"
    mv "$tmp" "$root"
    rootfs_ok "$root" || die "the new root filesystem $root is not usable"
    log "root filesystem ready in $((SECONDS - started)) s"
    # Older keys are dead weight.
    find "$E2E_CACHE" -maxdepth 1 -name 'rootfs-*' ! -name "rootfs-$key" -exec rm -rf {} + 2>/dev/null || true
  fi
  E2E_ROOT=$root
  export E2E_ROOT
}
