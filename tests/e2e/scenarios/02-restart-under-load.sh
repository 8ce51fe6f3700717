# shellcheck shell=bash
# 2. Restart under load: >= 1,000 req/s through nginx (GET /v1/jobs/{id} plus POSTs that
# start the fast task) across >= 20 `systemctl restart` 1.5 s apart: no failed request,
# every job that got a 202 ends in a final state, and the service is still active at the
# end. A restart storm: systemd's default start limit (5 starts in 10 s) refused the sixth
# of these restarts and left shiftd stopped; the unit's StartLimitBurst=100 in
# StartLimitIntervalSec=10min lets an operator restart at any pace. Then the dashboard's
# overview, through nginx, shows the last of these restarts.

E2E_RESTARTS=${E2E_RESTARTS:-20}
E2E_RESTART_SPACING_MS=${E2E_RESTART_SPACING_MS:-1500}
E2E_LOAD_SECONDS=${E2E_LOAD_SECONDS:-$((E2E_RESTARTS * E2E_RESTART_SPACING_MS / 1000 + 10))}

scenario_main() {
  local id
  id=$("${E2E_PY[@]}" submit fast)
  "${E2E_PY[@]}" wait-job "$id" --state succeeded --timeout 30 >/dev/null

  # Starts before this scenario (install, setup) must not count against the start limit.
  ns_exec systemctl reset-failed shiftd.service
  start_load restart "$E2E_LOAD_SECONDS" "/v1/jobs/$id"
  local t0=$SECONDS i ms pid_before pid_after walls=()
  local interval_ms=$E2E_RESTART_SPACING_MS started_ms
  started_ms=$(now_ms)
  for ((i = 1; i <= E2E_RESTARTS; i++)); do
    pid_before=$(unit_prop shiftd.service MainPID)
    ms=$(restart_shiftd) || die "systemctl restart $i failed"
    pid_after=$(unit_prop shiftd.service MainPID)
    [[ $pid_after != 0 && $pid_after != "$pid_before" ]] || die "restart $i did not replace the main process ($pid_before -> $pid_after)"
    walls+=("$ms")
    # Pacing, not waiting for an event: restart i+1 is due at i * interval.
    local due=$((started_ms + i * interval_ms)) now
    now=$(now_ms)
    ((due > now)) && sleep "$(awk -v d=$((due - now)) 'BEGIN { printf "%.3f", d / 1000 }')"
  done
  ((SECONDS - t0 < E2E_LOAD_SECONDS)) || die "the restarts outlasted the load; raise E2E_LOAD_SECONDS"
  # The storm must not trip the start limit: still active, never refused.
  ns_exec systemctl is-active --quiet shiftd.service ||
    die "shiftd.service is not active after $E2E_RESTARTS restarts $E2E_RESTART_SPACING_MS ms apart: $(unit_prop shiftd.service Result)"
  [[ $(unit_prop shiftd.service Result) == success ]] ||
    die "shiftd.service Result=$(unit_prop shiftd.service Result) after the restarts (start-limit-hit?)"
  finish_load restart

  local stats
  stats=$(printf '%s\n' "${walls[@]}" | sort -n | awk '{ v[NR] = $1 } END { printf "%d restarts: wall min %d ms, median %d ms, max %d ms", NR, v[1], v[int((NR + 1) / 2)], v[NR] }')
  log "$stats"
  figure "$stats"
  check_load_jobs_final restart 180

  # The dashboard, through the packaged nginx site, shows the restarts just made: the last
  # 10 stops, each with its stages (read-only: this configuration has no tokens).
  local page stops
  page=$(curl -fsS -m 5 "http://127.0.0.1:$E2E_HTTP_PORT/ui/") || die "GET /ui/ through nginx failed"
  grep -q 'id="readonly"' <<<"$page" || die "the overview without tokens does not say it is read-only"
  stops=$(grep -o 'class="stop"' <<<"$page" | wc -l)
  ((stops == 10)) || die "the overview shows $stops stops after $E2E_RESTARTS restarts (expected the last 10)"
  grep -q 'data-stage="http-drain"' <<<"$page" || die "the overview's stops have no http-drain stage"
  figure "dashboard through nginx: the overview shows the last $stops restarts with their stages"
}
