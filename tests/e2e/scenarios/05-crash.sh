# shellcheck shell=bash
# 5. Crash: `systemctl kill -s KILL shiftd` with jobs running. systemd restarts it; every
# job is claimed again once its lease (6 s here) runs out and completes; none is lost.

JOBS=4

scenario_main() {
  expect_errors "status=9/KILL" "code=killed" "Failed with result 'signal'"
  local ids=() id restarts_before pid_before t0 ms
  for ((i = 0; i < JOBS; i++)); do ids+=("$("${E2E_PY[@]}" submit slow)"); done
  for id in "${ids[@]}"; do "${E2E_PY[@]}" wait-job "$id" --state running --timeout 30 >/dev/null; done
  log "jobs ${ids[*]} are running; killing shiftd with SIGKILL"

  restarts_before=$(unit_prop shiftd.service NRestarts)
  pid_before=$(unit_prop shiftd.service MainPID)
  t0=$(now_ms)
  ns_exec systemctl kill -s KILL shiftd.service
  wait_for 30 "systemd to restart shiftd" restarted_since "$restarts_before" "$pid_before" ||
    die "shiftd was not restarted after SIGKILL (NRestarts $(unit_prop shiftd.service NRestarts))"
  wait_ready 30
  ms=$(($(now_ms) - t0))
  log "restarted and ready after $ms ms (NRestarts $restarts_before -> $(unit_prop shiftd.service NRestarts))"
  figure "back up ${ms} ms after SIGKILL, NRestarts +$(($(unit_prop shiftd.service NRestarts) - restarts_before))"

  printf '%s\n' "${ids[@]}" >"$E2E_WORK/crash-ids"
  t0=$(now_ms)
  local result
  result=$("${E2E_PY[@]}" wait-final "$E2E_WORK/crash-ids" --timeout 90) ||
    { log "$result"; die "jobs were lost in the crash"; }
  log "jobs after the crash: $result"
  local attempts=() job
  for id in "${ids[@]}"; do
    job=$("${E2E_PY[@]}" job "$id")
    [[ $("${E2E_PY[@]}" field - state <<<"$job") == succeeded ]] || die "job $id did not succeed: $job"
    attempts+=("$("${E2E_PY[@]}" field - attempts <<<"$job")")
  done
  figure "$JOBS/$JOBS killed jobs succeeded $(($(now_ms) - t0)) ms later (attempts ${attempts[*]})"
}

