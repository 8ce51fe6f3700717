"""The dashboard in a real browser (issue 12): headless chromium through chromedriver and
selenium, all from Debian, against target/debug/shiftd serving a scratch SQLite.

Each scenario prints one line (PASS/FAIL, name, seconds); the exit status is 0 only when all
passed. Every wait is a condition with a timeout (WebDriverWait, or `until` for things
outside the page); a failed one prints the page's source tail and shiftd's log tail.
Nothing outlives the suite: this process is a child subreaper, so shiftd's jobs and the
browser's helpers are reparented here if their parent dies, and all are killed at exit.
"""

import ctypes
import hashlib
import hmac
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BINARY = os.environ.get("BROWSER_SHIFTD") or os.path.join(ROOT, "target", "debug", "shiftd")
SHOTS = os.path.join(ROOT, "target", "browser-shots")
README_SHOT = os.path.join(ROOT, "docs", "screenshots", "overview.png")

ADMIN = ("admin", "admin-secret-0123456789abcdef")
LIMITED = ("limited", "limited-secret-0123456789abcdef")

# Sent on every /ui response (the dashboard's design); checked on a page and on the login.
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

# `slow` prints one line per 0.2 s, naming its process so that a re-run's lines are told
# apart; a stop requeues it, so a restart ends it at once and it runs again.
SLOW_SCRIPT = 'i=1; while [ $i -le "$0" ]; do echo "line $i of $0 (pid $$)"; i=$((i+1)); sleep 0.2; done'


# Markup in a job's output and a task's command: it must show as text, never as markup.
MARKUP = '<b id="injected">not bold</b>'

# Rules that need care in the browser: alternation, escapes, \\d (Unicode digits in Rust),
# a dash in a class (an error unescaped under the `v` flag the browser compiles with).
DEPLOY_PARAMS = {"env": "^(prod|staging)$", "version": r"^v\d+\.\d+(-[a-z0-9.-]+)?$"}


def toml_str(text):
    return json.dumps(text)


def config(port, tokens=True, limited_secret=LIMITED[1]):
    """The scratch configuration: five tasks, two tokens (or none: read-only)."""
    auth = ""
    if tokens:
        auth = f"""
[[auth.tokens]]
name = "{ADMIN[0]}"
secret = "{ADMIN[1]}"
tasks = ["*"]

[[auth.tokens]]
name = "{LIMITED[0]}"
secret = "{limited_secret}"
tasks = ["hello"]
"""
    return f"""
[http]
listen = "127.0.0.1:{port}"

[log]
level = "info"

[shutdown]
# Short, so that a restart cuts the `long` job: the overview then shows cut work in red.
jobs_drain = "1s"

[jobs]
workers = 8
poll_interval = "200ms"
log_flush_interval = "100ms"
{auth}
[tasks.hello]
command = ["/bin/echo", "hello from shiftd"]

[tasks.greet]
command = ["/bin/echo", "hello", "{{name}}"]
params = {{ name = "^[a-z]{{1,20}}$" }}

[tasks.slow]
command = ["/bin/sh", "-c", {json.dumps(SLOW_SCRIPT)}, "{{n}}"]
params = {{ n = "^[0-9]{{1,3}}$" }}
concurrency = 4
on_shutdown = "requeue"
kill_grace = "1s"

# Outlives jobs_drain: a stop waits 1 s for it, then cuts it (exit 75).
[tasks.long]
command = ["/bin/sleep", "60"]
on_shutdown = "finish"
kill_grace = "1s"

[tasks.markup]
command = ["/bin/sh", "-c", {toml_str("sleep 1; echo '" + MARKUP + "'")}]

[tasks.deploy]
command = ["/bin/echo", "deploying", "{{version}}", "to", "{{env}}"]
params = {{ env = {toml_str(DEPLOY_PARAMS["env"])}, version = {toml_str(DEPLOY_PARAMS["version"])} }}
"""


class Failure(Exception):
    pass


def until(desc, cond, timeout=10.0, every=0.05):
    """Polls `cond` until it returns something true; fails naming `desc` after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except (NoSuchElementException, StaleElementReferenceException, OSError) as e:
            last = e
        if time.monotonic() > deadline:
            extra = f" (last error: {last})" if last else ""
            raise Failure(f"timed out after {timeout:g}s waiting for {desc}{extra}")
        time.sleep(every)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Shiftd:
    """One shiftd on a fixed port and work directory, started and stopped as a service is."""

    def __init__(self, name, tokens=True):
        self.dir = tempfile.mkdtemp(prefix=f"shiftd-browser-{name}-")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(self.dir, "shiftd.log")
        self.proc = None
        self.exits = []
        self.write_config(tokens=tokens)

    def write_config(self, **kwargs):
        with open(os.path.join(self.dir, "shiftd.toml"), "w") as f:
            f.write(config(self.port, **kwargs))

    def start(self):
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [BINARY, "--config", "shiftd.toml"],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Only the scratch configuration counts, not overrides from the caller's shell.
            env={k: v for k, v in os.environ.items() if not k.startswith("SHIFTD_")},
        )
        log.close()
        until(f"{self.base}/readyz to answer 200", lambda: self.ready(), timeout=30)

    def ready(self):
        if self.proc.poll() is not None:
            raise Failure(f"shiftd exited with {self.proc.returncode} while starting")
        try:
            return http_request("GET", self.base + "/readyz")[0] == 200
        except OSError:
            return False

    def signal_stop(self):
        self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout=30):
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failure(f"shiftd did not exit within {timeout}s of SIGTERM")
        self.exits.append(code)
        # 0: clean; 75: a stage cut work (a requeued job is not cut work, but say it).
        if code not in (0, 75):
            raise Failure(f"shiftd exited with {code} after SIGTERM")
        return code

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.signal_stop()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError as e:
            return f"(no log: {e})"

    def api(self, method, path, body=None, token=ADMIN):
        headers = {"Authorization": f"Bearer {token[1]}"} if token else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        status, _, text = http_request(method, self.base + path, data, headers)
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def start_job(self, task, params=None, token=ADMIN):
        status, job = self.api("POST", f"/v1/tasks/{task}/jobs", {"params": params or {}}, token)
        if status != 202:
            raise Failure(f"starting a {task} job over the API answered {status}: {job}")
        return job["id"]

    def job(self, job_id):
        status, job = self.api("GET", f"/v1/jobs/{job_id}")
        if status != 200:
            raise Failure(f"GET /v1/jobs/{job_id} answered {status}: {job}")
        return job

    def jobs(self, task):
        status, page = self.api("GET", f"/v1/jobs?task={task}&limit=100")
        if status != 200:
            raise Failure(f"listing {task} jobs answered {status}: {page}")
        return page["jobs"]

    def task_paused(self, task):
        _, tasks = self.api("GET", "/v1/tasks")
        items = tasks["tasks"] if isinstance(tasks, dict) else tasks
        return next(t for t in items if t["name"] == task)["paused"]

    def log_lines(self, job_id):
        status, _, text = http_request(
            "GET",
            f"{self.base}/v1/jobs/{job_id}/log",
            headers={"Authorization": f"Bearer {ADMIN[1]}"},
        )
        if status != 200:
            raise Failure(f"GET /v1/jobs/{job_id}/log answered {status}")
        return text.splitlines()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def http_request(method, url, data=None, headers=None):
    """(status, headers, body text); never follows redirects, never raises for a status."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with OPENER.open(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode(errors="replace")


