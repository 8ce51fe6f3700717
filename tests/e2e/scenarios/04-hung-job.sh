# shellcheck shell=bash
# 4. Hung job: a job that ignores SIGTERM and outlives shutdown.jobs_drain is killed by
# shiftd (SIGKILL after its kill_grace) and requeued; the service stops within its grace
# and systemd never has to kill anything; after the restart the job runs again.

scenario_main() {
  local since id job started_at ms limit_ms
  since=$(date +%s)
  id=$("${E2E_PY[@]}" submit stubborn)
  job=$("${E2E_PY[@]}" wait-job "$id" --state running --timeout 20)
  started_at=$("${E2E_PY[@]}" field - started_at <<<"$job")
  log "job $id ignores SIGTERM and is running (started $started_at); restarting shiftd"

  limit_ms=$("${E2E_PY[@]}" timespan-ms "$(unit_prop shiftd.service TimeoutStopUSec)")
  ms=$(restart_shiftd) || die "systemctl restart failed"
  log "restart took $ms ms (TimeoutStopSec is $((limit_ms / 1000)) s)"
  figure "restart ${ms} ms (jobs_drain 12 s + kill_grace 2 s; TimeoutStopSec $((limit_ms / 1000)) s)"
  check "the restart waited for jobs_drain (12 s)" -- [ "$ms" -ge 12000 ]
  check "the stop finished within TimeoutStopSec" -- [ "$ms" -lt "$limit_ms" ]
  check "no 'timed out' line in the journal" -- no_timeout_lines "$since"
  local swept
  swept=$(journal_since "$since" | grep -E 'Killing process [0-9]+ .* with signal SIGKILL|left-over process' || true)
  [[ -z $swept ]] || { printf '%s\n' "$swept" >&2; die "systemd had to kill processes shiftd left behind"; }
  log "systemd killed nothing: shiftd stopped the job itself"

  job=$("${E2E_PY[@]}" wait-job "$id" --state running --differs started_at "$started_at" --timeout 30)
  log "after the restart: $job"
  figure "job requeued and running again (attempts $("${E2E_PY[@]}" field - attempts <<<"$job"))"
  local sleeps
  sleeps=$(ns_exec pgrep -c -f '^sleep 60$' || true)
  check "only the new attempt's process is alive (found $sleeps)" -- [ "$sleeps" = 1 ]

  "${E2E_PY[@]}" cancel "$id" --timeout 30 >/dev/null
}
