# shellcheck shell=bash
# 7. Reload is a hand-over, under load. First a steady-state load with no reload (the p99
# to compare with), then the same load across E2E_HANDOVERS `systemctl reload`s while a slow
# job runs: every reload names a new main process, no request fails, the slow job finishes
# on its first attempt in the process that started it, and the retired processes exit
# once their jobs are done. Then two reloads that must fail and leave the old process
# serving: a broken configuration, and a new binary that dies at start.

E2E_RELOAD_LOAD_SECONDS=${E2E_RELOAD_LOAD_SECONDS:-30}
E2E_STEADY_LOAD_SECONDS=${E2E_STEADY_LOAD_SECONDS:-15}
E2E_HANDOVERS=${E2E_HANDOVERS:-5}

scenario_main() {
  expect_errors "Reload failed" "Failed to reload" "Control process exited" "configuration error" \
    "hand-over failed" "reload failed" "broken build"
  local id pid slow good="$E2E_DIR/shiftd-e2e.toml"
  id=$("${E2E_PY[@]}" submit fast)
  "${E2E_PY[@]}" wait-job "$id" --state succeeded --timeout 30 >/dev/null

  # A few seconds of the same load first, not counted: the first seconds after a start
  # (connection pools, nginx's upstream keepalive, page cache) would inflate the baseline.
  start_load warmup 5 "/v1/jobs/$id"
  finish_load warmup
  start_load steady "$E2E_STEADY_LOAD_SECONDS" "/v1/jobs/$id"
  finish_load steady

  pid=$(unit_prop shiftd.service MainPID)
  # `slow` runs `sleep 8`: long enough to outlive every hand-over below.
  slow=$("${E2E_PY[@]}" submit slow)
  "${E2E_PY[@]}" wait-job "$slow" --state running --timeout 30 >/dev/null

  start_load reload "$E2E_RELOAD_LOAD_SECONDS" "/v1/jobs/$id"
  # Whatever happens, the next scenario gets the suite's configuration and binary back.
  trap 'stop_load; restore' EXIT
  local t0=$SECONDS i ms times=() previous=$pid now
  for ((i = 1; i <= E2E_HANDOVERS; i++)); do
    ms=$(now_ms)
    ns_exec -t 150 systemctl reload shiftd.service || die "hand-over $i failed"
    times+=($(($(now_ms) - ms)))
    now=$(unit_prop shiftd.service MainPID)
    [[ $now != "$previous" && $now != 0 ]] || die "hand-over $i: MainPID stayed $previous"
    check "hand-over $i: the unit is active with a new main process ($previous -> $now)" -- \
      ns_exec systemctl is-active --quiet shiftd.service
    previous=$now
  done
  figure "$E2E_HANDOVERS hand-overs: systemctl reload took $(IFS=/; echo "${times[*]}") ms"
  local job
  job=$("${E2E_PY[@]}" wait-job "$slow" --state succeeded --timeout 30)
  check "the job running across $E2E_HANDOVERS hand-overs succeeded on its first attempt" -- \
    [ "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["attempts"])' <<<"$job")" = 1 ]
  figure "job running across $E2E_HANDOVERS hand-overs: succeeded, attempts 1"
  # The retired processes exit once their jobs are done: one shiftd serve process remains.
  wait_for 30 "the retired processes to exit" one_serving_process ||
    die "retired processes still running: $(ns_exec pgrep -a -f 'shiftd serve' | tr '\n' ' ')"
  check "the main process is the one left" -- [ "$(ns_exec pgrep -f 'shiftd serve')" = "$previous" ]

  # A broken configuration: the reload fails with the reason, the process stays.
  { cat "$good"; printf '\n[http]\nno_such_key = 1\n'; } | write_config /dev/stdin
  local out
  if out=$(ns_exec -t 150 systemctl reload shiftd.service 2>&1); then die "a reload with a broken config succeeded"; fi
  check "after the refused reload it is the same process" -- [ "$(unit_prop shiftd.service MainPID)" = "$previous" ]
  check "after the refused reload shiftd is active" -- ns_exec systemctl is-active --quiet shiftd.service
  check "after the refused reload /readyz is 200" -- ready_through_nginx
  figure "broken config: reload refused, same process serving"
  write_config "$good"

  # A new binary that dies at start (it passes `shiftd check`, then fails to serve): the
  # hand-over fails, the reload exits non-zero, and the journal says why.
  local since
  since=$(date +%s)
  ns_sh 'cp -p /usr/bin/shiftd /usr/bin/shiftd.e2e-good &&
    printf "#!/bin/sh\ncase \"\$1\" in serve) echo \"broken build\" >&2; exit 1;; esac\nexec /usr/bin/shiftd.e2e-good \"\$@\"\n" >/usr/bin/shiftd.e2e-broken &&
    chmod 755 /usr/bin/shiftd.e2e-broken && mv /usr/bin/shiftd.e2e-broken /usr/bin/shiftd'
  if ns_exec -t 150 systemctl reload shiftd.service; then die "a reload into a broken binary succeeded"; fi
  restore_binary
  check "after the failed hand-over it is the same process" -- [ "$(unit_prop shiftd.service MainPID)" = "$previous" ]
  check "after the failed hand-over /readyz is 200" -- ready_through_nginx
  check "the journal says the new process exited before it was ready" -- \
    journal_has "exited before it was ready" "$since"
  figure "broken binary: reload failed ('exited before it was ready'), same process serving"

  ((SECONDS - t0 < E2E_RELOAD_LOAD_SECONDS)) || die "the reloads outlasted the load; raise E2E_RELOAD_LOAD_SECONDS"
  finish_load reload
  local steady reload
  steady=$("${E2E_PY[@]}" field "$E2E_WORK/load-steady.json" get.p99_ms)
  reload=$("${E2E_PY[@]}" field "$E2E_WORK/load-reload.json" get.p99_ms)
  figure "GET p99: $(printf '%.0f' "$reload") ms across hand-overs vs $(printf '%.0f' "$steady") ms steady ($(python3 -c "print(f'{$reload / max($steady, 0.001):.2f}')")x)"
  check_load_jobs_final reload 120
}

one_serving_process() { [[ $(ns_exec pgrep -c -f 'shiftd serve') == 1 ]]; }

restore_binary() {
  ns_sh '[ ! -e /usr/bin/shiftd.e2e-good ] || mv /usr/bin/shiftd.e2e-good /usr/bin/shiftd'
}

restore() {
  restore_binary || true
  write_config "$E2E_DIR/shiftd-e2e.toml"
}
