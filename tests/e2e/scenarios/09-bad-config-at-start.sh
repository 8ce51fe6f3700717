# shellcheck shell=bash
# 9. Bad config at start: with a misspelt key in /etc/shiftd/shiftd.toml, `systemctl restart
# shiftd` fails; the service ends `failed` with ExecMainStatus=78 and systemd does not
# restart it (RestartPreventExitStatus=78: NRestarts stays put over several RestartSec); the
# journal has exactly one line from shiftd that names the key and says what to do. The
# unit has no ExecStartPre: `shiftd serve` itself refuses the file. With the file fixed,
# reset-failed + start brings it back serving.

BAD_KEY=http.listen_addr

scenario_main() {
  expect_errors "Failed to start shiftd" "configuration error at"
  local good="$E2E_DIR/shiftd-e2e.toml" since t0 ms
  trap restore EXIT
  { cat "$good"; printf '\n[%s]\n%s = "127.0.0.1:9000"\n' "${BAD_KEY%%.*}" "${BAD_KEY#*.}"; } | write_config /dev/stdin
  ns_exec grep -q "^${BAD_KEY#*.} = " "$E2E_CONFIG" || die "could not write the broken configuration"

  since=$(date +%s)
  t0=$(now_ms)
  if ns_exec -t 120 systemctl restart shiftd.service; then die "systemctl restart succeeded with a broken configuration"; fi
  ms=$(($(now_ms) - t0))
  log "systemctl restart failed after $ms ms, as it should"

  local state result status restarts
  state=$(unit_prop shiftd.service ActiveState)
  result=$(unit_prop shiftd.service Result)
  status=$(unit_prop shiftd.service ExecMainStatus)
  restarts=$(unit_prop shiftd.service NRestarts)
  log "ActiveState=$state Result=$result ExecMainStatus=$status NRestarts=$restarts"
  check "the service is failed (ActiveState=$state)" -- [ "$state" = failed ]
  check "it exited 78, a configuration error (ExecMainStatus=$status)" -- [ "$status" = 78 ]

  # A restart loop would show within RestartSec (2 s): watch for three of them. The wait is
  # for the event that must not come (NRestarts grows, or the unit leaves `failed`); its
  # deadline passing is the pass.
  local restart_ms window
  restart_ms=$("${E2E_PY[@]}" timespan-ms "$(unit_prop shiftd.service RestartUSec)")
  window=$((restart_ms * 3 / 1000 + 1))
  if wait_for "$window" "a restart (none is expected)" restarted_or_left_failed "$restarts"; then
    die "systemd restarted shiftd (NRestarts $restarts -> $(unit_prop shiftd.service NRestarts), ActiveState $(unit_prop shiftd.service ActiveState))"
  fi
  log "ok: no restart in ${window}s (NRestarts still $restarts, still failed)"

  # Exactly one line of shiftd, naming the key and saying what to do.
  local lines count
  lines=$(journal_since "$since" -o cat | grep -F "configuration error at \`$BAD_KEY\`" || true)
  printf '%s\n' "$lines" | sed 's/^/    journal: /' >&2
  count=$(grep -c . <<<"$lines" || true)
  check "the journal has exactly one line naming $BAD_KEY (found $count)" -- [ "$count" = 1 ]
  check "that line says what to do (\`shiftd check\`)" -- grep -qF 'shiftd check' <<<"$lines"
  figure "broken key $BAD_KEY: restart refused in $ms ms; failed, exit 78, NRestarts +0 over ${window}s; one journal line"

  # Fixed: it starts and serves again.
  trap - EXIT
  restore
  check "after the fix shiftd is active" -- ns_exec systemctl is-active --quiet shiftd.service
  check "after the fix /readyz is 200 through nginx" -- ready_through_nginx
  figure "fixed: reset-failed + start, serving again"
}

restarted_or_left_failed() {
  (($(unit_prop shiftd.service NRestarts) > $1)) || [[ $(unit_prop shiftd.service ActiveState) != failed ]]
}

# The suite's configuration back, the failed state cleared, the service started and ready.
restore() {
  write_config "$E2E_DIR/shiftd-e2e.toml"
  ns_exec systemctl reset-failed shiftd.service
  ns_exec -t 120 systemctl start shiftd.service
  wait_ready 60
}
