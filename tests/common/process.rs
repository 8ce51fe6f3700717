//! Spawning the real `shiftd` binary the way systemd would: a fresh working directory
//! ([`Workdir`], so its embedded SQLite lands in `./shiftd-data`), a config file written
//! there ([`ShiftdBuilder`]), a `NOTIFY_SOCKET` bound by the test, activation sockets as
//! fds 3, 4, …, and its stdout and stderr recorded line by line ([`Shiftd`]).

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use testkit::{
    free_port, record_datagrams, record_lines, ActivationSocket, Datagram, Line, Record,
};
use tokio::net::UnixDatagram;
use tokio::sync::watch;
use tokio::time::Instant;

/// The binary under test, built by cargo for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_shiftd");

/// How long a process may take to send READY=1 in [`ShiftdBuilder::start`]. Generous: two
/// cores shared with cargo builds make startup slow now and then.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A temporary directory shared by the processes of one test (their working directory,
/// hence their SQLite database), deleted when the last user drops it.
#[derive(Clone)]
pub struct Workdir(Arc<tempfile::TempDir>);

impl Workdir {
    pub fn new() -> Self {
        Self(Arc::new(
            tempfile::Builder::new()
                .prefix("shiftd-test-")
                .tempdir()
                .expect("create a temp dir"),
        ))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Default for Workdir {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts processes, so each gets its own notify socket and config file in a shared dir.
static SPAWNED: AtomicUsize = AtomicUsize::new(0);

/// How to start one `shiftd` process. Cheap to clone: `app.builder()` gives the one a
/// running process was started with, to start a second one like it (same directory,
/// config and socket).
#[derive(Clone)]
pub struct ShiftdBuilder {
    dir: Workdir,
    config: toml::Table,
    extra_toml: String,
    verbatim: Option<String>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    /// Sockets passed as fds 3, 4, … with their `LISTEN_FDNAMES` names.
    sockets: Vec<(ActivationSocket, String)>,
    /// Variables set to the process's own pid (`LISTEN_PID` with sockets, `WATCHDOG_PID`).
    own_pid_vars: Vec<String>,
    notify: bool,
}

impl ShiftdBuilder {
    /// Sets one configuration key, as a dotted path: `.set("shutdown.http_drain", "2s")`.
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        let (section, name) = key.split_once('.').expect("keys are written section.key");
        let table = self
            .config
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("a section is a table");
        table.insert(name.to_string(), value.into());
        self
    }

    /// Appends raw TOML after the keys given with [`set`](Self::set) (e.g. `[tasks.x]` tables).
    pub fn toml(mut self, text: &str) -> Self {
        self.extra_toml.push_str(text);
        self.extra_toml.push('\n');
        self
    }

    /// Writes exactly this text as the config file (for bad-config tests); `set` is ignored.
    pub fn config_text(mut self, text: &str) -> Self {
        self.verbatim = Some(text.to_string());
        self
    }

    /// Adds an environment variable for the process (its environment is otherwise empty
    /// but for `PATH`, so nothing from the test's own environment leaks in).
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Passes `socket` as fd 3 named `http` (`LISTEN_FDS=1`, `LISTEN_FDNAMES=http`, and
    /// `LISTEN_PID` set to the process), as a `.socket` unit with `FileDescriptorName=http`.
    pub fn socket(self, socket: &ActivationSocket) -> Self {
        self.named_socket(socket, "http")
    }

    /// Passes one more socket, as the next fd from 3 on, under `name` in `LISTEN_FDNAMES`.
    pub fn named_socket(mut self, socket: &ActivationSocket, name: &str) -> Self {
        assert!(self.sockets.len() < 16, "at most 16 sockets");
        self.sockets.push((socket.clone(), name.to_string()));
        self
    }

    /// Sets `key` to the pid of the process itself (e.g. `WATCHDOG_PID`), which the test
    /// cannot know before the spawn: the process is exec'd through `sh`, keeping sh's pid.
    pub fn env_own_pid(mut self, key: &str) -> Self {
        self.own_pid_vars.push(key.to_string());
        self
    }

    /// Runs in `dir` (shared with another process) instead of a fresh directory.
    pub fn dir(mut self, dir: &Workdir) -> Self {
        self.dir = dir.clone();
        self
    }

    /// Replaces the arguments after the binary (default: `serve --config <file>`).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Leaves `NOTIFY_SOCKET` unset (not under systemd).
    pub fn without_notify_socket(mut self) -> Self {
        self.notify = false;
        self
    }

    pub fn workdir(&self) -> &Workdir {
        &self.dir
    }

    /// The address clients should use: the activation socket named `http` (else the first
    /// one), else `http.listen`.
    pub fn addr(&self) -> SocketAddr {
        if let Some((socket, _)) = self
            .sockets
            .iter()
            .find(|(_, name)| name == "http")
            .or(self.sockets.first())
        {
            return socket.addr;
        }
        self.config
            .get("http")
            .and_then(|h| h.get("listen"))
            .and_then(|l| l.as_str())
            .and_then(|l| l.parse().ok())
            .expect("http.listen is an address")
    }

    /// The config file text this builder writes.
    pub fn config_file_text(&self) -> String {
        match &self.verbatim {
            Some(text) => text.clone(),
            None => format!(
                "{}\n{}",
                toml::to_string(&self.config).expect("config renders as TOML"),
                self.extra_toml
            ),
        }
    }

    /// Starts the process and returns at once (see [`start`](Self::start) to wait for READY=1).
    pub async fn spawn(self) -> Shiftd {
        let n = SPAWNED.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.path().to_path_buf();
        let config_path = dir.join(format!("shiftd-{n}.toml"));
        std::fs::write(&config_path, self.config_file_text()).expect("write the config file");
        let notify_path = dir.join(format!("notify-{n}.sock"));
        let notify_socket = UnixDatagram::bind(&notify_path).expect("bind the notify socket");

        let mut child = self
            .command(&config_path, &notify_path)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
        let pid = Pid::from_raw(child.id().expect("a fresh child has a pid") as i32);
        let spawned_at = Instant::now();

        let (exit_tx, exit_rx) = watch::channel(None);
        let notify = Record::new("notify", exit_rx.clone());
        let stderr = Record::new("stderr", exit_rx.clone());
        let stdout = Record::new("stdout", exit_rx.clone());
        let log_path = dir.join(format!("stderr-{n}.log"));
        tokio::spawn(record_lines(
            child.stderr.take().expect("piped"),
            stderr.clone(),
            Some(log_path),
        ));
        tokio::spawn(record_lines(
            child.stdout.take().expect("piped"),
            stdout.clone(),
            None,
        ));
        tokio::spawn(record_datagrams(notify_socket, notify.clone()));
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => status_code(status),
                Err(_) => -1,
            };
            let _ = exit_tx.send(Some(code));
        });

        Shiftd {
            pid,
            addr: self.addr(),
            config_path,
            notify,
            stderr,
            stdout,
            exit: exit_rx,
            spawned_at,
            builder: self,
        }
    }

