# shellcheck shell=bash
# 1. Install: the package alone leaves socket and service enabled and running; /readyz
# answers through nginx; `systemctl status` shows the live STATUS line; the journal has
# structured fields; the unit is hardened (exposure <= 1.5, the bound its sandbox was
# chosen under) and verifies clean.

scenario_main() {
  # Recorded by setup right after `apt install`, before the suite changed anything.
  local socket_active socket_enabled service_active service_enabled
  socket_active=$(after_install socket_active)
  socket_enabled=$(after_install socket_enabled)
  service_active=$(after_install service_active)
  service_enabled=$(after_install service_enabled)
  check "apt install started shiftd.socket (was: $socket_active)" -- [ "$socket_active" = active ]
  check "apt install enabled shiftd.socket (was: $socket_enabled)" -- [ "$socket_enabled" = enabled ]
  check "apt install enabled shiftd.service (was: $service_enabled)" -- [ "$service_enabled" = enabled ]
  check "apt install started shiftd.service (was: $service_active)" -- [ "$service_active" = active ]

  local unit
  for unit in shiftd.socket shiftd.service; do
    check "$unit is active" -- ns_exec systemctl is-active --quiet "$unit"
    check "$unit is enabled" -- ns_exec systemctl is-enabled --quiet "$unit"
  done

  local ready
  ready=$(http GET /readyz)
  log "GET /readyz through nginx: $ready"
  check "/readyz answers 200 through nginx" -- [ "${ready%% *}" = 200 ]

  local status_text
  ns_exec systemctl status --no-pager -n 0 shiftd.service >"$E2E_WORK/install-status.txt" 2>&1 || true
  sed 's/^/    /' "$E2E_WORK/install-status.txt" >&2
  status_text=$(sed -n 's/^ *Status: //p' "$E2E_WORK/install-status.txt")
  check "systemctl status shows a STATUS line" -- [ -n "$status_text" ]
  figure "status: $status_text"

  # A request that logs at info level, so a request id has something to ride on.
  "${E2E_PY[@]}" submit fast >/dev/null
  http GET /v1/jobs?limit=1 >/dev/null
  ns_exec journalctl -q -o json --no-pager -u shiftd.service >"$E2E_WORK/install-journal.json"
  local field
  field=$("${E2E_PY[@]}" structured-fields "$E2E_WORK/install-journal.json") ||
    die "no journal entry of shiftd carries a request id field"
  log "structured field in the journal: $field"
  figure "journal field ${field%%=*}"

  local security exposure
  security=$(ns_exec systemd-analyze security --no-pager shiftd.service 2>&1 || true)
  printf '%s\n' "$security" | tail -5 | sed 's/^/    /' >&2
  exposure=$(sed -n 's/.*Overall exposure level for shiftd.service: *\([0-9.]*\).*/\1/p' <<<"$security")
  [[ -n $exposure ]] || die "systemd-analyze security printed no exposure level"
  figure "security exposure $exposure"
  check "systemd-analyze security: $exposure <= 1.5" -- awk -v e="$exposure" 'BEGIN { exit !(e <= 1.5) }'

  local verify
  verify=$(ns_exec systemd-analyze verify "$(unit_prop shiftd.socket FragmentPath)" "$(unit_prop shiftd.service FragmentPath)" 2>&1) ||
    { printf '%s\n' "$verify" >&2; die "systemd-analyze verify failed"; }
  if [[ -n $verify ]]; then printf '%s\n' "$verify" | sed 's/^/    /' >&2; die "systemd-analyze verify is not clean"; fi
  log "systemd-analyze verify: clean"
  figure "verify clean"
}

after_install() { sed -n "s/^$1=//p" "$E2E_WORK/after-install.env"; }
