//! The head of every job's process group: `shiftd __job-shim COMMAND ARGS…`.
//!
//! `PR_SET_PDEATHSIG` reaches only the process shiftd forked, not what that process starts
//! (`sh -c 'a; b'`). So shiftd forks this small shim, which carries the death signal, starts
//! the command in the same process group, and waits for it. When shiftd dies (a SIGKILL
//! outside systemd), the shim kills the whole group; otherwise it mirrors the command's end
//! exactly: the same exit status, or the same signal. It adds one exec per job.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::{getpgrp, getppid};

/// The hidden first argument that makes the binary a shim.
pub const SHIM_ARG: &str = "__job-shim";

static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: nix::libc::c_int) {
    TERMINATED.store(true, Ordering::SeqCst);
}

/// Runs `argv` as the job and returns the exit code for the shim (when the command was
/// killed by a signal, the shim kills itself with the same signal instead of returning).
pub fn run(argv: Vec<OsString>) -> u8 {
    let Some(program) = argv.first() else {
        eprintln!("shiftd {SHIM_ARG}: no command given");
        return 2;
    };
    let parent = getppid();
    // A handler, not SIG_IGN: a handler is reset by exec, so the command still gets the
    // default SIGTERM; the shim itself waits for the command to end and then mirrors it.
    let handler = SigAction::new(
        SigHandler::Handler(on_terminate),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic.
    if unsafe { signal::sigaction(Signal::SIGTERM, &handler) }.is_err()
        || nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).is_err()
        || getppid() != parent
    {
        eprintln!("shiftd {SHIM_ARG}: shiftd is gone or the death signal cannot be set; not starting the job");
        return 1;
    }
    let mut child = match std::process::Command::new(program).args(&argv[1..]).spawn() {
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
        if TERMINATED.load(Ordering::SeqCst) && getppid() != parent {
            // shiftd died: nobody will record this job, and it runs again elsewhere once
            // its lease expires. Take the whole group down with us.
            let _ = signal::killpg(getpgrp(), Signal::SIGKILL);
        }
        // A signal ends the sleep early; polling also covers one that came just before it.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ends the shim with the signal that ended the command, so shiftd sees the same end.
fn mirror_signal(sig: i32) {
    let Ok(sig) = Signal::try_from(sig) else {
        return;
    };
    // SAFETY: restoring the default disposition.
    unsafe {
        let _ = signal::signal(sig, SigHandler::SigDfl);
    }
    let _ = signal::raise(sig);
}
