# shellcheck shell=bash
# 10. A schedule and notices across an upgrade. A task runs every 2 s by its schedule and
# sends a signed notice for every job that ends; a slow task with notices runs a job while
# the package is upgraded (a hand-over: two processes run the scheduler for a moment).
# Then: each occurrence was enqueued exactly once and none was skipped, from before the
# upgrade to after it; every job that ended got its notice, each signature verifies; the
# job running across the upgrade finished on its first attempt; a pause holds the schedule's
# jobs queued and a resume runs them.

E2E_NOTICE_PORT=${E2E_NOTICE_PORT:-8383}

# The suite's configuration plus the two tasks; $1 is the tick task's schedule line.
tasks_config() {
  cat "$E2E_DIR/shiftd-e2e.toml"
  cat <<TOML

[tasks.tick]
command = ["/bin/echo", "tick"]
$1
max_attempts = 1
notify_url = "http://127.0.0.1:$E2E_NOTICE_PORT/notice"
notify_secret_file = "/etc/shiftd/notice.key"

[tasks.noted]
command = ["/bin/sleep", "6"]
max_attempts = 3
notify_url = "http://127.0.0.1:$E2E_NOTICE_PORT/notice"
notify_secret_file = "/etc/shiftd/notice.key"
TOML
}

# waiting_ticks: the tick jobs waiting to run (queued or scheduled).
waiting_ticks() {
  local state n=0 c
  for state in queued scheduled; do
    c=$(curl -fsS -m 5 "http://127.0.0.1:$E2E_HTTP_PORT/v1/jobs?task=tick&state=$state&limit=5" |
      python3 -c 'import json,sys; print(len(json.load(sys.stdin)["jobs"]))') || return 1
    n=$((n + c))
  done
  echo "$n"
}

scenario_main() {
  export -f waiting_ticks
  export E2E_HTTP_PORT
  local key="$E2E_WORK/notice.key" out="$E2E_WORK/notices.jsonl" slow next result
  rm -f "$out"
  head -c 32 /dev/urandom | base64 >"$key"
  ns_put /etc/shiftd/notice.key 0640 <"$key"
  ns_exec chown root:shiftd /etc/shiftd/notice.key
  timeout -k 5 280 "${E2E_PY[@]}" receiver --port "$E2E_NOTICE_PORT" --key-file "$key" --out "$out" &
  # Global: the EXIT trap runs after scenario_main has returned.
  NOTICE_RECEIVER=$!
  trap 'kill "${NOTICE_RECEIVER-}" 2>/dev/null || true' EXIT

  local schedule='schedule = "*/2 * * * * *"'
  tasks_config "$schedule" | write_config /dev/stdin
  ns_exec -t 150 systemctl reload shiftd.service || die "the reload with the schedule failed"
  wait_ready 60
  wait_for 30 "three scheduled jobs succeeded" \
    bash -c '[ "$(curl -fsS -m 5 "http://127.0.0.1:'"$E2E_HTTP_PORT"'/v1/jobs?task=tick&state=succeeded&limit=500" | python3 -c "import json,sys; print(len(json.load(sys.stdin)[\"jobs\"]))")" -ge 3 ]' ||
    die "the schedule did not run"

  slow=$("${E2E_PY[@]}" submit noted)
  "${E2E_PY[@]}" wait-job "$slow" --state running --timeout 30 >/dev/null
  next=$(repack_deb e2e2)
  local since pid
  since=$(date +%s)
  pid=$(unit_prop shiftd.service MainPID)
  install_deb "$next" || die "apt install of $next failed"
  wait_ready 60
  check "the upgrade was a hand-over" -- journal_has "hand-over to pid" "$since"
  check "a new main process serves" -- [ "$(unit_prop shiftd.service MainPID)" != "$pid" ]
  local job
  job=$("${E2E_PY[@]}" wait-job "$slow" --state succeeded --timeout 30)
  check "the job running across the upgrade succeeded on its first attempt" -- \
    [ "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["attempts"])' <<<"$job")" = 1 ]
  # Occurrences after the upgrade, then a pause: the schedule's jobs stay queued.
  local after=$(($(date +%s) + 6))
  wait_for 30 "scheduled jobs after the upgrade" bash -c '[ "$(date +%s)" -ge '"$after"' ]'
  check "pause answers 200" -- [ "$(http POST /v1/tasks/tick/pause '{}' | cut -d' ' -f1)" = 200 ]
  local queued_seen=0
  wait_for 20 "a scheduled job waiting while the task is paused" \
    bash -c '[ "$(waiting_ticks)" -ge 1 ]' && queued_seen=1
  check "while paused, the schedule's jobs wait in the queue" -- [ "$queued_seen" = 1 ]
  check "resume answers 200" -- [ "$(http POST /v1/tasks/tick/resume '{}' | cut -d' ' -f1)" = 200 ]
  # Stop the schedule (the task stays, without one), then count.
  tasks_config "" | write_config /dev/stdin
  ns_exec -t 150 systemctl reload shiftd.service || die "the reload without the schedule failed"
  wait_ready 60
  wait_for 30 "no tick job left waiting or running" bash -c \
    '[ "$(waiting_ticks)" = 0 ] && [ "$(curl -fsS -m 5 "http://127.0.0.1:'"$E2E_HTTP_PORT"'/v1/jobs?task=tick&state=running&limit=5" | python3 -c "import json,sys; print(len(json.load(sys.stdin)[\"jobs\"]))")" = 0 ]' ||
    die "tick jobs did not finish"

  result=$("${E2E_PY[@]}" schedule-check tick --every-ms 2000)
  log "schedule: $result"
  local n dup gaps
  n=$("${E2E_PY[@]}" field /dev/stdin jobs <<<"$result")
  dup=$("${E2E_PY[@]}" field /dev/stdin duplicates <<<"$result")
  gaps=$(python3 -c 'import json,sys; print(len(json.load(sys.stdin)["gaps_ms"]))' <<<"$result")
  check "every occurrence enqueued once across the upgrade ($n jobs, $dup twice)" -- [ "$dup" = 0 ]
  check "no occurrence skipped across the upgrade" -- [ "$gaps" = 0 ]
  figure "schedule every 2 s across an upgrade: $n occurrences, 0 twice, 0 skipped"

  result=$("${E2E_PY[@]}" notices-check "$out" --tasks tick,noted --timeout 60)
  log "notices: $result"
  local missing bad dupids total final
  missing=$(python3 -c 'import json,sys; print(len(json.load(sys.stdin)["missing"]))' <<<"$result")
  bad=$("${E2E_PY[@]}" field /dev/stdin bad_signatures <<<"$result")
  dupids=$("${E2E_PY[@]}" field /dev/stdin ids_per_event_max <<<"$result")
  total=$("${E2E_PY[@]}" field /dev/stdin notices <<<"$result")
  final=$("${E2E_PY[@]}" field /dev/stdin final_jobs <<<"$result")
  check "every job that ended got its notice ($final jobs)" -- [ "$missing" = 0 ]
  check "one notice id per job and event" -- [ "$dupids" = 1 ]
  check "every signature verifies" -- [ "$bad" = 0 ]
  figure "notices: $final jobs ended, $total notices received, all signed, one id each"
}
