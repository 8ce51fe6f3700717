# shellcheck shell=bash
# Constant-rate load from the host through nginx, in the background of a scenario.
# The GETs come from oha (-q with --latency-correction); the POSTs from e2e.py's own
# open-loop driver, because oha keeps no response bodies and every 202's job id is
# needed afterwards to prove the job reached a final state.

E2E_GET_RATE=${E2E_GET_RATE:-1000}
E2E_POST_RATE=${E2E_POST_RATE:-50}

# start_load NAME SECONDS GET_PATH [GET_RATE] [POST_RATE]: starts the load and returns
# once requests are flowing. The summary lands in $E2E_WORK/load-NAME.json.
start_load() {
  local name=$1 seconds=$2 get_path=$3 get_rate=${4:-$E2E_GET_RATE} post_rate=${5:-$E2E_POST_RATE}
  local started="$E2E_WORK/load-$name.started"
  rm -f "$started"
  # Its own process group, so that a scenario that fails early can stop oha too.
  setsid timeout -k 10 $((seconds + 180)) "${E2E_PY[@]}" load --duration "$seconds" \
    --get-rate "$get_rate" --get-path "$get_path" --post-rate "$post_rate" \
    --oha "$E2E_OHA" --out "$E2E_WORK/load-$name.json" --started "$started" \
    >"$E2E_WORK/load-$name.out" 2>&1 &
  LOAD_PID=$!
  trap stop_load EXIT
  trap 'exit 143' TERM INT
  wait_for 20 "the load to start" test -e "$started"
  log "load $name: $get_rate GET/s ($get_path) + $post_rate POST/s for ${seconds}s"
}

# Stops a load that is still running (the scenario failed before finish_load).
stop_load() {
  if [[ -n ${LOAD_PID-} ]] && kill -0 "$LOAD_PID" 2>/dev/null; then
    kill -TERM -- "-$LOAD_PID" 2>/dev/null || true
  fi
}

# finish_load NAME: waits for the load to end; logs and records its summary; fails when
# any request failed.
finish_load() {
  local name=$1 line
  wait "$LOAD_PID" || { cat "$E2E_WORK/load-$name.out" >&2; die "the load run failed"; }
  LOAD_PID=
  line=$("${E2E_PY[@]}" describe-load "$E2E_WORK/load-$name.json")
  log "load $name: $line"
  figure "$line"
  # The generator runs on the same 2 cores as the service: when it could not keep the rate,
  # the table says so rather than passing a lighter test silently.
  local rate target=$((E2E_GET_RATE + ${E2E_POST_RATE%.*}))
  rate=$("${E2E_PY[@]}" field "$E2E_WORK/load-$name.json" rate)
  if ((rate * 100 < target * 95)); then
    log "WARNING: the load reached $rate req/s of $target (the host is busy)"
    figure "WARNING: $rate of $target req/s reached (busy host)"
  fi
  local failed
  failed=$("${E2E_PY[@]}" field "$E2E_WORK/load-$name.json" failed)
  if ((failed > 0)); then
    for part in get post; do
      "${E2E_PY[@]}" field "$E2E_WORK/load-$name.json" "$part.status" 2>/dev/null | sed "s/^/  $part status: /" >&2 || true
      "${E2E_PY[@]}" field "$E2E_WORK/load-$name.json" "$part.errors" 2>/dev/null | sed "s/^/  $part errors: /" >&2 || true
    done
    log "nginx error.log (last lines):"
    ns_exec tail -n 20 /var/log/nginx/error.log >&2 || true
    die "$failed requests failed under load"
  fi
}

# Every job that answered 202 during the load must be found afterwards in a final state,
# and (a fast task cannot fail by itself) succeeded.
check_load_jobs_final() {
  local name=$1 timeout=${2:-180} result
  result=$("${E2E_PY[@]}" wait-final "$E2E_WORK/load-$name.json" --timeout "$timeout") ||
    { log "$result"; die "jobs that got a 202 did not reach a final state"; }
  log "jobs of the load: $result"
  local total succeeded
  total=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])' <<<"$result")
  succeeded=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["final"].get("succeeded", 0))' <<<"$result")
  figure "jobs with a 202: $total, succeeded: $succeeded"
  ((total == succeeded)) || die "$((total - succeeded)) of $total jobs that got a 202 did not succeed: $result"
}
