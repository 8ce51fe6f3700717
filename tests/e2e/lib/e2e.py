#!/usr/bin/env python3
"""The fiddly parts of the end-to-end suite: the API client, the load run, the results
table and the journal audit. Standard library only; every wait has a deadline.

All requests go through nginx at 127.0.0.1:$E2E_HTTP_PORT (the container shares the
host's network). Subcommands print JSON or one plain line; see `e2e.py -h`.
"""

import argparse
import http.client
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

PORT = int(os.environ.get("E2E_HTTP_PORT", "80"))
FINAL = {"succeeded", "failed", "cancelled"}


def request(method, path, body=None, timeout=15.0):
    """One request on a fresh connection. Returns (status, parsed JSON or text);
    status 0 means the connection failed."""
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    try:
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        return resp.status, payload
    except (OSError, http.client.HTTPException) as e:
        return 0, f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------- jobs

def submit(task, params=None):
    status, body = request("POST", f"/v1/tasks/{task}/jobs", {"params": params or {}})
    if status != 202 or not isinstance(body, dict) or "id" not in body:
        fail(f"POST /v1/tasks/{task}/jobs answered {status}: {body}")
    return body["id"]


def get_job(job_id):
    status, body = request("GET", f"/v1/jobs/{job_id}")
    return body if status == 200 and isinstance(body, dict) else None