    /// The command that runs the binary in the directory, with an environment of `PATH`
    /// and what this builder adds, stdout and stderr piped and the sockets in place.
    fn command(&self, config_path: &Path, notify_path: &Path) -> tokio::process::Command {
        let args: Vec<String> = if self.args.is_empty() {
            vec![
                "serve".into(),
                "--config".into(),
                config_path.display().to_string(),
            ]
        } else {
            self.args.clone()
        };
        let mut own_pid_vars = self.own_pid_vars.clone();
        if !self.sockets.is_empty() {
            own_pid_vars.push("LISTEN_PID".into());
        }
        let mut command = if own_pid_vars.is_empty() {
            let mut c = tokio::process::Command::new(BIN);
            c.args(&args);
            c
        } else {
            // sh exports its own pid, then exec keeps that pid for shiftd.
            let exports: Vec<String> = own_pid_vars
                .iter()
                .map(|v| format!("export {v}=$$;"))
                .collect();
            let mut c = tokio::process::Command::new("/bin/sh");
            c.arg("-c")
                .arg(format!(r#"{} exec "$0" "$@""#, exports.join(" ")))
                .arg(BIN)
                .args(&args);
            c
        };
        command
            .current_dir(self.dir.path())
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if self.notify {
            command.env("NOTIFY_SOCKET", notify_path);
        }
        if !self.sockets.is_empty() {
            let names: Vec<&str> = self.sockets.iter().map(|(_, name)| name.as_str()).collect();
            command
                .env("LISTEN_FDS", self.sockets.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
        }
        for (k, v) in &self.env {
            command.env(k, v);
        }
        self.pass_sockets(&mut command);
        command
    }

    /// Makes the sockets fds 3, 4, … of the process, as systemd passes a `.socket` unit's.
    fn pass_sockets(&self, command: &mut tokio::process::Command) {
        if self.sockets.is_empty() {
            return;
        }
        let fds: Vec<RawFd> = self
            .sockets
            .iter()
            .map(|(socket, _)| socket.raw_fd())
            .collect();
        // SAFETY: only async-signal-safe calls (fcntl/dup2/close) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                use nix::fcntl::{fcntl, FcntlArg};
                // First out of the way (a source may sit where a target goes), then
                // onto 3, 4, …; dup2 leaves the copies without close-on-exec.
                let mut parked = [0; 16];
                for (i, fd) in fds.iter().enumerate() {
                    parked[i] = fcntl(*fd, FcntlArg::F_DUPFD_CLOEXEC(100))?;
                }
                for (i, fd) in parked[..fds.len()].iter().enumerate() {
                    nix::unistd::dup2(*fd, 3 + i as RawFd)?;
                    nix::unistd::close(*fd)?;
                }
                Ok(())
            });
        }
    }

