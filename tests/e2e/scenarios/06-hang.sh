# shellcheck shell=bash
# 6. Hang: SIGSTOP to the main process. The watchdog fires, systemd restarts the service
# (NRestarts grows) and requests that arrived meanwhile are served afterwards: they wait in
# the socket's backlog, which PID 1 keeps open.

QUEUED=5

scenario_main() {
  expect_errors "[Ww]atchdog timeout" "status=6/ABRT" "code=(dumped|killed)" "Failed with result 'watchdog'"
  local watchdog_ms restarts_before pid t0 ms since
  since=$(date +%s)
  watchdog_ms=$("${E2E_PY[@]}" timespan-ms "$(unit_prop shiftd.service WatchdogUSec)") || true
  ((watchdog_ms > 0)) || die "shiftd.service sets no WatchdogSec"
  restarts_before=$(unit_prop shiftd.service NRestarts)
  pid=$(unit_prop shiftd.service MainPID)

  ns_exec kill -STOP "$pid"
  t0=$(now_ms)
  log "stopped the main process $pid (WatchdogSec $((watchdog_ms / 1000)) s); sending $QUEUED requests"
  local limit=$((watchdog_ms / 1000 + 60))
  timeout -k 5 $((limit + 10)) "${E2E_PY[@]}" requests "$QUEUED" /healthz --timeout "$limit" \
    >"$E2E_WORK/hang-requests.json" &
  local requests_pid=$!

  wait_for "$limit" "the watchdog to restart shiftd" restarted_since "$restarts_before" "$pid" ||
    { ns_exec kill -CONT "$pid" || true; die "the watchdog did not restart shiftd within $limit s"; }
  ms=$(($(now_ms) - t0))
  log "restarted $ms ms after SIGSTOP"
  wait "$requests_pid" || true
  local answers
  answers=$(cat "$E2E_WORK/hang-requests.json")
  log "requests sent while it hung: $answers"
  check "the journal says the watchdog fired" -- journal_has "atchdog timeout" "$since"
  figure "watchdog restart ${ms} ms after SIGSTOP (WatchdogSec $((watchdog_ms / 1000)) s), NRestarts +$(($(unit_prop shiftd.service NRestarts) - restarts_before))"
  figure "queued requests: $answers"
  check "every request sent during the hang got 200" -- \
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(r["status"] != {"200": r["sent"]})' "$answers"
}

