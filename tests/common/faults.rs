//! Fault injection for `tests/faults.rs`: a small tmpfs to fill or make read-only, an
//! executions ledger that jobs write themselves (so a test counts what ran, not what the
//! API says), a PostgreSQL table lock held for a while, a loop that kills every server
//! connection of a database, and a sweep for job processes that outlived their test.
//!
//! Every job process a fault test starts carries `FAULT_TEST_TAG=<random>` in its task's
//! `env` table (never a `SHIFTD_*` name: the binary rejects unknown ones in its own
//! environment). [`TaggedProcesses`] finds them in `/proc/*/environ`, asserts none is left
//! at the end of a test, and kills them on drop so a failing test leaves nothing behind.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::time::Instant;

use super::{millis, secs, DEFAULT_PG_TEST_URL};

/// True when running as root (mounts need it).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Prints why a root-only test did nothing and returns true when it should skip.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("{test}: skipped; it mounts a tmpfs and needs root");
    true
}

// ---------------------------------------------------------------------------------------
// A tmpfs of a given size: the disk a SQLite database lives on.
// ---------------------------------------------------------------------------------------

/// A tmpfs mounted at a directory of the test's own workdir (so parallel tests never share
/// a mount), unmounted on drop (lazily if something still holds it open).
pub struct Tmpfs {
    pub path: PathBuf,
    filler: PathBuf,
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `2m`) at `path`.
    pub fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).expect("create the mount point");
        let p = path.display().to_string();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
                &p,
            ],
        )
        .unwrap_or_else(|e| panic!("mount a tmpfs: {e}"));
        Self {
            path: path.to_path_buf(),
            filler: path.join("filler"),
        }
    }

    /// Writes a filler file until the file system has not one byte left.
    pub fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .expect("create the filler file");
        let block = vec![0x5au8; 64 * 1024];
        for size in [64 * 1024, 4096, 512, 1] {
            loop {
                match file.write(&block[..size]) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
                    Err(e) => panic!("filling {}: {e}", self.path.display()),
                }
            }
        }
        let _ = file.sync_all();
        let free = self.free_bytes();
        assert_eq!(free, 0, "the tmpfs still has {free} bytes free");
    }

    /// Deletes the filler: the space is back.
    pub fn unfill(&self) {
        std::fs::remove_file(&self.filler).expect("remove the filler file");
    }

    /// Bytes available to an unprivileged writer (statvfs `f_bavail`).
    pub fn free_bytes(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.path).expect("statvfs");
        s.blocks_available() as u64 * s.fragment_size() as u64
    }

    pub fn remount_ro(&self) {
        run(
            "mount",
            &["-o", "remount,ro", &self.path.display().to_string()],
        )
        .unwrap_or_else(|e| panic!("remount read-only: {e}"));
    }

    pub fn remount_rw(&self) {
        run(
            "mount",
            &["-o", "remount,rw", &self.path.display().to_string()],
        )
        .unwrap_or_else(|e| panic!("remount read-write: {e}"));
    }
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let p = self.path.display().to_string();
        // A process killed a moment ago may still hold its database open: lazy umount
        // detaches the mount now and frees it when the last file closes.
        if run("umount", &[&p]).is_err() {
            let _ = run("umount", &["-l", &p]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The executions ledger.
// ---------------------------------------------------------------------------------------

/// The shell program of a ledger task (no braces: shiftd takes `{x}` in an argument for a
/// parameter). `$0` is the ledger directory, `$1` the seconds to
/// hold (a number, or `auto`: 0.3–0.9 s by job id, or `file:NAME`: until `$0/NAME` exists).
///
/// It takes `flock -n` on `lock.$JOB_ID` for its whole run (the lock goes with the process,
/// however it dies); finding it taken means another execution of the same job is alive:
/// `OVERLAP`. Lines: `start ID ATTEMPT PPID MS`, `end ID ATTEMPT PPID MS` (PPID is the
/// service that started it, fixed at shell start; MS the wall clock in milliseconds).
const LEDGER_SCRIPT: &str = r#"L="$0"; H="$1"
exec 9>>"$L/lock.$JOB_ID"
if ! flock -n 9; then echo "OVERLAP $JOB_ID $JOB_ATTEMPT $PPID $(date +%s%3N)" >> "$L/ledger"; fi
echo "start $JOB_ID $JOB_ATTEMPT $PPID $(date +%s%3N)" >> "$L/ledger"
case "$H" in
  auto) sleep "0.$((JOB_ID % 7 + 3))" ;;
  file:*) F="$L/$(printf %s "$H" | cut -c6-)"; while [ ! -e "$F" ]; do sleep 0.05; done ;;
  *) sleep "$H" ;;