class Suite:
    def __init__(self):
        self.shiftd = Shiftd("main")
        self.driver = None
        self.ids = {}
        self.shots = []

    # ---- the browser

    def open_browser(self):
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in (
            "--headless=new",
            "--window-size=1280,900",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
        ):
            options.add_argument(arg)
        if os.geteuid() == 0:
            options.add_argument("--no-sandbox")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        log = open(os.path.join(self.shiftd.dir, "chromedriver.log"), "w")
        self.driver = webdriver.Chrome(
            service=Service("/usr/bin/chromedriver", log_output=log),
            options=options,
        )
        # The window is 1280x900; so is the page's viewport, and so the screenshots.
        self.viewport(900)
        self.driver.set_page_load_timeout(15)
        self.driver.set_script_timeout(10)

    def get(self, path):
        self.driver.get(self.shiftd.base + path)

    def wait(self, desc, cond, timeout=10):
        """A condition on the page, re-checked on every poll until it holds."""
        try:
            return WebDriverWait(
                self.driver,
                timeout,
                poll_frequency=0.05,
                ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
            ).until(lambda _: cond())
        except TimeoutException:
            raise Failure(f"timed out after {timeout}s waiting for {desc}") from None

    def css(self, selector):
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector):
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def present(self, selector):
        return len(self.all(selector)) > 0

    def text(self, selector):
        return self.css(selector).text.strip()

    def page(self):
        return self.css("body").get_attribute("data-page")

    def wait_page(self, name, timeout=10):
        self.wait(f'<body data-page="{name}"> (at {self.driver.current_url})', lambda: self.page() == name, timeout)

    def mark(self):
        """Marks the document: a reload or navigation drops the mark."""
        self.driver.execute_script("window.__shiftdMark = 'kept';")

    def marked(self):
        return self.driver.execute_script("return window.__shiftdMark === 'kept';")

    def seqs(self):
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#log span.line'))"
            ".map(s => Number(s.getAttribute('data-seq')));"
        )

    def log_texts(self):
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#log span.line'))"
            ".map(s => s.textContent.replace(/\\n$/, ''));"
        )

    def fetch(self, method, path, form=None):
        """A request from the page itself (its cookies, same origin): (status, final url)."""
        return self.driver.execute_async_script(
            """
            const [method, url, form, done] = arguments;
            const init = {method, credentials: 'same-origin', redirect: 'manual'};
            if (form !== null) init.body = new URLSearchParams(form);
            fetch(url, init).then(r => done([r.status, r.type]), e => done([-1, String(e)]));
            """,
            method,
            path,
            form,
        )

    def csrf(self):
        return self.css("input[name=csrf]").get_attribute("value")

    def session_cookie(self):
        return self.driver.get_cookie("shiftd_session")

    def shot(self, name):
        """The whole page, 1280 wide, however long it is."""
        os.makedirs(SHOTS, exist_ok=True)
        path = os.path.join(SHOTS, f"{name}.png")
        height = self.driver.execute_script(
            "return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight);")
        self.viewport(max(900, min(int(height), 4000)))
        try:
            self.driver.save_screenshot(path)
        finally:
            self.viewport(900)
        self.shots.append(path)

    def viewport(self, height):
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def submit(self, selector):
        """Clicks the submit button of a form, accepting a confirm() if the page asks one,
        and waits until the browser has left the page: every form here posts and is answered
        with another document. Without that wait a check meant for the next page can read
        the old one (a cancel's answer has the same data-page) as it is torn down, and
        Chrome then fails the read ("Node with given id does not belong to the document")."""
        form = self.css(selector)
        buttons = form.find_elements(By.CSS_SELECTOR, "button, input[type=submit]")
        if not buttons:
            raise Failure(f"{selector} has no submit button")
        self.mark()
        buttons[0].click()
        try:
            self.driver.switch_to.alert.accept()
        except NoAlertPresentException:
            pass
        self.wait(f"a new document after submitting {selector}", self.left_page)

    def left_page(self):
        """True once the document marked by `mark` is gone; False while it is still there or
        the browser is between documents."""
        try:
            return not self.marked()
        except WebDriverException:
            return False

    def check_frame(self, page, logged_in=True):
        """What every page has: its data-page, the nav links and (signed in) the logout form."""
        self.wait_page(page)
        for nav in ("#nav-overview", "#nav-jobs", "#nav-tasks"):
            if not self.present(nav):
                raise Failure(f"the {page} page has no {nav}")
        if logged_in and not self.present("#logout button, #logout [type=submit]"):
            raise Failure(f"the {page} page has no #logout form with a button")

    def console_problems(self):
        """The page's console errors that mean a broken page: a CSP refusal, a script error."""
        try:
            entries = self.driver.get_log("browser")
        except WebDriverException:
            return []
        bad = []
        for e in entries:
            msg = e.get("message", "")
            if any(m in msg for m in ("Content Security Policy", "Uncaught", "not a valid regular expression")):
                bad.append(msg)
        return bad

    def login(self, token):
        self.get("/ui/login")
        self.wait_page("login")
        field = self.css("#login input#token")
        if field.get_attribute("type") != "password" or field.get_attribute("name") != "token":
            raise Failure('the login field is not <input name="token" type="password">')
        field.clear()
        field.send_keys(token[1])
        self.css("#login-submit").click()
        self.wait_page("overview")

    def logout(self):
        self.submit("#logout")
        self.wait_page("login")

    # ---- the scenarios, in the order they run (later ones use what earlier ones made)

    def s_login(self):
        """/ui/ sends to the login; a wrong token is refused there; the right one signs in
        with an HttpOnly, SameSite=Strict cookie; pages carry the strict headers."""
        self.get("/ui/")
        self.wait_page("login")
        self.check_frame("login", logged_in=False)
        self.shot("login")
        self.css("#token").send_keys("not-a-token-of-this-service")
        self.css("#login-submit").click()
        self.wait("#login-error after a wrong token", lambda: self.present("#login-error"))
        if self.page() != "login":
            raise Failure("a wrong token did not leave the browser on the login page")
        if "not valid" not in self.text("#login-error"):
            raise Failure(f"#login-error says {self.text('#login-error')!r}")
        if self.session_cookie():
            raise Failure("a wrong token got a session cookie")
        self.login(ADMIN)
        self.check_frame("overview")
        cookie = self.session_cookie()
        if not cookie:
            raise Failure("no shiftd_session cookie after signing in")
        problems = []
        if not cookie.get("httpOnly"):
            problems.append("not HttpOnly")
        if cookie.get("sameSite") != "Strict":
            problems.append(f"SameSite={cookie.get('sameSite')}")
        if cookie.get("path") != "/ui":
            problems.append(f"Path={cookie.get('path')}")
        if not cookie["value"].startswith(f"v1.{ADMIN[0]}."):
            problems.append(f"value {cookie['value']!r} is not v1.<name>.<expiry>.<mac>")
        if ADMIN[1] in cookie["value"]:
            problems.append("the cookie holds the secret")
        if problems:
            raise Failure("session cookie: " + ", ".join(problems))
        self.cookie = cookie["value"]
        for path, cookie_header in (("/ui/login", None), ("/ui/", f"shiftd_session={self.cookie}")):
            status, headers, _ = http_request(
                "GET", self.shiftd.base + path, headers={"Cookie": cookie_header} if cookie_header else {}
            )
            if status != 200:
                raise Failure(f"GET {path} answered {status}")
            for name, want in UI_HEADERS.items():
                if headers.get(name) != want:
                    raise Failure(f"GET {path}: {name} is {headers.get(name)!r}, not {want!r}")
            if "no-store" not in (headers.get("Cache-Control") or ""):
                raise Failure(f"GET {path}: Cache-Control is {headers.get('Cache-Control')!r}")
        self.check_forged_cookies()
        self.check_login_answers()

    def check_login_answers(self):
        """A wrong token is a 401 with the form again; a right one a cookie, with Secure
        only when a TLS proxy says so (X-Forwarded-Proto: https)."""
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        status, headers, body = http_request("POST", self.shiftd.base + "/ui/login", b"token=wrong-token-0123456789", form)
        if status != 401 or "that token is not valid" not in body or headers.get("Set-Cookie"):
            raise Failure(f"a wrong token at the login answered {status} (cookie: {headers.get('Set-Cookie')!r})")
        body = urllib.parse.urlencode({"token": ADMIN[1]}).encode()
        for proxied, secure in (({}, False), ({"X-Forwarded-Proto": "https"}, True)):
            status, headers, _ = http_request("POST", self.shiftd.base + "/ui/login", body, {**form, **proxied})
            cookie = headers.get("Set-Cookie") or ""
            if not (300 <= status < 400) or "shiftd_session=" not in cookie:
                raise Failure(f"a right token at the login answered {status} with cookie {cookie!r}")
            flags = [f.strip().lower() for f in cookie.split(";")[1:]]
            if ("secure" in flags) != secure:
                raise Failure(f"Set-Cookie {cookie!r} {'lacks' if secure else 'has'} Secure with {proxied or 'no proxy header'}")
            if "max-age=43200" not in flags:
                raise Failure(f"Set-Cookie {cookie!r} does not last the default 12h")

    def check_forged_cookies(self):
        """The cookie is checked, not trusted: one minted as the design says works, an
        expired one, another token's name on it, or a changed MAC does not."""
        now = int(time.time())
        good = session_cookie(ADMIN, now + 600)
        cases = [
            ("minted like the server's", good, True),
            ("expired", session_cookie(ADMIN, now - 5), False),
            ("another token's name", good.replace(f"v1.{ADMIN[0]}.", f"v1.{LIMITED[0]}."), False),
            ("a changed MAC", good[:-1] + ("0" if good[-1] != "0" else "1"), False),
            ("a later expiry", good.replace(f".{now + 600}.", f".{now + 6000}."), False),
        ]
        for what, value, valid in cases:
            status, headers, _ = http_request("GET", self.shiftd.base + "/ui/jobs",
                                              headers={"Cookie": f"shiftd_session={value}"})
            if valid and status != 200:
                raise Failure(f"a session cookie {what} answered {status}, not 200")
            if not valid and not (300 <= status < 400 and "/ui/login" in (headers.get("Location") or "")):
                raise Failure(f"a session cookie with {what} answered {status}, not a redirect to the login")

    def s_overview(self):
        """The overview's parts are there and the chart is the server's SVG."""
        self.get("/ui/")
        self.check_frame("overview")
        state = self.text("#state")
        if state != "ready":
            raise Failure(f"#state says {state!r}, not ready")
        for part in ("#version", "#uptime", "#in-flight", "#db-size", "#queue", "#paused", "#stops"):
            if not self.present(part):
                raise Failure(f"the overview has no {part}")
        if not self.present("svg#finished-chart"):
            raise Failure("the overview has no <svg id=finished-chart>")
        for task in ("hello", "greet", "slow"):
            if not self.present(f'#queue tr[data-task="{task}"] td.queued'):
                raise Failure(f'#queue has no row tr[data-task="{task}"] with td.queued')
        # Replaced by the one after a restart (with its stop) when that scenario gets there.
        self.shot("overview")

    def s_job_appears(self):
        """A job started over the API shows up in the open jobs list, and reaches its final
        state there, without a reload."""
        self.get("/ui/jobs")
        self.check_frame("jobs")
        for sel in ("#filters select[name=task]", "#filters select[name=state]", "#jobs tbody#job-rows"):
            if not self.present(sel):
                raise Failure(f"the jobs page has no {sel}")
        self.mark()
        job_id = self.shiftd.start_job("hello")
        self.ids["hello"] = job_id
        row = f'#job-rows tr.job[data-id="{job_id}"]'
        self.wait(f"job {job_id} to appear in the list", lambda: self.present(row), timeout=10)
        self.wait(
            f"job {job_id}'s row to say succeeded",
            lambda: self.css(row).get_attribute("data-state") == "succeeded",
            timeout=10,
        )
        if not self.marked():
            raise Failure("the jobs page was reloaded to show the new job")
        link = self.css(f"{row} a.job-link").get_attribute("href")
        if not link.endswith(f"/ui/jobs/{job_id}"):
            raise Failure(f"the row's a.job-link goes to {link}")
        self.shot("jobs")
        # The filters: the state filter leaves the succeeded job out of "running".
        self.get("/ui/jobs?task=hello&state=running")
        self.wait_page("jobs")
        if self.present(row):
            raise Failure("state=running still lists a succeeded job")

    def s_paging(self):
        """The jobs list pages by cursor: 50 a page, newest first, the next page older,
        nothing twice and nothing missing."""
        status, body = self.shiftd.api("POST", "/v1/tasks/hello/jobs:batch", {"jobs": [{"params": {}}] * 60})
        if status != 202:
            raise Failure(f"the batch start answered {status}: {body}")
        want = {j["id"] for j in self.shiftd.jobs("hello")}
        self.get("/ui/jobs?task=hello")
        self.wait_page("jobs")
        pages = []
        while True:
            ids = [int(r.get_attribute("data-id")) for r in self.all("#job-rows tr.job")]
            if ids != sorted(ids, reverse=True):
                raise Failure(f"a page is not newest first: {compact(ids)}")
            pages.append(ids)
            if not self.present("#next-page") or len(pages) > 5:
                break
            self.css("#next-page").click()
            self.wait(f"page {len(pages) + 1}", lambda: self.driver.current_url.find("before=") > 0 and self.page() == "jobs")
        seen = [i for page in pages for i in page]
        if len(seen) != len(set(seen)) or set(seen) != want:
            raise Failure(f"the pages show {len(seen)} rows ({len(set(seen))} distinct) of {len(want)} hello jobs; "
                          f"sizes {[len(p) for p in pages]}")
        if len(pages[0]) != 50:
            raise Failure(f"the first page has {len(pages[0])} rows, not 50")
        self.shot("jobs-older-page")

    def s_escaping(self):
        """Markup in a job's output (streamed, then rendered), a task's command and a flash
        message shows as text."""
        job_id = self.shiftd.start_job("markup")
        self.get(f"/ui/jobs/{job_id}")
        self.wait_page("job")
        self.wait("the markup line, streamed", lambda: MARKUP in self.log_texts(), timeout=10)
        self.no_injection("a streamed line")
        self.wait("#stream-status ended", lambda: self.text("#stream-status") == "ended", timeout=10)
        self.driver.refresh()
        self.wait_page("job")
        if MARKUP not in self.log_texts():
            raise Failure("the rendered log does not show the markup line as text")
        self.no_injection("a rendered line")
        self.get("/ui/tasks?msg=" + urllib.parse.quote(MARKUP))
        self.wait_page("tasks")
        if MARKUP not in self.text("#flash"):
            raise Failure(f"#flash says {self.text('#flash')!r}")
        if MARKUP not in self.text(f"{self.task_row('markup')} td.command"):
            raise Failure("the markup task's command is not shown as text")
        self.no_injection("the tasks page")

    def no_injection(self, where):
        if self.present("#injected"):
            raise Failure(f"markup in {where} became an element")

    def s_log_live(self):
        """A running job's page shows its lines as they are written, then its end."""
        job_id = self.shiftd.start_job("slow", {"n": "25"})
        self.ids["slow_live"] = job_id
        self.get(f"/ui/jobs/{job_id}")
        self.check_frame("job")
        self.mark()
        self.wait("#stream-status live", lambda: self.text("#stream-status") == "live")
        self.wait("the first lines", lambda: len(self.seqs()) >= 2, timeout=10)
        seen = len(self.seqs())
        self.wait(
            "more lines arriving while the page stays open",
            lambda: len(self.seqs()) >= seen + 3 and self.text("#job-state") == "running",
            timeout=10,
        )
        self.shot("job")
        self.wait("#stream-status ended", lambda: self.text("#stream-status") == "ended", timeout=15)
        self.wait("#job-state succeeded", lambda: self.text("#job-state") == "succeeded", timeout=5)
        if not self.marked():
            raise Failure("the job page was reloaded")
        self.check_log(job_id, expect_lines=25)
        for sel, want in (("#job-task", "slow"), ("#job-exit", "0")):
            if want not in self.text(sel):
                raise Failure(f"{sel} says {self.text(sel)!r}, expected {want!r} in it")
        if self.present("#cancel"):
            raise Failure("a succeeded job's page offers #cancel")

    def check_log(self, job_id, expect_lines=None):
        """The page's lines are exactly the job's log: seq 1..N, no duplicate, no gap."""
        seqs = self.seqs()
        if seqs != list(range(1, len(seqs) + 1)):
            raise Failure(f"data-seq is not 1..N in order: {compact(seqs)}")
        server = self.shiftd.log_lines(job_id)
        shown = self.log_texts()
        if shown != server:
            raise Failure(f"the page shows {len(shown)} lines, the log has {len(server)}: "
                          f"first difference at {first_difference(shown, server)}")
        if expect_lines is not None:
            own = [t.split(" (pid")[0] for t in server if pid_of(t)]
            want = [f"line {i} of {expect_lines}" for i in range(1, expect_lines + 1)]
            if own != want:
                raise Failure(f"the job's own lines are {compact(own)}, not line 1..{expect_lines}")

    def s_cancel(self):
        """The cancel form stops a running job; the page shows it cancelled."""
        job_id = self.shiftd.start_job("slow", {"n": "500"})
        self.get(f"/ui/jobs/{job_id}")
        self.check_frame("job")
        self.wait("the job to run (#job-state running)", lambda: self.text("#job-state") == "running", timeout=10)
        self.wait("#cancel", lambda: self.present("#cancel"))
        self.submit("#cancel")
        self.wait_page("job")
        self.wait("#flash after cancelling", lambda: self.present("#flash"))
        self.wait("#job-state cancelled", lambda: self.text("#job-state") == "cancelled", timeout=10)
        until("the API to say cancelled", lambda: self.shiftd.job(job_id)["state"] == "cancelled")
        self.driver.refresh()
        self.wait_page("job")
        if self.present("#cancel"):
            raise Failure("a cancelled job's page still offers #cancel")

    def task_row(self, task):
        return f'#tasks tr.task[data-task="{task}"]'

    def s_pause_resume(self):
        """Pause holds a task's new job queued; resume lets it run; the page and the API agree."""
        self.get("/ui/tasks")
        self.check_frame("tasks")
        row = self.task_row("greet")
        if self.text(f"{row} td.paused") != "no":
            raise Failure(f"greet's td.paused says {self.text(row + ' td.paused')!r} before pausing")
        if not self.present(f"{row} td.next-run"):
            raise Failure("the greet row has no td.next-run")
        self.submit(f"{row} form.pause")
        self.wait_page("tasks")
        self.wait("#flash after pausing", lambda: self.present("#flash"))
        self.wait("greet's td.paused yes", lambda: self.text(f"{row} td.paused") == "yes")
        if not self.shiftd.task_paused("greet"):
            raise Failure("the API does not say greet is paused")
        if not self.present(f"{row} form.resume") or self.present(f"{row} form.pause"):
            raise Failure("a paused task's row should offer form.resume and not form.pause")
        self.shot("tasks-paused")
        job_id = self.shiftd.start_job("greet", {"name": "paused"})
        # Claims run every 200 ms: a job that stays queued over several of them is held.
        polls = []

        def held():
            state = self.shiftd.job(job_id)["state"]
            if state != "queued":
                raise Failure(f"a job of a paused task went {state}")
            polls.append(state)
            return len(polls) >= 10  # 10 polls 50 ms apart: 2.5 claim rounds

        until("greet's job to stay queued while paused", held, timeout=5)
        self.submit(f"{row} form.resume")
        self.wait_page("tasks")
        self.wait("greet's td.paused no", lambda: self.text(f"{row} td.paused") == "no")
        if self.shiftd.task_paused("greet"):
            raise Failure("the API still says greet is paused")
        until("the held job to run after resume", lambda: self.shiftd.job(job_id)["state"] == "succeeded")

    def s_start_form(self):
        """The start form shows the parameter's rule, refuses a bad value in the browser, and
        a good value starts one job."""
        self.get("/ui/tasks")
        self.check_frame("tasks")
        form = 'form.start[data-task="greet"]'
        field = f'{form} input[name="param.name"]'
        if not self.present(field):
            raise Failure(f"no {field}")
        pattern = self.css(field).get_attribute("pattern") or ""
        title = self.css(field).get_attribute("title") or ""
        if "[a-z]{1,20}" not in pattern:
            raise Failure(f"the field's pattern is {pattern!r}")
        if "[a-z]{1,20}" not in title:
            raise Failure(f"the field's title (the rule shown) is {title!r}")
        self.shot("tasks")
        before = {j["id"] for j in self.shiftd.jobs("greet")}
        self.mark()
        self.css(field).send_keys("Not Valid; rm -rf /")
        if not self.driver.execute_script("return arguments[0].matches(':invalid')", self.css(field)):
            raise Failure("a value against the rule is not :invalid in the browser")
        self.shot("start-invalid")
        self.css(f"{form} button.start-job").click()
        if not self.marked() or self.page() != "tasks":
            raise Failure("the browser submitted a value against the rule")
        self.css(field).clear()
        self.css(field).send_keys("march")
        if not self.driver.execute_script("return arguments[0].matches(':valid')", self.css(field)):
            raise Failure("a value of the rule is not :valid in the browser")
        self.css(f"{form} button.start-job").click()
        self.wait("#flash after starting", lambda: self.present("#flash") and not self.marked())
        new = [j for j in self.shiftd.jobs("greet") if j["id"] not in before]
        if len(new) != 1 or new[0]["params"] != {"name": "march"}:
            raise Failure(f"the form started {[(j['id'], j['params']) for j in new]}, not one job with name=march")
        self.ids["greet"] = new[0]["id"]
        # Past the browser, the server checks too: a forged value is a refusal, no job.
        self.fetch("POST", "/ui/tasks/greet/start", {"csrf": self.csrf(), "param.name": "BAD VALUE"})
        if len(self.shiftd.jobs("greet")) != len(before) + 1:
            raise Failure("the server started a job with a value against the rule")
        self.browser_agrees_with_server()

    def browser_agrees_with_server(self):
        """For rules that need care (alternation, escapes, Unicode digits, a dash in a
        class), the browser's verdict on each value is the server's."""
        values = {
            "version": ["v1.2", "v10.20-rc.1", "v1.2--", "v\u0661.\u0662".encode().decode("unicode_escape"),
                        "v1.2-RC1", "1.2", "v1.2-", "v1x2", "v1.2 "],
            "env": ["prod", "staging", "production", "prod|staging", "Prod"],
        }
        good = {"version": "v1.0", "env": "prod"}
        form = 'form.start[data-task="deploy"]'
        disagree = []
        for name, tries in values.items():
            field = self.css(f'{form} input[name="param.{name}"]')
            if not field.get_attribute("pattern"):
                raise Failure(f"deploy's {name} ({DEPLOY_PARAMS[name]}) has no pattern in the browser")
            for value in tries:
                browser = self.driver.execute_script(
                    "arguments[0].value = arguments[1]; return arguments[0].validity.valid;", field, value)
                status, _ = self.shiftd.api("POST", "/v1/tasks/deploy/jobs", {"params": {**good, name: value}})
                if status not in (202, 422):
                    raise Failure(f"the API answered {status} for deploy {name}={value!r}")
                if browser != (status == 202):
                    disagree.append(f"{name}={value!r}: browser {'takes' if browser else 'refuses'}, "
                                    f"server {'takes' if status == 202 else 'refuses'}")
        if disagree:
            raise Failure("the browser's check is not the server's: " + "; ".join(disagree))

    def s_csrf(self):
        """State-changing requests without the session's CSRF token are refused: from the
        page itself, with the cookie from outside the browser, and a cross-site form."""
        self.get("/ui/tasks")
        self.check_frame("tasks")
        good = self.csrf()
        for form in ({}, {"csrf": ""}, {"csrf": "0" * len(good)}):
            status, _ = self.fetch("POST", "/ui/tasks/hello/pause", form)
            if status != 403:
                raise Failure(f"a same-origin POST with {form or 'no csrf'} answered {status}, not 403")
        cookie = {"Cookie": f"shiftd_session={self.cookie}",
                  "Content-Type": "application/x-www-form-urlencoded"}
        for body in (b"", b"csrf=forged"):
            status, _, _ = http_request("POST", self.shiftd.base + "/ui/tasks/hello/pause", body, cookie)
            if status != 403:
                raise Failure(f"a POST with the cookie and body {body!r} answered {status}, not 403")
        job_id = self.shiftd.start_job("slow", {"n": "500"})
        status, _, _ = http_request("POST", f"{self.shiftd.base}/ui/jobs/{job_id}/cancel", b"", cookie)
        if status != 403:
            raise Failure(f"a cancel without csrf answered {status}, not 403")
        self.cross_site_form()
        if self.shiftd.task_paused("hello"):
            raise Failure("a refused request paused hello")
        if self.shiftd.job(job_id)["state"] in ("cancelled",):
            raise Failure("a refused request cancelled a job")
        self.shiftd.api("POST", f"/v1/jobs/{job_id}/cancel")

    def cross_site_form(self):
        """A page of another site (localhost, not 127.0.0.1) posts a form to the dashboard:
        the browser does not send the Strict cookie, and the form has no token anyway."""
        action = f"{self.shiftd.base}/ui/tasks/hello/pause"
        html = (f'<!doctype html><body><form id="f" method="post" action="{action}">'
                f'<input name="x" value="1"></form></body>').encode()

        class Forger(http.server.BaseHTTPRequestHandler):
            # The browser may open a connection it never uses (a preconnect): it must hold
            # neither the page nor the shutdown below.
            timeout = 5

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(html)

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forger)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            self.driver.get(f"http://localhost:{server.server_address[1]}/forge")
            self.css("#f").submit()
            self.wait("the forged form's answer", lambda: self.driver.current_url.startswith(self.shiftd.base))
        finally:
            server.shutdown()
            server.server_close()

    def s_restart(self):
        """A job page open across a restart: the stream says reconnecting, then live at the
        next process, and shows the re-run's lines after the last one shown, none twice."""
        job_id = self.shiftd.start_job("slow", {"n": "30"})
        self.get(f"/ui/jobs/{job_id}")
        self.check_frame("job")
        self.mark()
        self.wait("#stream-status live", lambda: self.text("#stream-status") == "live")
        self.wait("a few lines before the stop",
                  lambda: len([t for t in self.log_texts() if pid_of(t)]) >= 3, timeout=10)
        self.shiftd.signal_stop()
        self.wait("#stream-status reconnecting during the stop",
                  lambda: self.text("#stream-status") == "reconnecting", timeout=15)
        self.shiftd.wait_exit()
        before = self.log_texts()
        first_pid = next(p for p in map(pid_of, before) if p)
        self.shiftd.start()
        self.wait("#stream-status live again at the next process",
                  lambda: self.text("#stream-status") == "live", timeout=20)
        self.wait("a line of the re-run (another pid)",
                  lambda: any(pid_of(t) not in (None, first_pid) for t in self.log_texts()), timeout=20)
        seqs = self.seqs()
        if seqs != list(range(1, len(seqs) + 1)):
            raise Failure(f"after the restart data-seq is not 1..N: {compact(seqs)}")
        self.wait("#stream-status ended", lambda: self.text("#stream-status") == "ended", timeout=20)
        if not self.marked():
            raise Failure("the job page was reloaded across the restart")
        self.check_log(job_id)
        runs = {pid_of(t) for t in self.log_texts()} - {None}
        if len(runs) < 2:
            raise Failure(f"the log shows {len(runs)} run(s), expected the requeued run and the re-run")
        self.shot("job-after-restart")

    def s_stop_shown(self):
        """An overview left open across a restart shows it by itself: the new stop in the
        last stops, its stages each with a bar against its budget."""
        long_job = self.shiftd.start_job("long")
        until("the long job to run", lambda: self.shiftd.job(long_job)["state"] == "running")
        self.get("/ui/")
        self.check_frame("overview")
        before = len(self.all("#stops section.stop"))
        self.mark()
        self.shiftd.signal_stop()
        if self.shiftd.wait_exit() != 75:
            raise Failure(f"a stop that cut the long job exited {self.shiftd.exits[-1]}, not 75")
        self.shiftd.start()
        self.wait("the new stop in #stops without a reload",
                  lambda: len(self.all("#stops section.stop")) > before, timeout=20)
        if not self.marked():
            raise Failure("the overview was reloaded (it should follow by itself)")
        self.shiftd.api("POST", f"/v1/jobs/{long_job}/cancel")
        cut = self.all('#stops section.stop div.stage[data-stage="jobs"] div.bar.cut')
        if not cut:
            raise Failure("the stop that cut the long job shows no cut jobs stage (div.bar.cut)")
        raise_text = self.text('#stops section.stop div.stage[data-stage="jobs"] .raise')
        if "shutdown.jobs_drain" not in raise_text:
            raise Failure(f"the cut stage says {raise_text!r}, not the setting shutdown.jobs_drain")
        self.check_bars()
        stages = self.all("#stops section.stop div.stage[data-stage]")
        if not stages:
            raise Failure("the stop in #stops has no div.stage[data-stage]")
        for stage in stages:
            if not stage.find_elements(By.CSS_SELECTOR, "div.bar"):
                raise Failure(f"stage {stage.get_attribute('data-stage')} has no div.bar")
        self.shot("overview")

    def check_bars(self):
        """Each stage's bar is as long as its time against its budget says."""
        for stage in self.all("#stops div.stage[data-stage]"):
            name = stage.get_attribute("data-stage")
            bar = stage.find_element(By.CSS_SELECTOR, "div.bar")
            width = float(bar.get_attribute("data-width") or 0)
            m = re.search(r"(\d+(?:\.\d+)?)(ms|s) / (\d+(?:\.\d+)?)(ms|s)", stage.text)
            if not m:
                if width:
                    raise Failure(f"stage {name} shows no budget ({stage.text!r}) but a bar of {width}%")
                continue
            took = float(m[1]) * (1 if m[2] == "ms" else 1000)
            budget = float(m[3]) * (1 if m[4] == "ms" else 1000)
            want = min(100.0, took * 100 / budget) if budget else 0.0
            if abs(width - want) > 2:
                raise Failure(f"stage {name}: {stage.text!r} but a bar of {width}%")

    def s_limited(self):
        """A token for `hello` only sees hello's jobs and task, and cannot act on others."""
        self.get("/ui/")
        self.logout()
        if self.session_cookie():
            raise Failure("the session cookie outlived the logout")
        status, _, _ = http_request("GET", self.shiftd.base + "/ui/jobs")
        if status not in (302, 303, 401):
            raise Failure(f"/ui/jobs without a session answered {status}")
        self.login(LIMITED)
        self.get("/ui/jobs")
        self.check_frame("jobs")
        hello = {str(j["id"]) for j in self.shiftd.jobs("hello")}
        shown = {r.get_attribute("data-id") for r in self.all("#job-rows tr.job")}
        if not shown:
            raise Failure("the limited token sees no job at all")
        if shown - hello:
            raise Failure(f"the limited token sees jobs of other tasks: {sorted(shown - hello)}")
        options = {o.get_attribute("value") for o in self.all("#filters select[name=task] option")}
        if options - {"", "hello"}:
            raise Failure(f"the task filter offers other tasks: {sorted(options - {'', 'hello'})}")
        self.shot("jobs-limited")
        for other in ("slow_live", "greet"):
            for path in (f"/ui/jobs/{self.ids[other]}", f"/ui/jobs/{self.ids[other]}/events"):
                status, _ = self.fetch("GET", path, None)
                if status != 404:
                    raise Failure(f"the limited token's GET {path} ({other}) answered {status}, not 404")
        self.get("/ui/tasks")
        self.check_frame("tasks")
        tasks = {r.get_attribute("data-task") for r in self.all("#tasks tr.task")}
        if tasks != {"hello"}:
            raise Failure(f"the limited token's tasks page lists {sorted(tasks)}")
        status, _ = self.fetch("POST", "/ui/tasks/slow/pause", {"csrf": self.csrf()})
        if status not in (403, 404):
            raise Failure(f"the limited token pausing slow answered {status}")
        if self.shiftd.task_paused("slow"):
            raise Failure("the limited token paused slow")
        self.reload_ends_sessions()

    def reload_ends_sessions(self):
        """A reload that changes a token's secret ends that token's sessions (the cookie's
        key is the token), and only that token's."""
        limited = self.session_cookie()["value"]
        self.shiftd.write_config(limited_secret="limited-secret-changed-0123456789")
        self.shiftd.proc.send_signal(signal.SIGHUP)

        def refused():
            status, headers, _ = http_request("GET", self.shiftd.base + "/ui/jobs",
                                              headers={"Cookie": f"shiftd_session={limited}"})
            return 300 <= status < 400 and "/ui/login" in (headers.get("Location") or "")

        until("the changed token's session to be refused after the reload", refused, timeout=10)
        status, _, _ = http_request("GET", self.shiftd.base + "/ui/jobs",
                                    headers={"Cookie": f"shiftd_session={self.cookie}"})
        if status != 200:
            raise Failure(f"the admin session answered {status} after a reload that kept its token")
        self.get("/ui/jobs")
        self.wait_page("login")
        self.shiftd.write_config()
        self.shiftd.proc.send_signal(signal.SIGHUP)

    def s_service_log(self):
        """shiftd's log names tokens, never their secrets (nor what was typed at the
        login), and has no error or panic from anything the suite did."""
        with open(self.shiftd.log_path, errors="replace") as f:
            log = f.read()
        for secret in (ADMIN[1], LIMITED[1], "not-a-token-of-this-service", "wrong-token-0123456789"):
            if secret in log:
                raise Failure(f"the log holds a secret typed at the login or sent as a token: {secret[:8]}...")
        bad = [line for line in log.splitlines() if " ERROR " in line or "panicked" in line]
        if bad:
            raise Failure(f"the log has {len(bad)} error line(s), the first: {bad[0]}")
        if "dashboard login" not in log:
            raise Failure("no login is in the log")

    def s_read_only(self):
        """Without tokens: every page says read-only, no form is offered, actions are 403."""
        other = Shiftd("readonly", tokens=False)
        self.others.append(other)
        other.start()
        job_id = other.start_job("slow", {"n": "1"}, token=None)
        for path, page in (("/ui/", "overview"), ("/ui/jobs", "jobs"), (f"/ui/jobs/{job_id}", "job"), ("/ui/tasks", "tasks")):
            self.driver.get(other.base + path)
            self.wait_page(page)
            if "read-only" not in self.text("#readonly"):
                raise Failure(f"{path}: #readonly says {self.text('#readonly')!r}")
            forms = [f.get_attribute("class") or f.get_attribute("id") for f in self.all("form")
                     if (f.get_attribute("method") or "get").lower() == "post"]
            if forms:
                raise Failure(f"{path} offers forms without tokens: {forms}")
        self.shot("tasks-read-only")
        status, _, _ = http_request("POST", other.base + "/ui/tasks/hello/pause", b"",
                                    {"Content-Type": "application/x-www-form-urlencoded"})
        if status != 403:
            raise Failure(f"a pause without tokens answered {status}, not 403")
        other.stop()