def wait_job(job_id, states, timeout, attempts_at_least=0, differs=None):
    """Polls a job until its state is one of `states`, it has made enough attempts and,
    with differs=(field, value), that field no longer has that value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        job = get_job(job_id)
        if job is not None:
            last = job
            if (job.get("state") in states and job.get("attempts", 0) >= attempts_at_least
                    and (differs is None or str(job.get(differs[0])) != differs[1])):
                return job
        time.sleep(0.2)
    fail(f"job {job_id} not in {sorted(states)} (attempts >= {attempts_at_least}"
         f"{f', {differs[0]} != {differs[1]}' if differs else ''}) after {timeout}s; "
         f"last seen: {json.dumps(last)}")


def wait_final(ids, timeout):
    """Waits until every job is final; returns {state: count} plus the ids never found."""
    deadline = time.monotonic() + timeout
    pending = set(ids)
    states = {}
    while pending and time.monotonic() < deadline:
        for job_id in sorted(pending):
            job = get_job(job_id)
            if job is not None and job.get("state") in FINAL:
                states[job["state"]] = states.get(job["state"], 0) + 1
                pending.discard(job_id)
            if time.monotonic() >= deadline:
                break
        if pending:
            time.sleep(0.5)
    return {"total": len(ids), "final": states, "not_final": sorted(pending)}


def list_jobs(state, task=None):
    """Every job in a state, following the cursor."""
    out, cursor = [], None
    for _ in range(1000):
        path = f"/v1/jobs?state={state}&limit=500" + (f"&task={task}" if task else "")
        if cursor:
            path += f"&cursor={cursor}"
        status, body = request("GET", path)
        if status != 200 or not isinstance(body, dict):
            fail(f"GET {path} answered {status}: {body}")
        items = body.get("jobs") or body.get("items") or []
        out.extend(items)
        cursor = body.get("next_cursor") or body.get("cursor")
        if not cursor or not items:
            break
    return out


def cancel_open(timeout):
    """Cancels whatever an earlier scenario left queued or running and waits for it."""
    ids = []
    for state in ("queued", "running"):
        for job in list_jobs(state):
            ids.append(job["id"])
            request("POST", f"/v1/jobs/{job['id']}/cancel")
    if ids:
        result = wait_final(ids, timeout)
        if result["not_final"]:
            fail(f"jobs still open after cancel: {result['not_final'][:20]}")
        print(f"cancelled {len(ids)} leftover jobs", file=sys.stderr)


def concurrent_requests(count, path, timeout):
    """COUNT GETs at once, each waiting up to TIMEOUT; their statuses and slowest time."""
    results = []
    lock = threading.Lock()

    def one():
        t0 = time.monotonic()
        status, _ = request("GET", path, timeout=timeout)
        with lock:
            results.append((status, time.monotonic() - t0))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    codes = {}
    for status, _ in results:
        codes[str(status)] = codes.get(str(status), 0) + 1
    return {"sent": count, "status": codes,
            "max_ms": round(max((r[1] for r in results), default=0) * 1000)}


# ---------------------------------------------------------------- load

def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


class PostDriver:
    """POSTs at a constant rate (open loop): request i is due at t0 + i/rate, and its
    latency counts from then, not from when a worker got to it (latency correction).
    Each request uses a fresh connection so a stale keep-alive cannot fake a failure,
    and nothing is retried: a retried POST could hide a lost one."""

    def __init__(self, task, rate, duration, workers=64):
        self.task, self.rate, self.duration = task, rate, duration
        self.todo = queue.Queue()
        self.lock = threading.Lock()
        self.results = []  # (status, latency_s, id or error)
        self.workers = [threading.Thread(target=self.work, daemon=True) for _ in range(workers)]

    def work(self):
        while True:
            due = self.todo.get()
            if due is None:
                return
            status, body = request("POST", f"/v1/tasks/{self.task}/jobs", {"params": {}}, timeout=120)
            latency = time.monotonic() - due
            detail = body.get("id") if status == 202 and isinstance(body, dict) else str(body)[:200]
            with self.lock:
                self.results.append((status, latency, detail))

    def run(self):
        for w in self.workers:
            w.start()
        total = int(self.rate * self.duration)
        t0 = time.monotonic()
        for i in range(total):
            due = t0 + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.todo.put(due)
        for _ in self.workers:
            self.todo.put(None)
        for w in self.workers:
            w.join(timeout=150)

    def summary(self):
        lat = sorted(r[1] for r in self.results)
        codes, errors, ids = {}, {}, []
        for status, _, detail in self.results:
            codes[str(status)] = codes.get(str(status), 0) + 1
            if status == 202:
                ids.append(detail)
            elif status == 0:
                errors[detail] = errors.get(detail, 0) + 1
        failed = sum(n for code, n in codes.items() if not code.startswith("2"))
        failed += int(self.rate * self.duration) - len(self.results)  # never answered
        return {
            "requests": int(self.rate * self.duration), "answered": len(self.results),
            "failed": failed, "status": codes, "errors": errors, "ids": ids,
            "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000,
            "max_ms": (lat[-1] if lat else 0) * 1000,
        }


def oha_summary(path):
    data = json.loads(Path(path).read_text())
    codes = {str(k): v for k, v in (data.get("statusCodeDistribution") or {}).items()}
    errors = data.get("errorDistribution") or {}
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    failed = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(errors.values())
    pct = data.get("latencyPercentiles") or {}
    s = data.get("summary") or {}
    return {
        "requests": ok + failed, "failed": failed, "status": codes, "errors": errors,
        "rps": s.get("requestsPerSec"),
        "p50_ms": (pct.get("p50") or 0) * 1000, "p99_ms": (pct.get("p99") or 0) * 1000,
        "max_ms": (s.get("slowest") or 0) * 1000,
    }


def run_load(args):
    """GETs through oha (constant rate, latency correction) and, at the same time,
    POSTs through PostDriver. Writes the combined summary to --out."""
    out = Path(args.out)
    oha_json = out.with_suffix(".oha.json")
    procs = []
    if args.get_rate > 0:
        # -w: requests still in flight at the end are waited for, not counted as errors.
        cmd = [args.oha, "--no-tui", "--output-format", "json", "--latency-correction",
               "-q", str(args.get_rate), "-z", f"{args.duration}s", "-w", "-c", str(args.connections),
               "-t", "60s", f"http://127.0.0.1:{PORT}{args.get_path}"]
        procs.append(subprocess.Popen(cmd, stdout=open(oha_json, "w"),
                                      stderr=open(out.with_suffix(".oha.err"), "w")))
    driver = PostDriver(args.post_task, args.post_rate, args.duration) if args.post_rate > 0 else None
    Path(args.started).touch() if args.started else None
    if driver:
        driver.run()
    for p in procs:
        try:
            p.wait(timeout=args.duration + 120)
        except subprocess.TimeoutExpired:
            p.kill()
            fail("oha did not finish in time")
        if p.returncode != 0:
            fail(f"oha exited {p.returncode}: {out.with_suffix('.oha.err').read_text()[-2000:]}")
    result = {"duration_s": args.duration}
    if procs:
        result["get"] = oha_summary(oha_json)
    if driver:
        result["post"] = driver.summary()
    parts = [v for k, v in result.items() if k in ("get", "post")]
    result["requests"] = sum(p["requests"] for p in parts)
    result["failed"] = sum(p["failed"] for p in parts)
    result["rate"] = round(result["requests"] / args.duration)
    result["p50_ms"] = max(p["p50_ms"] for p in parts)
    result["p99_ms"] = max(p["p99_ms"] for p in parts)
    result["max_ms"] = max(p["max_ms"] for p in parts)
    out.write_text(json.dumps(result, indent=1))
    print(describe_load(result))


def describe_load(r):
    parts = [f"{r['requests']} requests at {r['rate']}/s, {r['failed']} failed"]
    for kind in ("get", "post"):
        if kind in r:
            p = r[kind]
            parts.append(f"{kind.upper()} p50/p99/max {p['p50_ms']:.0f}/{p['p99_ms']:.0f}/{p['max_ms']:.0f} ms")
    return "; ".join(parts)


def load_field(args):
    """Prints one field of a JSON file or, with "-", of standard input (dotted path)."""
    value = json.loads(sys.stdin.read() if args.file == "-" else Path(args.file).read_text())
    for key in args.field.split("."):
        value = value[key]
    print(json.dumps(value) if isinstance(value, (dict, list)) else value)


def timespan_ms(text):
    """systemd's "1min 10s" / "3s" / "500ms" as milliseconds."""
    units = {"us": 0.001, "ms": 1, "s": 1000, "min": 60000, "h": 3600000, "d": 86400000}
    total = 0.0
    for number, unit in re.findall(r"([0-9.]+)\s*(us|ms|min|s|h|d)", text):
        total += float(number) * units[unit]
    if total == 0 and text.strip() not in ("0", "0s"):
        fail(f"not a timespan: {text!r}")
    return int(total)


