# shellcheck shell=bash
# 3. Long job across a restart: a drop-in lowers TimeoutStopSec below the job's remaining
# run time while shutdown.jobs_drain (12 s) covers it. The stop must end without a kill,
# which only EXTEND_TIMEOUT_USEC heartbeats can make true, and the job must succeed.
#
# The restart is done as stop, then start without the drop-in: a TimeoutStopSec that cannot
# hold shutdown.grace is no unit to go on serving under (the unit check of the next reload
# would refuse it); the stop is what this scenario is about.

STOP_TIMEOUT=3

scenario_main() {
  local since id ms result status job
  since=$(date +%s)
  printf '[Service]\nTimeoutStopSec=%s\n' "$STOP_TIMEOUT" | put_dropin e2e-short-stop
  trap 'remove_dropin e2e-short-stop || true' EXIT
  check "the drop-in is in force" -- [ "$(unit_prop shiftd.service TimeoutStopUSec)" = "${STOP_TIMEOUT}s" ]

  id=$("${E2E_PY[@]}" submit slow)
  "${E2E_PY[@]}" wait-job "$id" --state running --timeout 20 >/dev/null
  log "job $id (sleep 8) is running; stopping shiftd with TimeoutStopSec=${STOP_TIMEOUT}s"

  ms=$(stop_shiftd 60) || die "systemctl stop failed"
  result=$(unit_prop shiftd.service Result)
  status=$(unit_prop shiftd.service ExecMainStatus)
  log "stop took $ms ms; Result=$result ExecMainStatus=$status"
  figure "stop ${ms} ms with TimeoutStopSec=${STOP_TIMEOUT}s; Result=$result; exit $status"
  check "the stop outlasted TimeoutStopSec (the job was waited for)" -- [ "$ms" -gt $((STOP_TIMEOUT * 1000)) ]
  check "systemd did not kill it (Result=success)" -- [ "$result" = success ]
  check "it exited 0 (no stage had to cut work)" -- [ "$status" = 0 ]
  check "no 'timed out' line in the journal" -- no_timeout_lines "$since"

  remove_dropin e2e-short-stop
  trap - EXIT
  ns_exec -t 120 systemctl start shiftd.service
  wait_ready 60
  job=$("${E2E_PY[@]}" wait-job "$id" --state succeeded,failed,cancelled,queued --timeout 30)
  log "job after the restart: $job"
  check "the job succeeded in its first attempt" -- \
    python3 -c 'import json,sys; j=json.loads(sys.argv[1]); sys.exit(not (j["state"] == "succeeded" and j["attempts"] == 1))' "$job"
  figure "job succeeded, attempts 1"
}