SCENARIOS = [
    ("login", Suite.s_login),
    ("overview", Suite.s_overview),
    ("job-appears-without-reload", Suite.s_job_appears),
    ("jobs-paging", Suite.s_paging),
    ("markup-is-text", Suite.s_escaping),
    ("log-lines-live", Suite.s_log_live),
    ("cancel", Suite.s_cancel),
    ("pause-resume", Suite.s_pause_resume),
    ("start-form-rule", Suite.s_start_form),
    ("csrf-refused", Suite.s_csrf),
    ("restart-stream-resumes", Suite.s_restart),
    ("overview-follows-a-restart", Suite.s_stop_shown),
    ("limited-token", Suite.s_limited),
    ("read-only-without-tokens", Suite.s_read_only),
    ("service-log-clean", Suite.s_service_log),
]


def session_cookie(token, expiry):
    """A session cookie as the design defines it: v1.<name>.<expiry>.<hex HMAC-SHA256(key =
    SHA-256 of the secret, "session|<name>|<expiry>")>."""
    key = hashlib.sha256(token[1].encode()).digest()
    tag = hmac.new(key, f"session|{token[0]}|{expiry}".encode(), hashlib.sha256).hexdigest()
    return f"v1.{token[0]}.{expiry}.{tag}"


def pid_of(line):
    """The pid a `slow` line names ("line 3 of 30 (pid 1234)")."""
    m = re.fullmatch(r"line \d+ of \d+ \(pid (\d+)\)", line)
    return m.group(1) if m else None


