//! The hand-over: a new process (usually a new binary, after an upgrade) takes the listening
//! sockets from the running one, which keeps serving until the new one is ready.
//!
//! nginx's binary upgrade and HAProxy's seamless reload are the anchors; cloudflare's
//! `shellflip` and `ecdysis` do the same in Rust (ARCHITECTURE.md says why neither is used).
//! The steps, old process `A`, new process `B`:
//!
//! 1. `A` makes a socketpair (the *channel*), clears close-on-exec on its end for `B`, on the
//!    listening sockets, and starts `B` through a double fork, so `B`'s parent is the
//!    service manager from the start: systemd then treats `B` as its own child when `A`
//!    names it the main process (no "Supervising process which is not our child").
//!    The grandchild writes its pid into the channel before it execs.
//! 2. `B` finds the sockets and the channel in `the hand-over variable`, runs every startup step
//!    (configuration, database, migrations), then writes `ready` (or `failed <why>`) and
//!    waits for `main`. It has not accepted a connection or claimed a job yet.
//! 3. `A` sends `MAINPID=<B>`, `READY=1` and `STATUS=` in one datagram (with
//!    `NotifyAccess=main` only the main process may speak, so `A` speaks for the last time
//!    and names its successor in the same message), then writes `main`.
//! 4. `B` starts its runner and accepts on the same sockets, then writes `serving`; only then
//!    `A` stops accepting (so there is no moment when nobody accepts), drains its requests,
//!    stops claiming, and lets its running jobs finish untouched.
//! 5. From then on the channel carries stops: `B` forwards `stop` or `fast` to `A` when its
//!    own stop begins, and waits for `A` to exit (EOF on the channel) before it exits itself,
//!    so systemd sees the whole cgroup wind down within the stop budget. `A` treats EOF from
//!    `B` (a crash) as a stop too.
//!
//! If `B` fails before `main` (bad configuration, failed migration, crash, step timeout),
//! `A` kills it, keeps serving, and reports the failure to whoever asked.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use super::listener::ActivatedFds;

/// The application's names for what a hand-over passes on or shows: the lifecycle knows
/// no application, so these come from it.
#[derive(Debug, Clone, Copy)]
pub struct HandOverNames {
    /// The environment variable that tells a new process it was started by a hand-over,
    /// holding `chan=FD,http=FD[,control=FD]` (shiftd: `SHIFTD_HANDOVER`). The new process
    /// reads it in [`SystemdEnv::take`](crate::SystemdEnv::take), which must be given the
    /// same name.
    pub env_var: &'static str,
    /// How an operator asks for a hand-over, named in warnings (shiftd: `shiftd reload`).
    pub reload_command: &'static str,
    /// The setting that sizes `ready_timeout`, named when the new process is not ready in
    /// time (shiftd: `startup.step_timeout`).
    pub ready_setting: &'static str,
}

/// How a process that is not the main one any more asks the predecessor to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// `stop`: apply the stop plan.
    Graceful,
    /// `fast`: skip the waiting.
    Fast,
}

/// What the old process needs to start the new one.
#[derive(Debug, Clone)]
pub struct HandOverSettings {
    /// The binary to start: the path this process was started as (after a package upgrade,
    /// the new binary at the same path), never `/proc/self/exe` (the old, deleted one).
    pub program: PathBuf,
    /// Its arguments (this process's own).
    pub args: Vec<OsString>,
    /// Where `shiftd reload` asks for a hand-over.
    pub control_path: PathBuf,
    /// How long the new process may take from exec to `ready`: its startup steps.
    pub ready_timeout: Duration,
    /// What the application calls the variable, the command and the setting.
    pub names: HandOverNames,
}

impl HandOverSettings {
    /// This process's own program and arguments.
    pub fn from_current_process(
        control_path: PathBuf,
        ready_timeout: Duration,
        names: HandOverNames,
    ) -> Self {
        let mut argv = std::env::args_os();
        let argv0 = argv.next().map(PathBuf::from);
        let program = match argv0 {
            Some(p) if p.is_absolute() => p,
            _ => std::env::current_exe()
                .map(|p| {
                    // After an upgrade the link reads "/usr/bin/NAME (deleted)".
                    let text = p.to_string_lossy();
                    PathBuf::from(text.trim_end_matches(" (deleted)"))
                })
                // Neither an absolute argv[0] nor /proc/self/exe: the name as started.
                .unwrap_or_else(|_| argv0.unwrap_or_default()),
        };
        Self {
            program,
            args: argv.collect(),
            control_path,
            ready_timeout,
            names,
        }
    }
}

