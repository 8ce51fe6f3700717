# shellcheck shell=bash
# 7. Reload under load: `systemctl reload` with a changed log level keeps the process and
# fails no request; a broken configuration fails the reload at `shiftd check` and the
# service goes on serving on its old configuration.

E2E_RELOAD_LOAD_SECONDS=${E2E_RELOAD_LOAD_SECONDS:-30}
DEBUG_LEVEL="info,tower_http=debug"

scenario_main() {
  expect_errors "Reload failed" "Failed to reload" "Control process exited" "configuration error"
  local id pid since good="$E2E_DIR/shiftd-e2e.toml"
  id=$("${E2E_PY[@]}" submit fast)
  "${E2E_PY[@]}" wait-job "$id" --state succeeded --timeout 30 >/dev/null
  pid=$(unit_prop shiftd.service MainPID)

  start_load reload "$E2E_RELOAD_LOAD_SECONDS" "/v1/jobs/$id"
  # Whatever happens, the next scenario gets the suite's configuration back.
  trap 'stop_load; restore_config' EXIT
  local t0=$SECONDS

  # Request logging on (tower_http's per-request lines are at debug level): the change is in
  # force once a debug-level line of that process reaches the journal. Not a blanket
  # "debug": that adds every SQL statement, several thousand lines per second at this rate,
  # more than journald on 2 cores keeps up with.
  since=$(date +%s)
  sed "s/^level = \"info\"/level = \"$DEBUG_LEVEL\"/" "$good" | write_config /dev/stdin
  ns_exec grep -q "^level = \"$DEBUG_LEVEL\"" "$E2E_CONFIG" || die "could not write log.level = $DEBUG_LEVEL"
  ns_exec -t 60 systemctl reload shiftd.service || die "reload with log.level = $DEBUG_LEVEL failed"
  wait_for 30 "a debug-level line after the reload" debug_line_since "$since" "$pid" || {
    ns_exec journalctl -q --no-pager -u shiftd.service --since "@$since" -n 20 -o json >&2 || true
    die "the reload did not change the log level (no debug line from process $pid)"
  }
  log "log.level = $DEBUG_LEVEL is in force"
  # ... and back to info.
  write_config "$good"
  ns_exec -t 60 systemctl reload shiftd.service || die "reload back to info failed"
  check "a reload keeps the main process" -- [ "$(unit_prop shiftd.service MainPID)" = "$pid" ]
  figure "reload to $DEBUG_LEVEL and back: same process"

  # A broken file: the reload fails, the process and its configuration stay.
  { cat "$good"; printf '\n[http]\nno_such_key = 1\n'; } | write_config /dev/stdin
  if ns_exec -t 60 systemctl reload shiftd.service; then die "a reload with a broken config succeeded"; fi
  check "after the failed reload shiftd is still active" -- ns_exec systemctl is-active --quiet shiftd.service
  check "after the failed reload it is the same process" -- [ "$(unit_prop shiftd.service MainPID)" = "$pid" ]
  check "after the failed reload /readyz is 200" -- ready_through_nginx
  figure "broken config: reload refused, same process still serving"
  write_config "$good"
  ns_exec -t 60 systemctl reload shiftd.service || die "reload with the good config again failed"

  ((SECONDS - t0 < E2E_RELOAD_LOAD_SECONDS)) || die "the reloads outlasted the load; raise E2E_RELOAD_LOAD_SECONDS"
  finish_load reload
  check_load_jobs_final reload 120
}

# tracing-journald writes DEBUG as PRIORITY=6 (and INFO as 5), so a priority-6 entry from
# the main process itself is a debug event.
debug_line_since() {
  local lines
  lines=$(ns_exec journalctl -q --no-pager -o cat "_PID=$2" -p 6..6 --since "@$1" -n 1)
  [[ -n $lines ]]
}

restore_config() {
  write_config "$E2E_DIR/shiftd-e2e.toml"
  ns_exec -t 60 systemctl reload shiftd.service || true
}