def compact(seqs):
    return seqs if len(seqs) <= 40 else seqs[:20] + ["..."] + seqs[-20:]


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"line {i + 1}: page {x!r}, log {y!r}"
    return f"line {min(len(a), len(b)) + 1}: one of them ends"


def become_subreaper():
    """Orphans among our descendants (a job whose shiftd died, a browser helper) become our
    children, so that the cleanup finds them."""
    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def kill_descendants():
    """SIGKILL to every process below this one, until none is left."""
    me = os.getpid()
    for _ in range(50):
        parents = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        below, frontier = set(), {me}
        while frontier:
            frontier = {p for p, pp in parents.items() if pp in frontier} - below
            below |= frontier
        if not below:
            return
        for pid in below:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG) == (0, 0):
                    break
            except ChildProcessError:
                break
        time.sleep(0.05)


def main(argv):
    if argv[:1] == ["--list"]:
        print("\n".join(name for name, _ in SCENARIOS))
        return 0
    unknown = set(argv) - {name for name, _ in SCENARIOS}
    if unknown:
        print(f"browser: no scenario {', '.join(sorted(unknown))} (--list)", file=sys.stderr)
        return 2
    become_subreaper()
    def interrupted(signum, _frame):
        print(f"browser: interrupted by signal {signum}; stopping what the suite started", flush=True)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, interrupted)
    shutil.rmtree(SHOTS, ignore_errors=True)
    suite = Suite()
    suite.others = []
    failed = []
    started = time.monotonic()
    try:
        try:
            suite.shiftd.start()
            suite.open_browser()
        except Exception as e:  # noqa: BLE001
            print(f"FAIL  {'start':<28}         {e}", flush=True)
            print(f"--- shiftd's log, last lines:\n{suite.shiftd.log_tail()}", flush=True)
            raise
        for name, scenario in SCENARIOS:
            if argv and name not in argv and name != "login":
                continue
            t0 = time.monotonic()
            try:
                scenario(suite)
                problems = suite.console_problems()
                if problems:
                    raise Failure("the console shows: " + " | ".join(problems[:3]))
                print(f"PASS  {name:<28} {time.monotonic() - t0:5.1f}s", flush=True)
            except Exception as e:  # noqa: BLE001 - every failure is reported the same way
                failed.append(name)
                why = e.msg.splitlines()[0] if isinstance(e, WebDriverException) and e.msg else e
                print(f"FAIL  {name:<28} {time.monotonic() - t0:5.1f}s  {why}", flush=True)
                if not isinstance(e, (Failure, WebDriverException)):
                    traceback.print_exc()
                report(suite)
                if suite.shiftd.proc.poll() is not None:
                    print("browser: shiftd is not running; starting it again for what follows", flush=True)
                    suite.shiftd.start()
    finally:
        if suite.driver:
            try:
                suite.driver.quit()
            except WebDriverException:
                pass
        for s in [suite.shiftd] + suite.others:
            s.stop()
        kill_descendants()
        for s in [suite.shiftd] + suite.others:
            shutil.rmtree(s.dir, ignore_errors=True)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1" and "overview-follows-a-restart" not in failed:
        os.makedirs(os.path.dirname(README_SHOT), exist_ok=True)
        shutil.copyfile(os.path.join(SHOTS, "overview.png"), README_SHOT)
        print(f"browser: {os.path.relpath(README_SHOT, ROOT)} updated")
    print(f"browser: {len(failed)} failed, screenshots in {os.path.relpath(SHOTS, ROOT)}/, "
          f"{time.monotonic() - started:.0f}s", flush=True)
    return 1 if failed else 0


def report(suite):
    """What a failure needs to be understood: where the page was and what shiftd said."""
    try:
        source = suite.driver.page_source
        print(f"--- page {suite.driver.current_url}, last 2000 characters:\n{source[-2000:]}")
    except Exception as e:  # noqa: BLE001
        print(f"--- no page source: {e}")
    print(f"--- shiftd's log, last lines:\n{suite.shiftd.log_tail()}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
