# shellcheck shell=bash
# The Debian 12 machine under systemd-nspawn: boot, run commands inside, tear down.
# After boot, E2E_NS is the nspawn process and E2E_PID1 the container's systemd.

E2E_INNER_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# ns_exec [-t SECONDS] COMMAND...: runs COMMAND inside the container with a clean
# environment and a deadline (default 60 s). Standard input is passed through.
ns_exec() {
  local limit=60
  if [[ ${1-} == -t ]]; then limit=$2; shift 2; fi
  timeout -k 5 "$limit" nsenter -t "$E2E_PID1" -a -- \
    env -i PATH="$E2E_INNER_PATH" HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive "$@"
}

# ns_sh SCRIPT: a shell snippet inside the container (bounded like ns_exec).
ns_sh() { ns_exec sh -c "$1"; }

# ns_put PATH MODE < CONTENT: writes a file inside the running container.
ns_put() {
  local path=$1 mode=${2:-0644}
  ns_exec sh -c "mkdir -p \"\$(dirname '$path')\" && cat >'$path.e2e-tmp' && chmod $mode '$path.e2e-tmp' && mv '$path.e2e-tmp' '$path'"
}

# unit_prop UNIT PROPERTY: the value of one `systemctl show` property.
unit_prop() { ns_exec systemctl show "$1" -p "$2" --value; }

# Fails early, with the owner, when a port the container will bind is taken on the host
# (the container shares the host's network).
check_ports_free() {
  local port
  for port in "$@"; do
    if ss -Hltn "sport = :$port" | grep -q .; then
      ss -Hltnp "sport = :$port" >&2
      die "port $port is in use on the host; the container shares the host's network (set E2E_HTTP_PORT or free it)"
    fi
  done
}

boot_container() {
  local log="$E2E_WORK/nspawn.log"
  check_ports_free "$E2E_HTTP_PORT" "$E2E_BACKEND_PORT"
  log "booting $E2E_ROOT under systemd-nspawn (ephemeral)"
  # setsid: the container must not get our terminal's signals; teardown stops it itself.
  setsid systemd-nspawn -q -x -D "$E2E_ROOT" --register=no --keep-unit -b \
    >"$log" 2>&1 </dev/null &
  E2E_NS=$!
  export E2E_NS
  echo "$E2E_NS" >"$E2E_WORK/nspawn.pid"
  wait_for 30 "the container's PID 1" container_pid1 || { cat "$log" >&2; die "the container did not start"; }
  E2E_PID1=$(container_pid1)
  export E2E_PID1
  echo "$E2E_PID1" >"$E2E_WORK/pid1"
  # systemctl needs PID 1's control socket, which appears a moment after exec.
  wait_for 30 "systemd's control socket" test -S "/proc/$E2E_PID1/root/run/systemd/private" ||
    { cat "$log" >&2; die "the container's systemd did not open its control socket"; }
  local state
  state=$(ns_exec -t 90 systemctl is-system-running --wait 2>"$E2E_WORK/is-system-running.err" || true)
  case $state in
    running) log "container up (PID 1 = $E2E_PID1)";;
    degraded) log "container up but degraded:"; ns_exec systemctl --failed --no-legend >&2 || true;;
    *) cat "$log" "$E2E_WORK/is-system-running.err" >&2; die "the container's systemd did not come up (state: ${state:-none})";;
  esac
}

# The container's systemd: the child of nspawn that runs systemd. (nspawn's first child is
# a short-lived helper that forks PID 1 and exits; taking any child would race with it.)
container_pid1() {
  [[ -d /proc/$E2E_NS ]] || return 1
  local pid
  for pid in $(pgrep -P "$E2E_NS"); do
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == systemd ]] && { echo "$pid"; return 0; }
  done
  return 1
}

# Stops the container: a clean poweroff first, bounded; SIGKILL after. Safe to call twice
# and before boot.
teardown_container() {
  local ns=${E2E_NS-}
  [[ -z $ns && -f ${E2E_WORK-}/nspawn.pid ]] && ns=$(cat "$E2E_WORK/nspawn.pid")
  [[ -n $ns && -d /proc/$ns ]] || return 0
  log "tearing the container down"
  kill -TERM "$ns" 2>/dev/null || true
  local started=$SECONDS deadline=$((SECONDS + 45))
  while [[ -d /proc/$ns ]] && ((SECONDS < deadline)); do sleep 0.2; done
  if [[ -d /proc/$ns ]]; then
    log "the container did not power off in 45 s; killing it"
    # SIGKILL to the container's PID 1 ends its whole PID namespace.
    [[ -f $E2E_WORK/pid1 ]] && kill -KILL "$(cat "$E2E_WORK/pid1")" 2>/dev/null
    kill -KILL "$ns" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while [[ -d /proc/$ns ]] && ((SECONDS < deadline)); do sleep 0.2; done
  fi
  log "container gone after $((SECONDS - started)) s"
  # A killed nspawn leaves its ephemeral copy behind.
  remove_stale_copies
}
