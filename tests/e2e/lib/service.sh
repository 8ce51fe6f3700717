# shellcheck shell=bash
# shiftd inside the container: install, configure, wait for it, put it back in shape.

E2E_CONFIG=/etc/shiftd/shiftd.toml

# install_deb FILE: copies a .deb into the container and installs it with apt, as a user would.
install_deb() {
  local deb=$1 name
  name=$(basename "$deb")
  place_socket_port
  ns_put "/root/$name" 0644 <"$deb"
  ns_exec -t 300 apt-get install -y -q "/root/$name" >"$E2E_WORK/apt-$name.log" 2>&1 ||
    { tail -30 "$E2E_WORK/apt-$name.log" >&2; return 1; }
}

# Moves shiftd.socket to $E2E_BACKEND_PORT when that is not the packaged 8080, with the
# drop-in an operator would write (shiftd.socket's comment). Put in place before the
# package is installed, so the socket never binds 8080, which another run may hold.
place_socket_port() {
  [[ $E2E_BACKEND_PORT == 8080 ]] && return 0
  printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:%s\n' "$E2E_BACKEND_PORT" |
    ns_put /etc/systemd/system/shiftd.socket.d/e2e-port.conf 0644
}

# Points nginx at shiftd with the site the package ships, on $E2E_HTTP_PORT, to the
# socket's port $E2E_BACKEND_PORT.
enable_nginx_site() {
  ns_sh "test -f /etc/nginx/sites-available/shiftd" ||
    { log "the package ships no /etc/nginx/sites-available/shiftd"; return 1; }
  ns_sh "ln -sf /etc/nginx/sites-available/shiftd /etc/nginx/sites-enabled/shiftd && rm -f /etc/nginx/sites-enabled/default"
  if [[ $E2E_HTTP_PORT != 80 ]]; then
    ns_sh "sed -i -E 's/listen( +)(\\[::\\]:)?80([ ;])/listen\\1\\2$E2E_HTTP_PORT\\3/' /etc/nginx/sites-available/shiftd"
  fi
  if [[ $E2E_BACKEND_PORT != 8080 ]]; then
    ns_sh "sed -i -E 's/server 127\\.0\\.0\\.1:8080;/server 127.0.0.1:$E2E_BACKEND_PORT;/' /etc/nginx/sites-available/shiftd"
  fi
  ns_exec nginx -t >"$E2E_WORK/nginx-t.log" 2>&1 || { cat "$E2E_WORK/nginx-t.log" >&2; return 1; }
  ns_exec systemctl restart nginx
}

# write_config [FILE]: installs a configuration (default: the suite's) as the conffile,
# in place, so the owner and mode the package gave it stay.
write_config() { ns_exec sh -c "cat >'$E2E_CONFIG'" <"${1:-$E2E_DIR/shiftd-e2e.toml}"; }

ready_through_nginx() { [[ $(http_status /readyz) == 200 ]]; }

# Waits until shiftd is active and /readyz answers 200 through nginx.
wait_ready() {
  local limit=${1:-60}
  wait_for "$limit" "shiftd.service active" ns_exec systemctl is-active --quiet shiftd.service &&
    wait_for "$limit" "/readyz 200 through nginx" ready_through_nginx
}

# restart_shiftd: `systemctl restart shiftd`, bounded; prints the wall time in ms.
restart_shiftd() {
  local t0; t0=$(now_ms)
  ns_exec -t 120 systemctl restart shiftd.service || return 1
  echo $(($(now_ms) - t0))
}

# Journal lines of shiftd since a cursor (or all), for showing on failure.
shiftd_journal() { ns_exec journalctl -q --no-pager -u shiftd.service -u shiftd.socket "$@"; }

# Brings the service back to a known state between scenarios: no failed state, running,
# ready, and no job of an earlier scenario left queued or running.
settle_service() {
  ns_exec systemctl reset-failed shiftd.service shiftd.socket 2>/dev/null || true
  if ! ns_exec systemctl is-active --quiet shiftd.service || ! ready_through_nginx; then
    log "shiftd is not serving; restarting it before the next scenario"
    ns_exec -t 120 systemctl restart shiftd.socket shiftd.service || true
  fi
  wait_ready 60 || return 1
  "${E2E_PY[@]}" cancel-open --timeout 30
}

# journal_since EPOCH_SECONDS [journalctl args]: shiftd's journal from then on.
journal_since() { local since=$1; shift; shiftd_journal --since "@$since" "$@"; }

# no_timeout_lines EPOCH_SECONDS: the stop never ran out of time since then.
no_timeout_lines() {
  local lines
  lines=$(journal_since "$1" | grep -E "State 'stop-sigterm' timed out|Failed with result 'timeout'" || true)
  [[ -z $lines ]] || { printf '%s\n' "$lines" >&2; return 1; }
}

# A drop-in for shiftd.service (NAME.conf with CONTENT on stdin), then daemon-reload.
put_dropin() {
  ns_put "/etc/systemd/system/shiftd.service.d/$1.conf" 0644
  ns_exec systemctl daemon-reload
}
remove_dropin() {
  ns_exec rm -f "/etc/systemd/system/shiftd.service.d/$1.conf"
  ns_exec systemctl daemon-reload
}

# stop_shiftd: `systemctl stop shiftd.service`, bounded; prints the wall time in ms.
stop_shiftd() {
  local t0; t0=$(now_ms)
  ns_exec -t "${1:-120}" systemctl stop shiftd.service || return 1
  echo $(($(now_ms) - t0))
}

# journal_has TEXT EPOCH_SECONDS: shiftd's journal has a line with TEXT since then.
# (grep reads everything: with -q it would stop early and pipefail would see SIGPIPE.)
journal_has() { journal_since "$2" | grep -F -- "$1" >/dev/null; }
not_journal_has() { ! journal_has "$@"; }

# restarted_since NRESTARTS MAINPID: systemd restarted shiftd by itself (NRestarts grew)
# and a new main process runs.
restarted_since() {
  local pid
  pid=$(unit_prop shiftd.service MainPID)
  (($(unit_prop shiftd.service NRestarts) > $1)) && [[ $pid != 0 && $pid != "$2" ]]
}