/// Read from `the hand-over variable` before any thread exists.
#[derive(Debug)]
pub struct Inherited {
    /// The listening sockets (`http`, `control`) by name.
    pub fds: ActivatedFds,
    /// This process's end of the channel to the predecessor.
    pub channel: OwnedFd,
}

/// Reads and unsets `the hand-over variable`; the descriptors it names get close-on-exec again
/// (they were inherited on purpose; job processes must not inherit them further).
///
/// # Safety
/// Before any other thread exists (it calls `std::env::remove_var`).
pub unsafe fn take_inherited(var: &str) -> std::io::Result<Option<Inherited>> {
    let Some(value) = std::env::var_os(var) else {
        return Ok(None);
    };
    std::env::remove_var(var);
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{var}={value:?} is not chan=FD,http=FD[,control=FD]"),
        )
    };
    let text = value.to_str().ok_or_else(bad)?;
    let mut channel = None;
    let mut fds = Vec::new();
    for part in text.split(',') {
        let (name, fd) = part.split_once('=').ok_or_else(bad)?;
        let fd: RawFd = fd.parse().map_err(|_| bad())?;
        set_cloexec(fd)?;
        if name == "chan" {
            // SAFETY: the predecessor passed this descriptor to us alone.
            channel = Some(OwnedFd::from_raw_fd(fd));
        } else {
            fds.push((fd, name.to_string()));
        }
    }
    Ok(Some(Inherited {
        fds: ActivatedFds(fds),
        channel: channel.ok_or_else(bad)?,
    }))
}

