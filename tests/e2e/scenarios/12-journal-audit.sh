# shellcheck shell=bash
# 11. Journal audit across every scenario of this run: no stop ever ran out of time
# ("State 'stop-sigterm' timed out", "Failed with result 'timeout'") and no error-level line
# of shiftd's units except those a scenario caused on purpose (see expect_errors).

scenario_main() {
  ns_exec -t 120 journalctl -q -o json --no-pager -u shiftd.service -u shiftd.socket \
    >"$E2E_WORK/journal-shiftd.json"
  local report rc=0
  report=$("${E2E_PY[@]}" journal-audit "$E2E_WORK/journal-shiftd.json" "$E2E_WORK/windows.tsv" "$E2E_WORK") || rc=$?
  printf '%s\n' "$report" >&2
  local summary
  summary=$(grep '^SUMMARY' <<<"$report" | sed 's/^SUMMARY //')
  figure "$(wc -l <"$E2E_WORK/journal-shiftd.json") entries: $summary"
  ((rc == 0)) || die "the journal audit found lines that must not be there"
}
