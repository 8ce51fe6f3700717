# shellcheck shell=bash
# One scenario in its own process: tests/e2e/run starts `bash lib/scenario.sh FILE` under
# a deadline with E2E_SCENARIO and the container's E2E_* variables set. FILE defines
# scenario_main; any failing command fails the scenario.
set -Eeuo pipefail
E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
for lib in common host container service load; do
  # shellcheck source=/dev/null
  source "$E2E_DIR/lib/$lib.sh"
done
trap 'log "failed at ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND"' ERR
# shellcheck source=/dev/null
source "$1"
scenario_main
