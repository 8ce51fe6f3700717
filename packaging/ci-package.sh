#!/usr/bin/env bash
# Builds the Debian package and proves it is right, as CI runs it (as root, on a bare
# Debian 12 machine, CI=true, nothing interactive). Exits non-zero with a message on the
# first failure.
#
#  1. tools: lintian, dpkg-dev, systemd-container, debootstrap, iproute2 (apt), cargo-deb (cargo)
#  2. cargo build --release; then, before packaging, the files the package is made of:
#     - packaging/shiftd.8 is what `shiftd man` prints today
#     - packaging/shiftd.toml lists every key, each at the binary's default
#     - TimeoutStopSec in systemd/shiftd.service = default shutdown.grace + the margin
#       its comment states
#  3. cargo deb (gzip-compressed); lintian with no error and no warning that lacks an override
#  4. the .deb: its files, conffiles, units, and maintainer scripts in which nothing
#     stops or restarts shiftd.socket on upgrade
#  5. on a real systemd (Debian 12 under systemd-nspawn; a root filesystem built by the
#     helpers in tests/e2e/lib and cached in /var/cache/shiftd-ci): install;
#     systemd-analyze verify on both units; systemd-analyze security <= 1.5; the
#     service ready through the socket; the post-install check passes; the nginx site
#     passes `nginx -t`; an upgrade restarts the service, leaves the socket alone and
#     runs no deb-systemd-helper (its records of the units stay untouched); remove
#     keeps config, data and user; a reinstall after remove enables and starts both
#     units again; purge deletes config, data, user and the helper's records.
#
# The path of the .deb is the last line on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

CARGO_DEB_VERSION=3.8.0
MAX_EXPOSURE=1.5
STARTED=$SECONDS