esac
echo "end $JOB_ID $JOB_ATTEMPT $PPID $(date +%s%3N)" >> "$L/ledger""#;

/// A ledger directory (outside any disk a fault is injected into) and the tag its job
/// processes carry.
#[derive(Clone)]
pub struct Ledger {
    pub dir: PathBuf,
    pub tag: String,
}

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerLine {
    pub kind: String,
    pub job: i64,
    pub attempt: i64,
    /// The service process that started this execution.
    pub ppid: i32,
    /// Wall clock, milliseconds since the epoch.
    pub at_ms: i64,
}

/// What the ledger says.
#[derive(Debug, Default, Clone)]
pub struct Executions {
    pub lines: Vec<LedgerLine>,
    /// Executions started, by job id.
    pub starts: BTreeMap<i64, usize>,
    /// `OVERLAP` lines: an execution began while another one of the same job was alive.
    pub overlaps: Vec<LedgerLine>,
}

impl Executions {
    pub fn runs(&self, job: i64) -> usize {
        self.starts.get(&job).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.starts.values().sum()
    }

    /// Jobs that ran more than once.
    pub fn repeated(&self) -> Vec<(i64, usize)> {
        self.starts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| (*id, *n))
            .collect()
    }
}

impl Ledger {
    /// A ledger in `dir` (created), with a fresh tag.
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("create the ledger dir");
        Self {
            dir: dir.to_path_buf(),
            tag: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// A `[tasks.NAME]` table running the ledger script; `hold` as in [`LEDGER_SCRIPT`];
    /// `extra` are more TOML lines for the table (`concurrency = 1`, ...).
    pub fn task(&self, name: &str, hold: &str, extra: &str) -> String {
        format!(
            "[tasks.{name}]\ncommand = [\"/bin/sh\", \"-c\", {script}, {dir}, {hold}]\nenv = {{ FAULT_TEST_TAG = \"{tag}\" }}\nworking_dir = {dir}\n{extra}\n",
            script = toml_str(LEDGER_SCRIPT),
            dir = toml_str(&self.dir.display().to_string()),
            hold = toml_str(hold),
            tag = self.tag,
        )
    }

    /// Any task table tagged like the ledger's jobs: `command` is a TOML array.
    pub fn tagged_task(&self, name: &str, command: &str, extra: &str) -> String {
        format!(
            "[tasks.{name}]\ncommand = {command}\nenv = {{ FAULT_TEST_TAG = \"{tag}\" }}\nworking_dir = {dir}\n{extra}\n",
            dir = toml_str(&self.dir.display().to_string()),
            tag = self.tag,
        )
    }

    /// Creates `NAME` in the ledger dir (releases `file:NAME` holds).
    pub fn touch(&self, name: &str) {
        std::fs::write(self.dir.join(name), b"").expect("touch");
    }

    pub fn read(&self) -> Executions {
        let text = std::fs::read_to_string(self.dir.join("ledger")).unwrap_or_default();
        let mut ex = Executions::default();
        for raw in text.lines() {
            let w: Vec<&str> = raw.split_whitespace().collect();
            if w.len() < 5 {
                // A line cut by SIGKILL mid-write; nothing to count.
                continue;
            }
            let line = LedgerLine {
                kind: w[0].to_string(),
                job: w[1].parse().unwrap_or(-1),
                attempt: w[2].parse().unwrap_or(-1),
                ppid: w[3].parse().unwrap_or(-1),
                at_ms: w[4].parse().unwrap_or(-1),
            };
            match line.kind.as_str() {
                "start" => *ex.starts.entry(line.job).or_default() += 1,
                "OVERLAP" => ex.overlaps.push(line.clone()),
                _ => {}
            }
            ex.lines.push(line);
        }
        ex
    }

    /// Waits until the ledger has a `start` line for `job`.
    pub async fn wait_start(&self, job: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.read().runs(job) == 0 {
            assert!(
                Instant::now() < deadline,
                "job {job} did not start within {timeout:?}; ledger: {:?}",
                self.read().lines
            );
            tokio::time::sleep(millis(20)).await;
        }
    }

    /// True while an execution of `job` is alive: its `flock` on `lock.ID` is held.
    pub fn running(&self, job: i64) -> bool {
        let lock = self.dir.join(format!("lock.{job}"));
        Command::new("flock")
            .args(["-n", &lock.display().to_string(), "true"])
            .status()
            .map(|s| !s.success())
            .unwrap_or(false)
    }

    /// The processes carrying this ledger's tag.
    pub fn processes(&self) -> TaggedProcesses {
        TaggedProcesses {
            tag: self.tag.clone(),
        }
    }

    /// A guard that kills this ledger's processes at the end of the test, pass or fail.
    pub fn reaper(&self) -> Reaper {
        Reaper(self.processes())
    }
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Job processes that must not outlive their test.
// ---------------------------------------------------------------------------------------

/// Finds the processes whose environment holds `FAULT_TEST_TAG=<tag>`.
pub struct TaggedProcesses {
    tag: String,
}

impl TaggedProcesses {
    /// Live (non-zombie) processes with the tag.
    pub fn pids(&self) -> Vec<i32> {
        let needle = format!("FAULT_TEST_TAG={}", self.tag);
        let mut pids = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) && !is_zombie(pid) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Waits up to `timeout` for every tagged process to be gone; returns those still alive
    /// (and SIGKILLs them, so the machine stays clean either way).
    pub async fn gone_within(&self, timeout: Duration) -> Vec<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.pids();
            if left.is_empty() {
                return left;
            }
            if Instant::now() >= deadline {
                let described = left.iter().map(|p| describe(*p)).collect();
                self.kill_all();
                return described_pids(left, described);
            }
            tokio::time::sleep(millis(20)).await;
        }
    }

