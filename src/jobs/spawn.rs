//! Starts job processes so that they never outlive shiftd: each gets `PR_SET_PDEATHSIG`
//! (SIGKILL when its parent dies), set between fork and exec.
//!
//! The kernel sends that signal when the *thread* that forked the child exits, not the
//! process. Tokio's worker and blocking threads come and go (a blocking thread exits after
//! ten idle seconds), so every job is forked from one thread of our own that lives as long
//! as the process does. Under systemd the cgroup catches what escapes a process group
//! (`setsid`); outside it (`cargo run`, the tests) this is what keeps a SIGKILLed service
//! from leaving its jobs running.

use std::io;
use std::sync::mpsc;

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

type Request = (Command, oneshot::Sender<io::Result<Child>>);

/// The handle to the spawning thread.
#[derive(Clone)]
pub struct Spawner {
    requests: mpsc::Sender<Request>,
}

impl Spawner {
    /// Starts the spawning thread; it enters the current Tokio runtime so the children it
    /// makes are reaped by it. Must be called inside a runtime.
    pub fn start() -> io::Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        let (requests, incoming) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("shiftd-spawner".into())
            .spawn(move || {
                let _entered = runtime.enter();
                // Ends when every Spawner is dropped; the children then lose nothing,
                // because the process is exiting.
                while let Ok((mut command, reply)) = incoming.recv() {
                    let _ = reply.send(spawn_tied(&mut command));
                }
            })?;
        Ok(Self { requests })
    }

    /// Spawns `command` from the spawning thread, tied to this process's life.
    pub async fn spawn(&self, command: Command) -> io::Result<Child> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((command, reply))
            .map_err(|_| io::Error::other("the job spawning thread has ended"))?;
        answer
            .await
            .map_err(|_| io::Error::other("the job spawning thread has ended"))?
    }
}

fn spawn_tied(command: &mut Command) -> io::Result<Child> {
    let parent = nix::unistd::getpid();
    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(io::Error::from)?;
            // The parent may have died between fork and prctl: then nobody would signal us.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::other("shiftd exited while starting the job"));
            }
            Ok(())
        });
    }
    command.spawn()
}