# ---------------------------------------------------------------- report

def table(args):
    """The one results table: a row per scenario from results.tsv and figures.*."""
    work = Path(args.work)
    rows = []
    for line in (work / "results.tsv").read_text().splitlines():
        name, result, seconds = line.split("\t")
        fig = work / f"figures.{name}"
        figures = "; ".join(l for l in fig.read_text().splitlines() if l) if fig.exists() else ""
        rows.append((name, result, seconds, figures.replace("|", "\\|")))
    print("| scenario | result | time | key figures |")
    print("| --- | --- | --- | --- |")
    for name, result, seconds, figures in rows:
        print(f"| {name} | {result} | {seconds} s | {figures} |")


# ---------------------------------------------------------------- journal audit

TIMEOUT_LINES = ("State 'stop-sigterm' timed out", "Failed with result 'timeout'")


def journal_audit(args):
    """Reads `journalctl -o json` of shiftd's units and the scenario windows; fails on any
    stop that timed out and on any error-level line a scenario did not declare."""
    windows = []  # (name, start_us, end_us, [allowed regex])
    for line in Path(args.windows).read_text().splitlines():
        name, start, end = line.split("\t")
        allowed_file = Path(args.work) / f"expected-errors.{name}"
        allowed = [re.compile(p) for p in allowed_file.read_text().splitlines() if p] if allowed_file.exists() else []
        windows.append((name, int(start), int(end), allowed))

    def window_of(us):
        for name, start, end, allowed in windows:
            if start <= us <= end:
                return name, allowed
        return "setup", []

    timed_out, unexpected, expected = [], [], 0
    for line in Path(args.journal).read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if isinstance(message, list):  # journald gives non-UTF-8 messages as bytes
            message = bytes(message).decode(errors="replace")
        message = message or ""
        when = int(entry.get("__REALTIME_TIMESTAMP", "0"))
        name, allowed = window_of(when)
        stamp = time.strftime("%H:%M:%S", time.localtime(when / 1e6))
        shown = f"{stamp} [{name}] {message}"
        if any(t in message for t in TIMEOUT_LINES):
            timed_out.append(shown)
        if int(entry.get("PRIORITY", "6")) <= 3:
            if any(p.search(message) for p in allowed):
                expected += 1
            else:
                unexpected.append(shown)
    for line in timed_out:
        print(f"timed out: {line}")
    for line in unexpected:
        print(f"error-level: {line}")
    print(f"SUMMARY timed_out={len(timed_out)} errors={len(unexpected)} expected_errors={expected}")
    sys.exit(1 if timed_out or unexpected else 0)