say() { printf '%s ci-package: %s\n' "$(date +%T)" "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }
step() { printf '\n=== %s\n' "$*" >&2; }
# bounded SECONDS COMMAND...: no command may hang CI.
bounded() { timeout -k 10 "$1" "${@:2}"; }

WORK=$(mktemp -d /tmp/shiftd-ci-package.XXXXXX)
cleanup() {
    local rc=$?
    if declare -F teardown_container >/dev/null; then teardown_container || true; fi
    rm -rf "$WORK"
    ((rc == 0)) || say "failed after $((SECONDS - STARTED)) s"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------------
step "1. tools"
[[ $(id -u) -eq 0 ]] || fail "run as root: this installs packages with apt-get and boots a container"
command -v cargo >/dev/null || fail "cargo is missing: install Rust (rust-version in Cargo.toml or newer) first"

need=()
for pkg in lintian dpkg-dev systemd-container debootstrap util-linux iproute2; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
done
if ((${#need[@]})); then
    say "installing ${need[*]}"
    bounded 600 apt-get update -qq || fail "apt-get update failed"
    bounded 900 apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=120 "${need[@]}" >/dev/null ||
        fail "apt-get install ${need[*]} failed"
fi
if ! cargo deb --version >/dev/null 2>&1; then
    say "installing cargo-deb $CARGO_DEB_VERSION (a few minutes, once)"
    bounded 1800 cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" --quiet ||
        fail "cargo install cargo-deb failed"
fi
say "$(cargo deb --version), $(lintian --version)"

# ------------------------------------------------------------------------------------
step "2. build, and check the files the package is made of"
bounded 3600 cargo build --release --locked || fail "cargo build --release failed"
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | sed -E 's/.*"target_directory":"([^"]*)".*/\1/')
BIN="$TARGET_DIR/release/shiftd"
[[ -x $BIN ]] || fail "the build made no $BIN"
# The binary must not see SHIFTD_* from the caller's environment, nor /etc/shiftd.
shiftd() { env -i PATH=/usr/bin:/bin "$BIN" "$@"; }

# The man page is generated from the CLI definition and kept in the tree, so that a
# plain `cargo deb` on a fresh clone works; it must be what the binary prints now.
shiftd man >"$WORK/shiftd.8" || fail "\`shiftd man\` failed"
if ! diff -u packaging/shiftd.8 "$WORK/shiftd.8" >"$WORK/man.diff"; then
    head -40 "$WORK/man.diff" >&2
    fail "packaging/shiftd.8 is stale: run \`$BIN man > packaging/shiftd.8\` and commit it"
fi
say "ok: packaging/shiftd.8 is what \`shiftd man\` prints"

# packaging/shiftd.toml comments out every setting as `#key = value` (no space after #)
# under its uncommented [section]; prose and examples use `# `. Uncommenting the
# settings must give exactly the defaults, and name every key the defaults have.
sed -E 's/^#([a-z_]+ = )/\1/' packaging/shiftd.toml >"$WORK/uncommented.toml"
: >"$WORK/empty.toml"
# keys FILE: "section.key" for every `key = value` line of a TOML file, sorted.
keys() { awk '/^\[/ {gsub(/[][]/, ""); s=$0; next} /^[a-z_]+ = / {print s "." $1}' "$1" | sort; }
shiftd check --config "$WORK/empty.toml" >"$WORK/defaults.out" 2>&1 ||
    { cat "$WORK/defaults.out" >&2; fail "\`shiftd check\` fails on an empty configuration"; }
shiftd check --config "$WORK/uncommented.toml" >"$WORK/shipped.out" 2>&1 ||
    { cat "$WORK/shipped.out" >&2; fail "packaging/shiftd.toml with every setting uncommented is not a valid configuration"; }
if ! diff -u <(keys "$WORK/defaults.out") <(keys "$WORK/uncommented.toml") >"$WORK/keys.diff"; then
    cat "$WORK/keys.diff" >&2
    fail "packaging/shiftd.toml and the binary's settings differ ('-' only in the binary, '+' only in the file)"
fi
if ! diff -u <(tail -n +2 "$WORK/defaults.out") <(tail -n +2 "$WORK/shipped.out") >"$WORK/values.diff"; then
    cat "$WORK/values.diff" >&2
    fail "a value in packaging/shiftd.toml is not the built-in default ('-' default, '+' the file's)"
fi
say "ok: packaging/shiftd.toml lists all $(keys "$WORK/uncommented.toml" | wc -l) settings at their defaults"

# seconds DURATION: "60s", "1m", "1m 30s", "250ms" (rounded up) -> whole seconds.
seconds() {
    awk -v d="$1" 'BEGIN {
        total = 0; n = split(d, parts, " ")
        for (i = 1; i <= n; i++) {
            p = parts[i]; num = p; sub(/[a-z]+$/, "", num); unit = substr(p, length(num) + 1)
            if (unit == "ms") total += num / 1000; else if (unit == "s" || unit == "") total += num
            else if (unit == "m" || unit == "min") total += num * 60; else if (unit == "h") total += num * 3600
            else { print "bad"; exit }
        }
        printf "%d\n", (total == int(total)) ? total : int(total) + 1 }'
}
grace_text=$(sed -nE 's/^#grace = "([^"]+)"$/\1/p' packaging/shiftd.toml)
grace=$(seconds "$grace_text")
unit_stop=$(sed -nE 's/^TimeoutStopSec=([0-9]+)s$/\1/p' systemd/shiftd.service)
comment=$(grep -E '^# Stop: shutdown.grace \([0-9]+s\) \+ [0-9]+s margin = [0-9]+s\.$' systemd/shiftd.service) ||
    fail "systemd/shiftd.service must state its stop budget as '# Stop: shutdown.grace (Ns) + Ms margin = Ts.'"
read -r c_grace c_margin c_total < <(sed -E 's/.*\(([0-9]+)s\) \+ ([0-9]+)s margin = ([0-9]+)s\./\1 \2 \3/' <<<"$comment")
[[ $grace =~ ^[0-9]+$ && -n $unit_stop ]] || fail "cannot read shutdown.grace ($grace_text) or TimeoutStopSec (want whole seconds)"
((c_grace == grace)) || fail "the unit's comment says shutdown.grace is ${c_grace}s, the default configuration says $grace_text"
((c_grace + c_margin == c_total)) || fail "the unit's comment does not add up: $c_grace + $c_margin != $c_total"
((unit_stop == grace + c_margin)) ||
    fail "TimeoutStopSec=${unit_stop}s but shutdown.grace ${grace}s + ${c_margin}s margin = $((grace + c_margin))s: set TimeoutStopSec=$((grace + c_margin))s and fix the comment"
say "ok: TimeoutStopSec=${unit_stop}s = shutdown.grace ${grace}s (default) + ${c_margin}s margin"

# ------------------------------------------------------------------------------------
step "3. cargo deb, lintian"
# gzip, not cargo-deb's default xz: dpkg unpacks the package while the old process still
# serves, and xz costs ~0.26 s of CPU there against gzip's ~0.06 s (on this 2-core class of
# machine), for a package of 6.6 MB instead of 4.9 MB. cargo-deb has no manifest key for it.
DEB=$(bounded 600 cargo deb --no-build -Z gz 2>"$WORK/cargo-deb.log" | tail -1) ||
    { cat "$WORK/cargo-deb.log" >&2; fail "cargo deb failed"; }
[[ -f $DEB ]] || { cat "$WORK/cargo-deb.log" >&2; fail "cargo deb made no package"; }
grep -i warning "$WORK/cargo-deb.log" >&2 && fail "cargo deb warned (above)"
VERSION=$(dpkg-deb -f "$DEB" Version)
say "built $DEB ($VERSION, $(du -h "$DEB" | cut -f1))"
changelog_version=$(sed -nE '1s/^shiftd \(([^)]+)\).*/\1/p' debian/changelog)
[[ $changelog_version == "$VERSION" ]] ||
    fail "debian/changelog's top entry is $changelog_version but the package is $VERSION: add a changelog entry (dch -v $VERSION)"

# An error or a warning fails, unless debian/shiftd.lintian-overrides overrides it with a
# reason (shown as O: with the reason above it). Info tags (I:) are shown, not fatal.
lintian_rc=0
bounded 300 lintian --display-info --show-overrides "$DEB" >"$WORK/lintian" 2>&1 || lintian_rc=$?
grep -v 'running with root privileges' "$WORK/lintian" >&2 || true
((lintian_rc == 0 || lintian_rc == 2)) || fail "lintian itself failed (exit $lintian_rc)"
grep -qE '^[EW]: ' "$WORK/lintian" &&
    fail "lintian reports errors or warnings (E:/W: above): fix them, or override one in debian/shiftd.lintian-overrides with the reason"
say "ok: lintian has no errors and no warnings"

# ------------------------------------------------------------------------------------
step "4. package contents and maintainer scripts"
dpkg-deb -c "$DEB" | awk '{print $1, $2, $6}' >"$WORK/contents"
mkdir "$WORK/control"
dpkg-deb -e "$DEB" "$WORK/control"
expect_file() { # MODE PATH
    grep -qxF -e "$1 0/0 ./$2" "$WORK/contents" || fail "the package lacks $2 with mode $1 (dpkg-deb -c shows $(grep -F "./$2" "$WORK/contents" || echo nothing))"
}
expect_file -rwxr-xr-x usr/bin/shiftd
expect_file -rw-r--r-- usr/lib/systemd/system/shiftd.service
expect_file -rw-r--r-- usr/lib/systemd/system/shiftd.socket
expect_file -rw-r--r-- etc/shiftd/shiftd.toml
expect_file -rw-r--r-- etc/nginx/sites-available/shiftd
expect_file -rw-r--r-- usr/share/man/man8/shiftd.8.gz
expect_file -rw-r--r-- usr/share/doc/shiftd/copyright
expect_file -rw-r--r-- usr/share/doc/shiftd/changelog.Debian.gz
expect_file -rwxr-xr-x usr/libexec/shiftd/post-install-check
grep -q 'sites-enabled' "$WORK/contents" && fail "the package must not enable the nginx site (it ships a file under sites-enabled)"
diff -u <(printf '%s\n' /etc/nginx/sites-available/shiftd /etc/shiftd/shiftd.toml) <(sort "$WORK/control/conffiles") ||
    fail "the conffiles are not exactly the configuration and the nginx site"
mkdir "$WORK/payload"
dpkg-deb -x "$DEB" "$WORK/payload"
for f in shiftd.service shiftd.socket; do
    cmp -s "systemd/$f" "$WORK/payload/usr/lib/systemd/system/$f" || fail "the packaged $f differs from systemd/$f"
done
cmp -s packaging/shiftd.toml "$WORK/payload/etc/shiftd/shiftd.toml" || fail "the packaged shiftd.toml differs from packaging/shiftd.toml"

for script in postinst prerm postrm; do
    f="$WORK/control/$script"
    [[ -x $f ]] || fail "the package has no executable $script"
    grep -q '#DEBHELPER#' "$f" && fail "$script still contains #DEBHELPER#: cargo-deb did not fill it in"
    sh -n "$f" || fail "$script is not valid sh"
done
# On upgrade the socket must stay open. Every line that hands shiftd.socket to
# deb-systemd-invoke or systemctl is listed; only two may exist: the start on a fresh
# install and debhelper's stop on remove. (The container below proves it by running.)
grep -nE '(deb-systemd-invoke|systemctl)\b.*shiftd\.socket' \
    "$WORK/control/postinst" "$WORK/control/prerm" "$WORK/control/postrm" >"$WORK/socket-actions" || true
sed 's/^/    /' "$WORK/socket-actions" >&2
allowed='(postinst:[0-9]+: *deb-systemd-invoke start shiftd\.socket shiftd\.service |prerm:[0-9]+:\s*deb-systemd-invoke stop shiftd\.service shiftd\.socket )'
if grep -vE "$allowed" "$WORK/socket-actions" | grep -q .; then
    fail "a maintainer script acts on shiftd.socket beyond starting it on install and stopping it on remove (above): restarting it closes the port during upgrades"
fi
grep -qE '^ *if \[ -z "\$2" \]; then$' "$WORK/control/postinst" ||
    fail "postinst must start shiftd.socket only on a fresh install (if [ -z \"\$2\" ])"
grep -qE '^if \[ -d /run/systemd/system \] && \[ "\$1" = remove \]; then$' "$WORK/control/prerm" ||
    fail "prerm stops the units on something other than remove (expected debhelper's remove-only block)"
grep -qE 'deb-systemd-invoke restart shiftd.service( |$)' "$WORK/control/postinst" ||
    fail "postinst does not restart shiftd.service on upgrade"
# The units' scripts are written by hand (no `systemd-units` in Cargo.toml): deb-systemd-helper
# runs only in postinst's enable loop, behind the check that it would change nothing, and
# in postrm on remove and purge.
grep -qE '^        if \[ -n "\$2" \] && enable_step_is_noop "\$unit"; then$' "$WORK/control/postinst" ||
    fail "postinst must skip deb-systemd-helper on upgrade only through enable_step_is_noop"
say "ok: on upgrade only shiftd.service is restarted; the units are stopped only on remove"

# ------------------------------------------------------------------------------------
step "5. on a real systemd (Debian 12 under systemd-nspawn)"
[[ -f tests/e2e/lib/container.sh && -f tests/e2e/lib/host.sh && -f tests/e2e/lib/common.sh ]] ||
    fail "tests/e2e/lib/ (the shared container helpers) is missing"
# The end-to-end suite's helpers build, cache and boot the root filesystem. This script
# keeps its own cache, lock and work directory: the suite runs it while holding its own
# lock, and each clears the leftovers of killed containers in its cache.
unset E2E_NS E2E_PID1 E2E_DEB E2E_DEB_NEXT
export E2E_CACHE=/var/cache/shiftd-ci E2E_WORK="$WORK/e2e"
mkdir -p "$E2E_CACHE" "$E2E_WORK"
exec 8>"$E2E_CACHE/lock"
flock -w 900 8 || fail "another packaging/ci-package.sh holds $E2E_CACHE/lock (waited 15 min)"
# shellcheck source=/dev/null
{ source tests/e2e/lib/common.sh; source tests/e2e/lib/host.sh; source tests/e2e/lib/container.sh; }

# The container shares the host's network: the socket moves to a port free on the host,
# through a drop-in, which is also how an operator moves it.
port=""
for candidate in $(seq 18080 18180); do
    ss -Hltn "sport = :$candidate" | grep -q . || { port=$candidate; break; }
done
[[ -n $port ]] || fail "no free TCP port in 18080-18180 on the host for the container's shiftd.socket"
export E2E_HTTP_PORT=$port E2E_BACKEND_PORT=$port

ensure_rootfs
boot_container
inside() { ns_exec -t 120 "$@"; }

ns_put /etc/systemd/system/shiftd.socket.d/port.conf 0644 <<EOF
[Socket]
ListenStream=
ListenStream=127.0.0.1:$port
EOF
ns_put "/root/$(basename "$DEB")" 0644 <"$DEB"
inside apt-get install -y -q "/root/$(basename "$DEB")" >"$WORK/install.log" 2>&1 ||
    { tail -30 "$WORK/install.log" >&2; fail "installing the package failed"; }
say "installed $VERSION"

out=$(inside systemd-analyze verify /usr/lib/systemd/system/shiftd.socket /usr/lib/systemd/system/shiftd.service 2>&1) ||
    { echo "$out" >&2; fail "systemd-analyze verify failed"; }
[[ -z $out ]] || { echo "$out" >&2; fail "systemd-analyze verify warns about the units (above)"; }
say "ok: systemd-analyze verify is clean for both units"

inside systemd-analyze security --no-pager shiftd.service >"$WORK/security" 2>&1 || true
exposure=$(sed -nE 's/.*Overall exposure level for shiftd.service: ([0-9.]+).*/\1/p' "$WORK/security")
[[ -n $exposure ]] || { cat "$WORK/security" >&2; fail "systemd-analyze security gave no exposure level"; }
awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }' ||
    { grep -E '^✗' "$WORK/security" >&2 || true; fail "systemd-analyze security shiftd.service: exposure $exposure, above $MAX_EXPOSURE"; }
say "ok: systemd-analyze security shiftd.service: exposure $exposure (at most $MAX_EXPOSURE)"

for unit in shiftd.socket shiftd.service; do
    [[ $(unit_prop "$unit" UnitFileState) == enabled ]] || fail "$unit is not enabled after a fresh install"
done
wait_for 60 "shiftd.service active" ns_exec systemctl is-active --quiet shiftd.service ||
    { ns_exec journalctl -q --no-pager -u shiftd.service -n 40 >&2 || true; fail "shiftd.service did not start after a fresh install"; }
say "ok: fresh install enabled and started both units"
# ExecReload=shiftd reload runs inside the sandbox as the user shiftd, and compares the
# unit's timeouts with the budgets before it hands over: it must still be able to ask
# systemd about the unit rather than skip the comparison.
ns_exec timeout 30 systemctl reload shiftd.service || fail "systemctl reload shiftd failed after a fresh install"
unit_checked() { ns_exec journalctl -q --no-pager -u shiftd.service -o cat | grep -qF "TimeoutStopSec=${unit_stop}s fits"; }
wait_for 10 "the unit check in the journal" unit_checked ||
    { ns_exec journalctl -q --no-pager -u shiftd.service -n 60 -o cat >&2 || true; fail "ExecReload=shiftd reload did not compare the unit's timeouts (journal above)"; }
say "ok: \`shiftd reload\` inside the sandbox compared the unit's timeouts with the budgets"

inside runuser -u shiftd -- test -r /etc/shiftd/shiftd.toml || fail "the user shiftd cannot read /etc/shiftd/shiftd.toml"
[[ $(inside stat -c '%U:%G %a' /etc/shiftd/shiftd.toml) == "root:shiftd 640" ]] ||
    fail "/etc/shiftd/shiftd.toml is not root:shiftd 0640 (it may hold secrets)"
[[ $(inside stat -c '%U' /var/lib/shiftd) == shiftd ]] || fail "/var/lib/shiftd is not owned by shiftd"

if ! inside /usr/libexec/shiftd/post-install-check >"$WORK/post-install-check" 2>&1; then
    cat "$WORK/post-install-check" >&2
    fail "the post-install check failed on a fresh install"
fi
sed 's/^/    /' "$WORK/post-install-check" >&2

inside ln -sf /etc/nginx/sites-available/shiftd /etc/nginx/sites-enabled/shiftd
inside nginx -t >"$WORK/nginx-t" 2>&1 || { cat "$WORK/nginx-t" >&2; fail "nginx -t fails with the shipped site enabled"; }
inside rm -f /etc/nginx/sites-enabled/shiftd
say "ok: nginx -t passes with the shipped site"

# Upgrade to the same payload at a higher version: the service gets a new process, the
# socket keeps its invocation (it was never stopped), so its port never closed.
# deb-systemd-helper replaces its record of a unit's links (a new file, renamed over the
# old) whenever it enables the unit or updates its state: records with the inodes they had
# before show that postinst skipped it, and that postinst's reading of the units' [Install]
# lines agrees with the helper's (were it to disagree, the helper would run).
dsh_records() {
    inside stat -c '%n %i' /var/lib/systemd/deb-systemd-helper-enabled/shiftd.service.dsh-also \
        /var/lib/systemd/deb-systemd-helper-enabled/shiftd.socket.dsh-also
}
records_before=$(dsh_records) || fail "no deb-systemd-helper records of the units after a fresh install"
E2E_DEB=$DEB build_next_deb
socket_before=$(unit_prop shiftd.socket InvocationID)
service_before=$(unit_prop shiftd.service MainPID)
ns_put "/root/$(basename "$E2E_DEB_NEXT")" 0644 <"$E2E_DEB_NEXT"
inside apt-get install -y -q "/root/$(basename "$E2E_DEB_NEXT")" >"$WORK/upgrade.log" 2>&1 ||
    { tail -30 "$WORK/upgrade.log" >&2; fail "upgrading the package failed"; }
wait_for 60 "shiftd.service active after the upgrade" ns_exec systemctl is-active --quiet shiftd.service ||
    fail "shiftd.service is not running after the upgrade"
[[ $(unit_prop shiftd.socket InvocationID) == "$socket_before" ]] ||
    fail "the upgrade restarted shiftd.socket: its port closed during the upgrade"
[[ $(unit_prop shiftd.service MainPID) != "$service_before" ]] ||
    fail "the upgrade did not restart shiftd.service (MainPID $service_before unchanged)"
say "ok: upgrade restarted shiftd.service (pid $service_before -> $(unit_prop shiftd.service MainPID)), shiftd.socket stayed up"
records_after=$(dsh_records) || fail "the upgrade lost deb-systemd-helper's records of the units"
[[ $records_after == "$records_before" ]] ||
    { printf 'before:\n%s\nafter:\n%s\n' "$records_before" "$records_after" >&2; fail "the upgrade ran deb-systemd-helper on the units (its records were rewritten)"; }
for unit in shiftd.socket shiftd.service; do
    [[ $(unit_prop "$unit" UnitFileState) == enabled ]] || fail "$unit is not enabled after the upgrade"
done
say "ok: the upgrade left both units enabled and ran no deb-systemd-helper"

inside apt-get remove -y -q shiftd >"$WORK/remove.log" 2>&1 || { tail -30 "$WORK/remove.log" >&2; fail "apt-get remove failed"; }
for unit in shiftd.service shiftd.socket; do
    [[ $(unit_prop "$unit" ActiveState) != active ]] || fail "$unit is still active after apt-get remove"
done
inside test -f /etc/shiftd/shiftd.toml || fail "apt-get remove deleted /etc/shiftd/shiftd.toml (only purge may)"
inside test -f /var/lib/shiftd/shiftd.db || fail "apt-get remove deleted /var/lib/shiftd/shiftd.db (only purge may)"
inside getent passwd shiftd >/dev/null || fail "apt-get remove deleted the user shiftd (only purge may)"
say "ok: remove stopped both units and kept the configuration, the data and the user"

# Remove masks both units (debhelper's postrm); a reinstall lifts the mask, and the units
# are enabled and running again.
inside test -L /etc/systemd/system/shiftd.service || fail "apt-get remove did not mask shiftd.service (debhelper's postrm does)"
inside apt-get install -y -q "/root/$(basename "$E2E_DEB_NEXT")" >"$WORK/reinstall.log" 2>&1 ||
    { tail -30 "$WORK/reinstall.log" >&2; fail "reinstalling the package after apt-get remove failed"; }
for unit in shiftd.socket shiftd.service; do
    inside test ! -e "/etc/systemd/system/$unit" || fail "$unit is still masked after a reinstall"
    [[ $(unit_prop "$unit" UnitFileState) == enabled ]] || fail "$unit is not enabled after a reinstall"
    wait_for 60 "$unit active after a reinstall" ns_exec systemctl is-active --quiet "$unit" ||
        fail "$unit is not running after a reinstall"
done
say "ok: a reinstall after remove unmasked, enabled and started both units"

inside apt-get purge -y -q shiftd >"$WORK/purge.log" 2>&1 || { tail -30 "$WORK/purge.log" >&2; fail "apt-get purge failed"; }
inside test ! -e /etc/shiftd || fail "apt-get purge left /etc/shiftd"
inside test ! -e /var/lib/shiftd || fail "apt-get purge left /var/lib/shiftd"
inside getent passwd shiftd >/dev/null && fail "apt-get purge left the user shiftd"
inside getent group shiftd >/dev/null && fail "apt-get purge left the group shiftd"
for unit in shiftd.service shiftd.socket; do
    [[ $(unit_prop "$unit" ActiveState) != active ]] || fail "$unit is still active after apt-get purge"
    inside test ! -e "/etc/systemd/system/$unit" || fail "apt-get purge left a mask of $unit"
done
leftover=$(inside find /var/lib/systemd /etc/systemd/system -name 'shiftd.*' -not -path '*/shiftd.socket.d*') || true
[[ -z $leftover ]] || { echo "$leftover" >&2; fail "apt-get purge left deb-systemd-helper records or links of the units (above)"; }
say "ok: purge removed /etc/shiftd, /var/lib/shiftd, the user, and the units' links and records"

teardown_container
say "all package checks passed in $((SECONDS - STARTED)) s"
echo "$DEB"
