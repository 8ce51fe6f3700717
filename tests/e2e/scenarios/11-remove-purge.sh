# shellcheck shell=bash
# 10. Remove and purge: `apt remove` stops shiftd cleanly and keeps configuration, state
# and user; `apt purge` removes all three.

scenario_main() {
  local since ms
  since=$(date +%s)
  ms=$(now_ms)
  ns_exec -t 180 apt-get remove -y -q shiftd >"$E2E_WORK/apt-remove.log" 2>&1 ||
    { cat "$E2E_WORK/apt-remove.log" >&2; die "apt remove failed"; }
  ms=$(($(now_ms) - ms))
  figure "apt remove ${ms} ms"
  check "shiftd.service is stopped" -- not_active shiftd.service
  check "shiftd.socket is stopped" -- not_active shiftd.socket
  check "nothing listens on the backend port" -- sh -c "! ss -Hltn 'sport = :$E2E_BACKEND_PORT' | grep -q ."
  check "the stop did not time out" -- no_timeout_lines "$since"
  check "remove keeps /etc/shiftd/shiftd.toml" -- ns_exec test -f /etc/shiftd/shiftd.toml
  check "remove keeps the state directory" -- ns_sh 'test -d /var/lib/shiftd || test -d /var/lib/private/shiftd'
  check "remove keeps the shiftd user" -- ns_exec getent passwd shiftd

  ns_exec -t 180 apt-get purge -y -q shiftd >"$E2E_WORK/apt-purge.log" 2>&1 ||
    { cat "$E2E_WORK/apt-purge.log" >&2; die "apt purge failed"; }
  check "purge removes /etc/shiftd" -- ns_exec test ! -e /etc/shiftd
  check "purge removes the state directory" -- ns_sh 'test ! -e /var/lib/shiftd && test ! -e /var/lib/private/shiftd'
  check "purge removes the shiftd user" -- not_getent passwd shiftd
  check "purge removes the shiftd group" -- not_getent group shiftd
  check "dpkg forgets the package" -- package_gone
  figure "purge removed config, state, user and group"
  # The site link the suite made would now dangle.
  ns_exec rm -f /etc/nginx/sites-enabled/shiftd
}

not_active() { ! ns_exec systemctl is-active --quiet "$1"; }
package_gone() {
  local status
  status=$(ns_exec dpkg-query -W -f="\${Status}" shiftd 2>/dev/null || true)
  [[ ! $status =~ ok\ installed|config-files ]]
}
not_getent() { ! ns_exec getent "$1" "$2" >/dev/null; }