    /// Starts the process and waits for READY=1 (failing the test after [`START_TIMEOUT`]).
    pub async fn start(self) -> Shiftd {
        let app = self.spawn().await;
        app.notify.wait_line("READY=1", START_TIMEOUT).await;
        app
    }
}

/// The shell convention: the exit code, or 128 + the signal that killed it.
fn status_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// A running (or exited) `shiftd` process. Killed with SIGKILL when dropped while running;
/// if the test is failing, what it said is printed first.
pub struct Shiftd {
    pub pid: Pid,
    /// Where it serves HTTP.
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    /// Every datagram it sent to `NOTIFY_SOCKET`.
    pub notify: Arc<Record<Datagram>>,
    /// Its stderr (the log), line by line.
    pub stderr: Arc<Record<Line>>,
    pub stdout: Arc<Record<Line>>,
    exit: watch::Receiver<Option<i32>>,
    pub spawned_at: Instant,
    builder: ShiftdBuilder,
}

impl Shiftd {
    /// A builder with a fresh directory, `http.listen` on a free port, and defaults for the rest.
    pub fn builder() -> ShiftdBuilder {
        ShiftdBuilder {
            dir: Workdir::new(),
            config: toml::Table::new(),
            extra_toml: String::new(),
            verbatim: None,
            env: Vec::new(),
            args: Vec::new(),
            sockets: Vec::new(),
            own_pid_vars: Vec::new(),
            notify: true,
        }
        .set("http.listen", format!("127.0.0.1:{}", free_port()))
    }

    /// The builder this process was started with: `.builder().start()` starts another like it.
    pub fn builder_again(&self) -> ShiftdBuilder {
        self.builder.clone()
    }

    pub fn workdir(&self) -> &Workdir {
        &self.builder.dir
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid, signal).unwrap_or_else(|e| panic!("kill({}, {signal}): {e}", self.pid));
    }

    pub fn sigterm(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// The exit code if it has exited (128 + n for signal n).
    pub fn exit_code(&self) -> Option<i32> {
        *self.exit.borrow()
    }

    /// Waits for the process to exit and returns its code; fails the test after `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> i32 {
        match self.try_wait_exit(timeout).await {
            Some(code) => code,
            None => panic!(
                "shiftd (pid {}) did not exit within {timeout:?}; its log:\n{}",
                self.pid,
                self.stderr.dump()
            ),
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn try_wait_exit(&self, timeout: Duration) -> Option<i32> {
        let mut exit = self.exit.clone();
        tokio::time::timeout(timeout, exit.wait_for(|e| e.is_some()))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|e| *e))
    }

    /// Rewrites this process's config file (for SIGHUP tests).
    pub fn rewrite_config(&self, text: &str) {
        std::fs::write(&self.config_path, text).expect("rewrite the config file");
    }

    /// Everything it said, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "notify:\n{}\nstderr:\n{}\nstdout:\n{}",
            self.notify.dump(),
            self.stderr.dump(),
            self.stdout.dump()
        )
    }
}

impl Drop for Shiftd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- shiftd pid {} ---\n{}\n--- end ---",
                self.pid,
                self.dump()
            );
        }
        if self.exit.borrow().is_none() {
            let _ = kill(self.pid, Signal::SIGKILL);
        }
    }
}
