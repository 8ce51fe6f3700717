# shellcheck shell=bash
# Shared helpers of the end-to-end suite: logging, bounded waits, results.
# Sourced by tests/e2e/run and by every scenario process; defines functions only.

E2E_DIR=${E2E_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
REPO_DIR=${REPO_DIR:-$(cd "$E2E_DIR/../.." && pwd)}
# -B: no __pycache__ in the work tree. Used by the files that source this one.
# shellcheck disable=SC2034
E2E_PY=("${E2E_PYTHON:-python3}" -B "$E2E_DIR/lib/e2e.py")

log() { printf '%s e2e: %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# A key figure for the results table of the scenario that is running.
figure() { printf '%s\n' "$*" >>"$E2E_WORK/figures.$E2E_SCENARIO"; }

# A check inside a scenario: "check DESCRIPTION -- COMMAND..." fails the scenario with
# the description when the command fails, and logs it either way.
check() {
  local what=$1; shift
  [[ ${1-} == -- ]] && shift
  if "$@"; then log "ok: $what"; else die "$what"; fi
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s until it succeeds.
# Fails (returns 1, with the description) when the deadline passes first.
wait_for() {
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${limit}s waiting for: $what"
      return 1
    fi
    sleep 0.2
  done
}

# bounded SECONDS COMMAND...: runs COMMAND with a hard deadline (SIGTERM, then SIGKILL
# 10 s later) in the background and waits for it, so that our own INT/TERM traps still
# run at once instead of after the command returns. timeout(1) puts the command in a
# process group of its own; BOUNDED_PID names it while it runs, for kill_bounded.
bounded() {
  local limit=$1 rc=0; shift
  timeout -k 10 "$limit" "$@" &
  BOUNDED_PID=$!
  wait "$BOUNDED_PID" || rc=$?
  BOUNDED_PID=
  return "$rc"
}

# Stops the command `bounded` is waiting for, with everything it started.
kill_bounded() {
  [[ -n ${BOUNDED_PID-} ]] && kill -TERM -- "-$BOUNDED_PID" 2>/dev/null
  BOUNDED_PID=
}

# Milliseconds since the epoch (for wall times).
now_ms() { date +%s%3N; }

# http METHOD PATH [JSON_BODY]: one request through nginx from the host. Prints
# "STATUS BODY" (STATUS 000 on a connection error); never hangs longer than 15 s.
http() {
  local method=$1 path=$2 body=${3-}
  local args=(-sS -m 15 -o - -w '\n%{http_code}' -X "$method" "http://127.0.0.1:${E2E_HTTP_PORT}${path}")
  [[ -n $body ]] && args+=(-H 'content-type: application/json' --data "$body")
  local out
  out=$(curl "${args[@]}" 2>/dev/null) || true
  local code=${out##*$'\n'}
  [[ $code =~ ^[0-9]{3}$ ]] || code=000
  printf '%s %s\n' "$code" "${out%$'\n'*}"
}

# http_status PATH: just the status of a GET.
http_status() { local r; r=$(http GET "$1"); echo "${r%% *}"; }

# expect_errors REGEX...: error-level journal lines the running scenario causes on purpose
# (a SIGKILL, a watchdog, a broken config); the journal audit accepts them in its window.
expect_errors() { printf '%s\n' "$@" >>"$E2E_WORK/expected-errors.$E2E_SCENARIO"; }
