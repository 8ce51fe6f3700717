//! The control socket: how `shiftd reload` (the unit's `ExecReload=`) asks the running
//! process for a hand-over and learns how it ended, so `systemctl reload` fails when the new
//! process could not take over.
//!
//! A Unix stream socket in the state directory (no extra mount in the sandbox), readable by
//! the service's user and group only; a peer must also run as the service's user or root
//! (checked with `SO_PEERCRED`). One request per connection: the client writes `reload`, the
//! server answers one line, `ok <what happened>` or `error <why>`, and closes.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How long a connected client may take to send its request line.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A hand-over asked for on the control socket; the answer goes back on `reply`.
pub struct HandOverRequest {
    /// `Ok(what happened)` or `Err(why not)`, sent back to the client as one line.
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// The listening control socket.
pub struct ControlSocket {
    /// Accepting requests.
    pub listener: UnixListener,
    /// Where it listens (`shiftd reload` connects there).
    pub path: PathBuf,
}

impl ControlSocket {
    /// Takes the socket a predecessor passed, or binds `path` (removing a stale socket left by
    /// a process that was killed).
    pub fn acquire(inherited: Option<RawFd>, path: &Path) -> std::io::Result<Self> {
        let std = match inherited {
            // SAFETY: passed to this process alone by its predecessor (see handover.rs).
            Some(fd) => unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) },
            None => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt;
                    if meta.file_type().is_socket() {
                        // A live process answers: it is not ours to take.
                        if StdUnixStream::connect(path).is_ok() {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::AddrInUse,
                                "another process is listening on it (two services on one state directory?)",
                            ));
                        }
                        std::fs::remove_file(path)?;
                    }
                }
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                std::os::unix::net::UnixListener::bind(path)?
            }
        };
        std.set_nonblocking(true)?;
        Ok(Self {
            listener: UnixListener::from_std(std)?,
            path: path.to_path_buf(),
        })
    }

    /// Accepts requests until `stop`, passing each hand-over request to `requests`.
    pub fn spawn(self, requests: mpsc::Sender<HandOverRequest>, stop: CancellationToken) {
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => break,
                    accepted = self.listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(serve_one(stream, requests.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            // The descriptor closes here; the socket itself lives on in the successor, if any.
        });
    }
}

async fn serve_one(stream: UnixStream, requests: mpsc::Sender<HandOverRequest>) {
    // SAFETY: getuid cannot fail.
    let own = unsafe { libc::getuid() };
    let allowed = match stream.peer_cred() {
        Ok(cred) => cred.uid() == own || cred.uid() == 0,
        Err(_) => false,
    };
    let (read, mut write) = stream.into_split();
    if !allowed {
        let _ = write
            .write_all(b"error only root or the service's own user may ask for a reload\n")
            .await;
        return;
    }
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read);
    let answer = match tokio::time::timeout(REQUEST_READ_TIMEOUT, reader.read_line(&mut line)).await
    {
        Ok(Ok(_)) if line.trim_end() == "reload" => {
            let (tx, rx) = oneshot::channel();
            if requests.send(HandOverRequest { reply: tx }).await.is_err() {
                Err("the service is stopping".to_string())
            } else {
                rx.await
                    .unwrap_or_else(|_| Err("the service is stopping".to_string()))
            }
        }
        Ok(_) => Err(format!(
            "unknown request {:?}; the only one is \"reload\"",
            line.trim_end()
        )),
        Err(_) => Err("no request within 5s".to_string()),
    };
    let text = match answer {
        Ok(what) => format!("ok {what}\n"),
        Err(why) => format!("error {why}\n"),
    };
    let _ = write.write_all(text.as_bytes()).await;
}

/// The client side: asks the process listening on `path` for a hand-over and waits up to
/// `timeout` for the outcome.
pub fn request_reload(path: &Path, timeout: Duration) -> Result<String, String> {
    let mut stream = StdUnixStream::connect(path).map_err(|e| {
        format!(
            "cannot reach the running service at {}: {e}; is the service running?",
            path.display()
        )
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"reload\n")
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!(
                "no answer within {}; the journal says what the service is doing",
                humantime::format_duration(timeout)
            ),
            _ => format!("cannot read the answer: {e}"),
        })?;
    let line = line.trim_end();
    if let Some(what) = line.strip_prefix("ok ") {
        Ok(what.to_string())
    } else if let Some(why) = line.strip_prefix("error ") {
        Err(why.to_string())
    } else if line.is_empty() {
        Err("the service closed the connection without an answer (did it stop?)".into())
    } else {
        Err(format!("unexpected answer {line:?}"))
    }
}
