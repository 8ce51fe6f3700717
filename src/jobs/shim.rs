//! The head of every job's process group: `shiftd __job-shim COMMAND ARGS…`.
//!
//! `PR_SET_PDEATHSIG` reaches only the process shiftd forked, not what that process starts
//! (`sh -c 'a; b'`). So shiftd forks this small shim, which carries the death signal, starts
//! the command in the same process group, and waits for it. When shiftd dies (a SIGKILL
//! outside systemd), the shim kills the whole group; otherwise it mirrors the command's end
//! exactly: the same exit status, or the same signal. It adds one exec per job.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};

use nix::sys::signal::{self, SigHandler, SigSet, Signal};
use nix::unistd::{getpgrp, getppid};

/// The hidden first argument that makes the binary a shim.
pub const SHIM_ARG: &str = "__job-shim";

/// Runs `argv` as the job and returns the exit code for the shim (when the command was
/// killed by a signal, the shim kills itself with the same signal instead of returning).
pub fn run(argv: Vec<OsString>) -> u8 {
    let Some(program) = argv.first() else {
        eprintln!("shiftd {SHIM_ARG}: no command given");
        return 2;
    };
    let parent = getppid();
    // SIGCHLD (the command ended) and SIGTERM (shiftd died, or a stop of the group) are
    // blocked and taken with sigwait: no handler, no polling, and none is lost between a
    // check and the wait. The command gets an empty mask back before it runs.
    let mut waited = SigSet::empty();
    waited.add(Signal::SIGCHLD);
    waited.add(Signal::SIGTERM);
    if waited.thread_block().is_err()
        || nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).is_err()
        || getppid() != parent
    {
        eprintln!("shiftd {SHIM_ARG}: shiftd is gone or the death signal cannot be set; not starting the job");
        return 1;
    }
    let mut command = std::process::Command::new(program);
    command.args(&argv[1..]);
    // SAFETY: only sigprocmask (async-signal-safe) between fork and exec.
    unsafe {
        command.pre_exec(|| SigSet::all().thread_unblock().map_err(std::io::Error::from));
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!(
                "cannot start {}: {e}; check the task's command",
                program.to_string_lossy()
            );
            return 127;
        }
    };
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if let Some(sig) = status.signal() {
                    mirror_signal(sig);
                }
                return status.code().unwrap_or(1).clamp(0, 255) as u8;
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("shiftd {SHIM_ARG}: cannot wait for the job: {e}");
                return 1;
            }
        }
        if getppid() != parent {
            // shiftd died: nobody will record this job, and it runs again once its lease
            // expires. Take the whole group down with us.
            let _ = signal::killpg(getpgrp(), Signal::SIGKILL);
        }
        // A SIGTERM while shiftd lives is a stop of the whole group: the command got it too,
        // and its end is mirrored when it comes.
        let _ = waited.wait();
    }
}

/// Ends the shim with the signal that ended the command, so shiftd sees the same end.
fn mirror_signal(sig: i32) {
    let Ok(sig) = Signal::try_from(sig) else {
        return;
    };
    // No core file of the shim for a command that dumped core (SIGSEGV, SIGABRT…).
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    // SAFETY: restoring the default disposition.
    unsafe {
        let _ = signal::signal(sig, SigHandler::SigDfl);
    }
    let mut only = SigSet::empty();
    only.add(sig);
    let _ = only.thread_unblock();
    let _ = signal::raise(sig);
}
