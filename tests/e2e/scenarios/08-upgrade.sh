# shellcheck shell=bash
# 8. Upgrade under load, with a job running: `apt install` of a newer version while the load
# runs. postinst reloads, so the old process hands over to the new binary: no request
# fails, the new version serves (a new main process, and the journal shows the hand-over,
# not a stop), the running job finishes in the old process on its first attempt, and
# shiftd.socket is never restarted (its ActiveEnterTimestamp is unchanged).

E2E_UPGRADE_LOAD_SECONDS=${E2E_UPGRADE_LOAD_SECONDS:-45}

scenario_main() {
  [[ -n ${E2E_DEB_NEXT-} && -f $E2E_DEB_NEXT ]] || die "no upgrade package (E2E_DEB_NEXT)"
  local id socket_since pid version_before version_after t0 ms slow since
  id=$("${E2E_PY[@]}" submit fast)
  "${E2E_PY[@]}" wait-job "$id" --state succeeded --timeout 30 >/dev/null
  slow=$("${E2E_PY[@]}" submit slow)
  "${E2E_PY[@]}" wait-job "$slow" --state running --timeout 30 >/dev/null
  since=$(date +%s)
  socket_since=$(unit_prop shiftd.socket ActiveEnterTimestamp)
  pid=$(unit_prop shiftd.service MainPID)
  version_before=$(ns_exec dpkg-query -W -f="\${Version}" shiftd)

  start_load upgrade "$E2E_UPGRADE_LOAD_SECONDS" "/v1/jobs/$id"
  t0=$SECONDS
  ms=$(now_ms)
  install_deb "$E2E_DEB_NEXT" || die "apt install of the newer package failed"
  ms=$(($(now_ms) - ms))
  version_after=$(ns_exec dpkg-query -W -f="\${Version}" shiftd)
  log "upgraded $version_before -> $version_after in $ms ms"
  wait_ready 60
  ((SECONDS - t0 < E2E_UPGRADE_LOAD_SECONDS)) || die "the upgrade outlasted the load; raise E2E_UPGRADE_LOAD_SECONDS"
  finish_load upgrade

  figure "apt install $version_before -> $version_after: ${ms} ms"
  check "the new version is installed" -- [ "$version_after" != "$version_before" ]
  check "the new version serves (new main process)" -- [ "$(unit_prop shiftd.service MainPID)" != "$pid" ]
  check "it was a hand-over, not a restart" -- journal_has "hand-over to pid" "$since"
  check "the old process did not stop on a signal" -- not_journal_has "stop requested" "$since"
  local job
  job=$("${E2E_PY[@]}" wait-job "$slow" --state succeeded --timeout 30)
  check "the job running during the upgrade succeeded on its first attempt" -- \
    [ "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["attempts"])' <<<"$job")" = 1 ]
  figure "job running during the upgrade: succeeded, attempts 1 (finished in the old process)"
  local socket_now
  socket_now=$(unit_prop shiftd.socket ActiveEnterTimestamp)
  check "shiftd.socket was never restarted ($socket_since -> $socket_now)" -- [ "$socket_now" = "$socket_since" ]
  figure "socket untouched since $socket_since"
  if [[ -f $E2E_WORK/load-steady.json ]]; then
    # The reload scenario measured the same load with no restart in this run.
    local steady upgrade
    steady=$("${E2E_PY[@]}" field "$E2E_WORK/load-steady.json" get.p99_ms)
    upgrade=$("${E2E_PY[@]}" field "$E2E_WORK/load-upgrade.json" get.p99_ms)
    figure "GET p99: $(printf '%.0f' "$upgrade") ms across the upgrade vs $(printf '%.0f' "$steady") ms steady ($(python3 -c "print(f'{$upgrade / max($steady, 0.001):.2f}')")x)"
  fi
  check_load_jobs_final upgrade 120
}