def structured_fields(args):
    """Finds a journal entry of shiftd that carries a request id as its own field."""
    for line in Path(args.journal).read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        for key, value in entry.items():
            if "REQUEST_ID" in key:
                print(f"{key}={value}")
                return
    fail("no journal entry of shiftd has a REQUEST_ID field")


# ---------------------------------------------------------------- schedules and notices

def run_receiver(port, key_file, out):
    """A notice receiver on 127.0.0.1:port (the container shares the host's network):
    appends one JSON line per POST to `out` with the notice's id, event, job and whether
    its HMAC signature verified; answers 200. Runs until killed."""
    import hashlib
    import hmac
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    key = Path(key_file).read_bytes().rstrip()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            ts = self.headers.get("shiftd-timestamp", "")
            expected = "v1=" + hmac.new(key, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
            signed = hmac.compare_digest(expected, self.headers.get("shiftd-signature", ""))
            try:
                notice = json.loads(body)
            except ValueError:
                notice = {}
            record = {k: notice.get(k) for k in ("id", "event", "job_id", "task", "attempt", "state")}
            record["signature_ok"] = signed
            record["header_id"] = self.headers.get("shiftd-notice-id")
            with lock, open(out, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def all_jobs(task):
    jobs = []
    for state in ("queued", "scheduled", "running", "succeeded", "failed", "cancelled"):
        jobs.extend(list_jobs(state, task))
    return jobs


def schedule_check(task, every_ms):
    """The jobs a schedule enqueued: one per occurrence (no run_at twice) and no gap
    between the first and the last occurrence."""
    jobs = all_jobs(task)
    times = sorted(timespan_rfc3339_ms(j["run_at"]) for j in jobs)
    duplicates = len(times) - len(set(times))
    gaps = [b - a for a, b in zip(times, times[1:]) if b - a != every_ms]
    return {"jobs": len(jobs), "duplicates": duplicates, "gaps_ms": gaps,
            "first": times[0] if times else None, "last": times[-1] if times else None}


def timespan_rfc3339_ms(text):
    from datetime import datetime
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def notices_check(out, tasks, timeout):
    """Waits until every final job of `tasks` has a notice of its final event; returns the
    counts (notices per job and final event, distinct ids, bad signatures)."""
    deadline = time.monotonic() + timeout
    while True:
        final = [j for t in tasks for s in sorted(FINAL) for j in list_jobs(s, t)]
        seen = {}
        records = []
        if Path(out).exists():
            records = [json.loads(line) for line in Path(out).read_text().splitlines() if line.strip()]
        for r in records:
            seen.setdefault((r["job_id"], r["event"]), set()).add(r["id"])
        missing = [j["id"] for j in final if (j["id"], "job." + j["state"]) not in seen]
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    return {
        "final_jobs": len(final),
        "missing": missing,
        "notices": len(records),
        "ids_per_event_max": max((len(v) for v in seen.values()), default=0),
        "bad_signatures": sum(1 for r in records if not r["signature_ok"]),
        "header_mismatch": sum(1 for r in records if r["header_id"] != r["id"]),
    }


# ---------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("submit", help="start a job, print its id")
    s.add_argument("task")
    s.add_argument("--params", default="{}")
    s = sub.add_parser("job", help="print a job as JSON")
    s.add_argument("id")
    s = sub.add_parser("wait-job", help="wait for a job to reach a state")
    s.add_argument("id")
    s.add_argument("--state", required=True, help="comma-separated states")
    s.add_argument("--attempts", type=int, default=0)
    s.add_argument("--differs", nargs=2, metavar=("FIELD", "VALUE"), help="wait until FIELD != VALUE")
    s.add_argument("--timeout", type=float, default=60)
    s = sub.add_parser("wait-final", help="wait until the jobs of a load run are final")
    s.add_argument("load", help="a load summary JSON with post.ids, or a file of ids")
    s.add_argument("--timeout", type=float, default=120)
    s = sub.add_parser("cancel-open", help="cancel leftover queued/running jobs")
    s.add_argument("--timeout", type=float, default=30)
    s = sub.add_parser("load", help="constant-rate load through nginx")
    s.add_argument("--duration", type=int, required=True)
    s.add_argument("--get-rate", type=int, default=0)
    s.add_argument("--get-path", default="/healthz")
    s.add_argument("--connections", type=int, default=100)
    s.add_argument("--post-rate", type=float, default=0)
    s.add_argument("--post-task", default="fast")
    s.add_argument("--oha", default="oha")
    s.add_argument("--out", required=True)
    s.add_argument("--started", help="touched when the load begins")
    s = sub.add_parser("requests", help="COUNT GETs at once; print their statuses")
    s.add_argument("count", type=int)
    s.add_argument("path")
    s.add_argument("--timeout", type=float, default=60)
    s = sub.add_parser("cancel", help="cancel a job and wait until it is final")
    s.add_argument("id")
    s.add_argument("--timeout", type=float, default=30)
    s = sub.add_parser("field", help="print a field of a JSON file (dotted path)")
    s.add_argument("file")
    s.add_argument("field")
    s = sub.add_parser("timespan-ms", help="systemd timespan (1min 10s) as milliseconds")
    s.add_argument("text")
    s = sub.add_parser("describe-load", help="one line about a load summary")
    s.add_argument("file")
    s = sub.add_parser("table", help="print the results table")
    s.add_argument("work")
    s = sub.add_parser("journal-audit", help="audit the journal of a run")
    s.add_argument("journal")
    s.add_argument("windows")
    s.add_argument("work")
    s = sub.add_parser("structured-fields", help="find a REQUEST_ID field in journal JSON")
    s.add_argument("journal")
    s = sub.add_parser("receiver", help="receive notices into a JSON-lines file")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--key-file", required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("schedule-check", help="one job per occurrence, no gap")
    s.add_argument("task")
    s.add_argument("--every-ms", type=int, required=True)
    s = sub.add_parser("notices-check", help="every final job has its notice")
    s.add_argument("out")
    s.add_argument("--tasks", required=True)
    s.add_argument("--timeout", type=float, default=60)
    args = p.parse_args()

    if args.cmd == "receiver":
        run_receiver(args.port, args.key_file, args.out)
    elif args.cmd == "schedule-check":
        print(json.dumps(schedule_check(args.task, args.every_ms)))
    elif args.cmd == "notices-check":
        print(json.dumps(notices_check(args.out, args.tasks.split(","), args.timeout)))
    elif args.cmd == "submit":
        print(submit(args.task, json.loads(args.params)))
    elif args.cmd == "job":
        job = get_job(args.id)
        if job is None:
            fail(f"job {args.id} not found")
        print(json.dumps(job))
    elif args.cmd == "wait-job":
        print(json.dumps(wait_job(args.id, set(args.state.split(",")), args.timeout, args.attempts, args.differs)))
    elif args.cmd == "wait-final":
        text = Path(args.load).read_text()
        ids = json.loads(text)["post"]["ids"] if text.lstrip().startswith("{") else [int(x) for x in text.split()]
        result = wait_final(ids, args.timeout)
        print(json.dumps(result))
        sys.exit(1 if result["not_final"] else 0)
    elif args.cmd == "cancel":
        status, body = request("POST", f"/v1/jobs/{args.id}/cancel")
        if status >= 300:
            fail(f"POST /v1/jobs/{args.id}/cancel answered {status}: {body}")
        print(json.dumps(wait_job(args.id, FINAL, args.timeout)))
    elif args.cmd == "requests":
        print(json.dumps(concurrent_requests(args.count, args.path, args.timeout)))
    elif args.cmd == "cancel-open":
        cancel_open(args.timeout)
    elif args.cmd == "load":
        run_load(args)
    elif args.cmd == "field":
        load_field(args)
    elif args.cmd == "timespan-ms":
        print(timespan_ms(args.text))
    elif args.cmd == "describe-load":
        print(describe_load(json.loads(Path(args.file).read_text())))
    elif args.cmd == "table":
        table(args)
    elif args.cmd == "journal-audit":
        journal_audit(args)
    elif args.cmd == "structured-fields":
        structured_fields(args)


if __name__ == "__main__":
    main()
