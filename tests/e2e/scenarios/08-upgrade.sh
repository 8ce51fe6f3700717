# shellcheck shell=bash
# 8. Upgrade under load: `apt install` of a newer version while the load runs. No request
# fails, the service restarts into the new version, and shiftd.socket is never restarted
# (its ActiveEnterTimestamp is unchanged).

E2E_UPGRADE_LOAD_SECONDS=${E2E_UPGRADE_LOAD_SECONDS:-45}

scenario_main() {
  [[ -n ${E2E_DEB_NEXT-} && -f $E2E_DEB_NEXT ]] || die "no upgrade package (E2E_DEB_NEXT)"
  local id socket_since pid version_before version_after t0 ms
  id=$("${E2E_PY[@]}" submit fast)
  "${E2E_PY[@]}" wait-job "$id" --state succeeded --timeout 30 >/dev/null
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
  check "the service restarted into it (new main process)" -- [ "$(unit_prop shiftd.service MainPID)" != "$pid" ]
  local socket_now
  socket_now=$(unit_prop shiftd.socket ActiveEnterTimestamp)
  check "shiftd.socket was never restarted ($socket_since -> $socket_now)" -- [ "$socket_now" = "$socket_since" ]
  figure "socket untouched since $socket_since"
  check_load_jobs_final upgrade 120
}