fn set_cloexec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: plain fcntl on a descriptor number.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Tells the predecessor, synchronously, that this process could not start (before the
/// async runtime exists, e.g. a configuration error). Best effort.
pub fn report_failure(channel: &OwnedFd, why: &str) {
    if let Ok(dup) = channel.try_clone() {
        let mut stream = StdUnixStream::from(dup);
        let _ = stream.write_all(format!("failed {}\n", one_line(why)).as_bytes());
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// In the new process: the channel to the process it took over from.
pub struct Predecessor {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// Cancelled when the predecessor has exited (EOF on the channel).
    gone: CancellationToken,
}

impl Predecessor {
    /// Wraps the inherited channel (made non-blocking).
    pub fn new(channel: OwnedFd) -> std::io::Result<Self> {
        let std = StdUnixStream::from(channel);
        std.set_nonblocking(true)?;
        let (read, write) = UnixStream::from_std(std)?.into_split();
        Ok(Self {
            reader: BufReader::new(read),
            writer: write,
            gone: CancellationToken::new(),
        })
    }

    /// Says `ready` and waits for `main` (the predecessor has made this process the main one).
    pub async fn ready(&mut self) -> Result<(), String> {
        self.writer
            .write_all(b"ready\n")
            .await
            .map_err(|e| format!("cannot reach the previous process: {e}"))?;
        let mut line = String::new();
        match self.reader.read_line(&mut line).await {
            Ok(0) => Err("the previous process went away before handing over".into()),
            Ok(_) if line.trim_end() == "main" => Ok(()),
            Ok(_) => Err(format!(
                "the previous process refused the hand-over: {}",
                line.trim_end()
            )),
            Err(e) => Err(format!("cannot read from the previous process: {e}")),
        }
    }

    /// Says `failed <why>`: the predecessor keeps serving and reports it.
    pub async fn failed(&mut self, why: &str) {
        let _ = self
            .writer
            .write_all(format!("failed {}\n", one_line(why)).as_bytes())
            .await;
    }

    /// Splits into the sender of stop requests and a token cancelled when the predecessor
    /// exits, and says `serving`.
    pub async fn serving(mut self) -> PredecessorLink {
        let _ = self.writer.write_all(b"serving\n").await;
        let gone = self.gone.clone();
        let mut reader = self.reader;
        tokio::spawn(async move {
            let mut sink = [0u8; 64];
            loop {
                match reader.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            gone.cancel();
        });
        PredecessorLink {
            writer: std::sync::Arc::new(tokio::sync::Mutex::new(self.writer)),
            gone: self.gone,
        }
    }
}

/// The serving process's link to its predecessor, which may still be finishing its jobs.
#[derive(Clone)]
pub struct PredecessorLink {
    writer: std::sync::Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    gone: CancellationToken,
}

impl PredecessorLink {
    /// Passes a stop on. A predecessor that already exited needs none.
    pub async fn forward(&self, request: StopRequest) {
        let line: &[u8] = match request {
            StopRequest::Graceful => b"stop\n",
            StopRequest::Fast => b"fast\n",
        };
        let _ = self.writer.lock().await.write_all(line).await;
    }

    /// Resolves when the predecessor has exited.
    pub fn gone(&self) -> CancellationToken {
        self.gone.clone()
    }
}

/// In the old process: the new one, ready, not yet told it is the main process.
pub struct Successor {
    /// The new process's pid (it is not this process's child: double fork).
    pub pid: i32,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// Why a hand-over did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    #[error("cannot start {program}: {source}")]
    /// The program could not be started.
    Spawn {
        /// The program's path.
        program: String,
        /// Why it could not be started.
        source: std::io::Error,
    },
    #[error("the new process (pid {pid}) could not start: {why}")]
    /// The new process said `failed <why>`.
    Failed {
        /// The new process's pid.
        pid: i32,
        /// What it said.
        why: String,
    },
    #[error("the new process (pid {pid}) exited before it was ready; its own log lines say why")]
    /// The new process closed the channel without a word.
    Exited {
        /// The new process's pid.
        pid: i32,
    },
    #[error("the new process (pid {pid}) was not ready within {limit} and was killed; raise {setting} if its startup is slow")]
    /// The new process was not ready within `ready_timeout`.
    TimedOut {
        /// The new process's pid.
        pid: i32,
        /// `ready_timeout`, for the message.
        limit: String,
        /// The application's name for the setting that sizes it.
        setting: &'static str,
    },
    #[error("{0}")]
    /// The channel to the new process failed.
    Channel(String),
}

/// Starts the new process with `fds` (name, descriptor) and waits until it is ready.
/// On failure the new process is killed (if it still runs) and the reason returned.
pub async fn start(
    settings: &HandOverSettings,
    fds: &[(&str, RawFd)],
    watchdog: Option<Duration>,
) -> Result<Successor, HandOverError> {
    let ours = spawn(settings, fds, watchdog).await?;
    ours.set_nonblocking(true)
        .map_err(|e| HandOverError::Channel(e.to_string()))?;
    let (read, writer) = UnixStream::from_std(ours)
        .map_err(|e| HandOverError::Channel(e.to_string()))?
        .into_split();
    let mut reader = BufReader::new(read);
    let deadline = tokio::time::Instant::now() + settings.ready_timeout;
    let pid = read_pid(&mut reader, deadline).await?;
    match read_ready(&mut reader, deadline, pid, settings).await {
        Ok(()) => Ok(Successor {
            pid,
            reader,
            writer,
        }),
        Err(e) => {
            kill(pid);
            Err(e)
        }
    }
}

/// Starts the new process through a double fork, with the channel's other end and `fds`
/// inherited; returns this process's end of the channel.
async fn spawn(
    settings: &HandOverSettings,
    fds: &[(&str, RawFd)],
    watchdog: Option<Duration>,
) -> Result<StdUnixStream, HandOverError> {
    let program = settings.program.display().to_string();
    let (ours, theirs) = StdUnixStream::pair().map_err(|source| HandOverError::Spawn {
        program: program.clone(),
        source,
    })?;
    let theirs: OwnedFd = theirs.into();
    let mut command = command(settings, fds, theirs.as_raw_fd(), watchdog);
    let spawned = tokio::task::spawn_blocking(move || {
        let result = command
            .spawn()
            .and_then(|mut intermediate| intermediate.wait());
        drop(theirs);
        result
    })
    .await
    .map_err(|e| HandOverError::Channel(format!("the spawning thread failed: {e}")))?;
    spawned.map_err(|source| HandOverError::Spawn { program, source })?;
    Ok(ours)
}

/// The new process's command: `the hand-over variable` names the inherited descriptors, systemd's
/// own variables are not passed on (but the watchdog's interval is), and the double fork
/// happens before exec.
fn command(
    settings: &HandOverSettings,
    fds: &[(&str, RawFd)],
    theirs_fd: RawFd,
    watchdog: Option<Duration>,
) -> std::process::Command {
    let mut spec = vec![format!("chan={theirs_fd}")];
    spec.extend(fds.iter().map(|(name, fd)| format!("{name}={fd}")));
    let mut command = std::process::Command::new(&settings.program);
    command
        .args(&settings.args)
        .env(settings.names.env_var, spec.join(","))
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("WATCHDOG_PID")
        .stdin(std::process::Stdio::null());
    match watchdog {
        Some(interval) => command.env("WATCHDOG_USEC", interval.as_micros().to_string()),
        None => command.env_remove("WATCHDOG_USEC"),
    };
    let mut inherit: Vec<RawFd> = fds.iter().map(|(_, fd)| *fd).collect();
    inherit.push(theirs_fd);
    // SAFETY: between fork and exec only async-signal-safe calls: fcntl, fork, getpid,
    // write, _exit.
    unsafe {
        command.pre_exec(move || {
            for fd in &inherit {
                let flags = libc::fcntl(*fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(*fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // The double fork: the intermediate exits at once, so the new process's
            // parent is the service manager (or init) before it is named main.
            match libc::fork() {
                -1 => Err(std::io::Error::last_os_error()),
                0 => {
                    let pid = libc::getpid().to_le_bytes();
                    if libc::write(theirs_fd, pid.as_ptr().cast(), pid.len()) != pid.len() as isize
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                }
                _ => libc::_exit(0),
            }
        });
    }
    command
}

/// The pid the grandchild wrote before exec: immediate, but bounded all the same.
async fn read_pid(
    reader: &mut BufReader<OwnedReadHalf>,
    deadline: tokio::time::Instant,
) -> Result<i32, HandOverError> {
    let mut pid_bytes = [0u8; 4];
    match tokio::time::timeout_at(deadline, reader.read_exact(&mut pid_bytes)).await {
        Ok(Ok(_)) => Ok(i32::from_le_bytes(pid_bytes)),
        Ok(Err(e)) => Err(HandOverError::Channel(format!(
            "the new process did not say its pid: {e}"
        ))),
        Err(_) => Err(HandOverError::Channel(
            "the new process did not say its pid in time".into(),
        )),
    }
}

/// Waits for `ready` (or `failed <why>`) from the new process until `deadline`.
async fn read_ready(
    reader: &mut BufReader<OwnedReadHalf>,
    deadline: tokio::time::Instant,
    pid: i32,
    settings: &HandOverSettings,
) -> Result<(), HandOverError> {
    let mut line = String::new();
    match tokio::time::timeout_at(deadline, reader.read_line(&mut line)).await {
        Err(_) => Err(HandOverError::TimedOut {
            pid,
            limit: humantime::format_duration(settings.ready_timeout).to_string(),
            setting: settings.names.ready_setting,
        }),
        Ok(Ok(0)) | Ok(Err(_)) => Err(HandOverError::Exited { pid }),
        Ok(Ok(_)) => match line.trim_end() {
            "ready" => Ok(()),
            line => Err(HandOverError::Failed {
                pid,
                why: match line.strip_prefix("failed ") {
                    Some(why) => why.to_string(),
                    None => format!("unexpected message {line:?}"),
                },
            }),
        },
    }
}

/// SIGKILL to a new process that failed. It is not our child (double fork), so the service
/// manager reaps it; its pid cannot be reused before then.
fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

impl Successor {
    /// Tells the new process it is the main one now, and waits (up to `timeout`) until it
    /// accepts connections. Returns the link that carries its stop requests.
    pub async fn confirm(mut self, timeout: Duration) -> SuccessorLink {
        let requests = CancellationToken::new();
        let fast = CancellationToken::new();
        if self.writer.write_all(b"main\n").await.is_err() {
            tracing::warn!(
                pid = self.pid,
                "the new process went away just after it was ready; stopping"
            );
            requests.cancel();
        } else {
            let mut line = String::new();
            match tokio::time::timeout(timeout, self.reader.read_line(&mut line)).await {
                Ok(Ok(n)) if n > 0 && line.trim_end() == "serving" => {}
                Ok(_) => {
                    tracing::warn!(pid = self.pid, "the new process went away after it became the main process; stopping");
                    requests.cancel();
                }
                Err(_) => tracing::warn!(
                    pid = self.pid,
                    "the new process did not say it accepts connections within {timeout:?}; handing over anyway"
                ),
            }
        }
        let (r, f) = (requests.clone(), fast.clone());
        let pid = self.pid;
        let mut reader = self.reader;
        let writer = self.writer;
        tokio::spawn(async move {
            // Kept open for as long as this process lives: its EOF tells the successor we exited.
            let _writer = writer;
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line).await {
                    Ok(0) | Err(_) => {
                        if !r.is_cancelled() {
                            tracing::warn!(
                                pid,
                                "the process this one handed over to has exited; stopping"
                            );
                        }
                        r.cancel();
                        // Keep the write half until the process exits.
                        std::future::pending::<()>().await;
                    }
                    Ok(_) => match line.trim_end() {
                        "stop" => r.cancel(),
                        "fast" => {
                            r.cancel();
                            f.cancel();
                        }
                        _ => {}
                    },
                }
            }
        });
        SuccessorLink {
            pid: self.pid,
            stop: requests,
            fast,
        }
    }
}

/// The retiring process's view of its successor.
pub struct SuccessorLink {
    /// The successor's pid.
    pub pid: i32,
    /// Cancelled when the successor forwards a stop, or exits.
    pub stop: CancellationToken,
    /// Cancelled when the forwarded stop is a fast one.
    pub fast: CancellationToken,
}