    /// The end-of-test check: no job process of this test is alive (waiting up to 2 s).
    pub async fn assert_none_left(&self) {
        let left = self.gone_within(secs(2)).await;
        assert!(
            left.is_empty(),
            "job processes outlived the test (killed now): {left:?}"
        );
    }

    pub fn kill_all(&self) {
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn described_pids(pids: Vec<i32>, described: Vec<String>) -> Vec<i32> {
    for d in described {
        eprintln!("left behind: {d}");
    }
    pids
}

fn describe(pid: i32) -> String {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default();
    format!("{pid}: {cmd}")
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Kills the tagged processes when dropped: declared early in a test, it runs even when
/// the test fails half-way.
pub struct Reaper(pub TaggedProcesses);

impl Drop for Reaper {
    fn drop(&mut self) {
        self.0.kill_all();
    }
}

// ---------------------------------------------------------------------------------------
// PostgreSQL faults.
// ---------------------------------------------------------------------------------------

fn admin_url() -> String {
    std::env::var("PG_TEST_URL").unwrap_or_else(|_| DEFAULT_PG_TEST_URL.into())
}

async fn connect_to(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    tokio::time::timeout(secs(10), sqlx::PgConnection::connect(url))
        .await
        .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// A transaction holding `LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE`: every statement
/// that touches `jobs` waits until [`Stall::release`] rolls it back.
pub struct Stall {
    conn: sqlx::PgConnection,
}

/// Starts a stall of the `jobs` table of `db_url`; returns once the lock is held.
pub async fn stall_jobs_table(db_url: &str) -> Stall {
    let mut conn = connect_to(db_url).await;
    sqlx::query("BEGIN")
        .execute(&mut conn)
        .await
        .expect("BEGIN");
    // Waits for running statements; bounded so a wedged server fails the test.
    sqlx::query("SET LOCAL lock_timeout = '10s'")
        .execute(&mut conn)
        .await
        .expect("SET lock_timeout");
    sqlx::query("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut conn)
        .await
        .expect("LOCK TABLE jobs");
    Stall { conn }
}

impl Stall {
    /// Ends the stall (rolls the transaction back).
    pub async fn release(mut self) {
        use sqlx::Connection;
        let _ =
            tokio::time::timeout(secs(5), sqlx::query("ROLLBACK").execute(&mut self.conn)).await;
        let _ = self.conn.close().await;
    }
}

/// Terminates every other connection to one database every few milliseconds, as a
/// flapping server or proxy would, until stopped.
pub struct BackendKiller {
    stop: Arc<AtomicBool>,
    kills: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl BackendKiller {
    pub async fn start(db_name: &str, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let kills = Arc::new(AtomicU64::new(0));
        let mut admin = connect_to(&admin_url()).await;
        let (name, stop2, kills2) = (db_name.to_string(), stop.clone(), kills.clone());
        let task = tokio::spawn(async move {
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(rows) = sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&name)
                .fetch_all(&mut admin)
                .await
                {
                    kills2.fetch_add(rows.len() as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(every).await;
            }
            use sqlx::Connection;
            let _ = admin.close().await;
        });
        Self {
            stop,
            kills,
            task: Some(task),
        }
    }

    /// Stops the loop; returns how many connections it terminated.
    pub async fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(secs(5), task).await;
        }
        self.kills.load(Ordering::Relaxed)
    }
}

impl Drop for BackendKiller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------
// The API, as the fault tests use it.
// ---------------------------------------------------------------------------------------

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(secs(15))
        .build()
        .unwrap()
}

/// Status and body (JSON when it parses, else the text as a JSON string).
pub async fn request(
    c: &reqwest::Client,
    method: &str,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, Value), String> {
    let r = c
        .request(method.parse().unwrap(), format!("http://{addr}{path}"))
        .send()
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let status = r.status().as_u16();
    let text = r
        .text()
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// POST /v1/tasks/TASK/jobs; the job id when the answer is 202.
pub async fn submit(addr: SocketAddr, task: &str) -> (u16, Value) {
    request(&client(), "POST", addr, &format!("/v1/tasks/{task}/jobs"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// POST that must be answered 202; the job id.
pub async fn submit_ok(addr: SocketAddr, task: &str) -> i64 {
    let (status, body) = submit(addr, task).await;
    assert_eq!(status, 202, "POST /v1/tasks/{task}/jobs: {body}");
    body["id"].as_i64().expect("a job id")
}

/// GET /v1/jobs/ID: `None` for 404.
pub async fn job(addr: SocketAddr, id: i64) -> Option<Value> {
    let (status, body) = request(&client(), "GET", addr, &format!("/v1/jobs/{id}"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    match status {
        200 => Some(body),
        404 => None,
        other => panic!("GET /v1/jobs/{id}: {other} {body}"),
    }
}

pub fn state(job: &Value) -> &str {
    job["state"].as_str().unwrap_or("")
}

pub fn is_final(job: &Value) -> bool {
    matches!(state(job), "succeeded" | "failed" | "cancelled")
}

/// Polls the job until `pred` holds (every 50 ms, up to `timeout`).
pub async fn wait_job(
    addr: SocketAddr,
    id: i64,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let j = job(addr, id).await;
        if let Some(j) = j.as_ref().filter(|j| pred(j)) {
            return j.clone();
        }
        assert!(
            Instant::now() < deadline,
            "job {id}: not {what} within {timeout:?}; last seen: {j:?}"
        );
        tokio::time::sleep(millis(50)).await;
    }
}

/// The job's whole log as bytes (GET /v1/jobs/ID/log).
pub async fn job_log(addr: SocketAddr, id: i64) -> (u16, Vec<u8>) {
    let r = client()
        .get(format!("http://{addr}/v1/jobs/{id}/log"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET log {id}: {e}"));
    let status = r.status().as_u16();
    (status, r.bytes().await.unwrap_or_default().to_vec())
}

/// Waits for `path` to exist.
pub async fn wait_file(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        tokio::time::sleep(millis(20)).await;
    }
}

/// Several findings in one test: each failed check is kept, and all are reported together
/// at the end, so one run says everything that is wrong.
#[derive(Default)]
pub struct Verdict {
    failures: Vec<String>,
}

impl Verdict {
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("FAILED: {what}");
            self.failures.push(what);
        }
    }

    pub fn fail(&mut self, what: impl Into<String>) {
        self.check(false, || what.into());
    }

    pub fn failed(&self) -> bool {
        !self.failures.is_empty()
    }

    /// Panics with every failed check.
    pub fn finish(self, test: &str) {
        assert!(
            self.failures.is_empty(),
            "{test}: {} checks failed:\n  - {}",
            self.failures.len(),
            self.failures.join("\n  - ")
        );
    }
}

// ---------------------------------------------------------------------------------------
// An ext4 file system on a loop device that the kernel makes read-only under a writer.
// ---------------------------------------------------------------------------------------

/// A small ext4 (`errors=remount-ro`) on a loop device, mounted in the test's workdir.
///
/// A tmpfs cannot be remounted read-only while a process has a file open for writing
/// (`mount` fails with EBUSY), and a running SQLite always has. What does make a live
/// database read-only is the kernel itself after a file-system error: ext4 with
/// `errors=remount-ro` turns read-only under every open file (`emergency_ro`), and
/// `trigger_fs_error` in sysfs raises such an error on purpose. That state lasts until the
/// file system is unmounted, checked and mounted again, which is what [`Ext4Loop::repair`] does.
pub struct Ext4Loop {
    pub path: PathBuf,
    image: PathBuf,
    mounted: bool,
}

impl Ext4Loop {
    pub fn mount(image: &Path, path: &Path, size_mib: u64) -> Self {
        std::fs::create_dir_all(path).expect("create the mount point");
        let file = std::fs::File::create(image).expect("create the image");
        file.set_len(size_mib << 20).expect("size the image");
        drop(file);
        let img = image.display().to_string();
        run("mkfs.ext4", &["-q", "-F", &img]).unwrap_or_else(|e| panic!("{e}"));
        let me = Self {
            path: path.to_path_buf(),
            image: image.to_path_buf(),
            mounted: false,
        };
        me.mount_again()
    }

    fn mount_again(mut self) -> Self {
        let (img, p) = (
            self.image.display().to_string(),
            self.path.display().to_string(),
        );
        run("mount", &["-o", "loop,errors=remount-ro", &img, &p])
            .unwrap_or_else(|e| panic!("mount the ext4 image: {e}"));
        self.mounted = true;
        self
    }

    /// The loop device's name (`loop3`), as `/sys/fs/ext4/` names it.
    fn device(&self) -> String {
        let out = Command::new("findmnt")
            .args(["-no", "SOURCE", &self.path.display().to_string()])
            .output()
            .expect("findmnt");
        let source = String::from_utf8_lossy(&out.stdout).trim().to_string();
        source.rsplit('/').next().unwrap_or_default().to_string()
    }

    /// Writes back what is committed, then raises a file-system error: from now on every
    /// write, through files already open too, fails with EROFS.
    pub fn make_read_only(&self) {
        run("sync", &["-f", &self.path.display().to_string()]).unwrap_or_else(|e| panic!("{e}"));
        let knob = format!("/sys/fs/ext4/{}/trigger_fs_error", self.device());
        std::fs::write(&knob, "shiftd fault test: read-only\n")
            .unwrap_or_else(|e| panic!("write {knob}: {e}"));
        let probe = self.path.join("probe");
        assert!(
            std::fs::write(&probe, b"x").is_err(),
            "the file system is still writable after the error"
        );
    }

    /// Unmounts (the processes that had it open must be gone), checks and mounts it again
    /// read-write, as an operator would after a read-only remount.
    pub fn repair(self) -> Self {
        let p = self.path.display().to_string();
        run("umount", &[&p]).unwrap_or_else(|e| panic!("umount for the repair: {e}"));
        let mut me = self;
        me.mounted = false;
        // e2fsck exits 1 when it fixed something: fine.
        let _ = Command::new("e2fsck")
            .args(["-fy", &me.image.display().to_string()])
            .output();
        me.mount_again()
    }
}

impl Drop for Ext4Loop {
    fn drop(&mut self) {
        if self.mounted {
            let p = self.path.display().to_string();
            if run("umount", &[&p]).is_err() {
                let _ = run("umount", &["-l", &p]);
            }
        }
    }
}
