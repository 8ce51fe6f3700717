//! The command line, defined once: parsed by `main` and rendered as the man page.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// shiftd: a systemd-native HTTP job service. Jobs and requests live through restarts,
/// upgrades and crashes.
#[derive(Debug, Parser)]
#[command(name = "shiftd", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file. Default: /etc/shiftd/shiftd.toml if it exists, else built-in
    /// defaults. Any key may be overridden as SHIFTD_<SECTION>__<KEY>, e.g. SHIFTD_HTTP__LISTEN.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Serve HTTP and run jobs (the default). Under systemd: Type=notify, socket activation,
    /// watchdog. Exit codes: 0 clean stop, 75 stopped but work was cut, 69 a required
    /// startup step failed, 78 configuration error.
    Serve,
    /// Validate the configuration, print the effective settings and the total stop budget,
    /// and compare them with the installed systemd unit. Exit 0, or 78 when something does not fit.
    Check {
        /// Print nothing unless something is wrong (for scripts).
        #[arg(long)]
        quiet: bool,
        /// Do not ask systemd about the installed unit (a query of about 100 ms): validate the
        /// configuration alone, e.g. a new file before it is put in place.
        #[arg(long)]
        skip_unit: bool,
    },
    /// Hand the running service over to a new process of /usr/bin/shiftd (a new binary after
    /// an upgrade, and the configuration as it is now) while the old one keeps serving, and
    /// wait for the outcome: exit 0 once the new process serves, 1 with the reason when it
    /// could not start (the old one then keeps serving). This is the unit's ExecReload=, so
    /// `systemctl reload shiftd` fails when the hand-over does.
    Reload {
        /// How long to wait for the outcome. Default: the startup budget
        /// (startup.step_timeout × 4) plus 5s.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Print the man page shiftd(8) in roff.
    #[command(hide = true)]
    Man,
}

/// Exit codes, from sysexits.h where one fits.
pub mod exit {
    /// A clean stop.
    pub const OK: u8 = 0;
    /// Anything unexpected.
    pub const FAILURE: u8 = 1;
    /// A required startup step failed (database unreachable, port taken).
    pub const UNAVAILABLE: u8 = 69;
    /// Stopped, but a stage had to cut work (a request or job did not finish in its budget).
    pub const WORK_CUT: u8 = 75;
    /// The configuration is invalid; systemd must not restart (RestartPreventExitStatus=78).
    pub const CONFIG: u8 = 78;
}

/// The man page, from the same definition clap parses.
pub fn man_page() -> std::io::Result<Vec<u8>> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd)
        .section("8")
        .manual("System Administration");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    out.extend_from_slice(MAN_EXTRA.as_bytes());
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// Sections clap cannot derive: files, environment, exit status, sandboxing.
const MAN_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/shiftd/shiftd.toml\fR
The configuration: [http], [database], [startup], [shutdown], [log], [jobs], [auth], [notices] and [tasks.NAME].
.TP
\fI/var/lib/shiftd/shiftd.db\fR
The embedded SQLite database (StateDirectory=shiftd).
.TP
\fI/var/lib/shiftd/control.sock\fR
Where \fBshiftd reload\fR asks the running process for a hand-over (only root and the service's user may).
.TP
\fI/etc/nginx/sites-available/shiftd\fR
An nginx site proxying to the socket; enable it with a link in sites-enabled.
.TP
\fI/usr/libexec/shiftd/post-install-check\fR
Checks the user, the units, readiness through the socket and \fBshiftd check\fR, and says what is wrong.
.SH ENVIRONMENT
.TP
\fBSHIFTD_\fISECTION\fB__\fIKEY\fR
Overrides one configuration key, e.g. SHIFTD_HTTP__LISTEN=127.0.0.1:9000.
.SH NOTICES
A task with \fBnotify_url\fR gets a JSON POST when one of its jobs ends (\fBjob.succeeded\fR,
\fBjob.failed\fR, \fBjob.cancelled\fR) or an attempt is interrupted (\fBjob.interrupted\fR:
reason \fBstop\fR when the service's stop requeued it, \fBlease_expired\fR when a crash left
it to another attempt). Each notice is written to the database with the job's state change
and sent at least once, with the same \fIid\fR (also in the \fBShiftd-Notice-Id\fR header)
on every try: a receiver deduplicates on it. With \fBnotify_secret_file\fR each request carries
\fBShiftd-Timestamp\fR (Unix seconds) and \fBShiftd-Signature: v1=\fIhex\fR, the HMAC-SHA256
of \fItimestamp\fR.\fIbody\fR under the file's content (trailing whitespace removed). A 2xx
answer is delivery; anything else, or no answer within notices.timeout, is tried again after
notices.backoff, doubling up to notices.backoff_max. After notices.max_attempts tries or
notices.max_age the notice is dropped with a warning that names the setting. The stop never
waits for a receiver: what is not delivered is sent by the next process.
.SH SIGNALS
SIGTERM, SIGINT: graceful stop within shutdown.grace; a second one, or SIGQUIT: fast stop.
SIGHUP: re-read the configuration in the running process. SIGUSR2: hand over to a new process
(as \fBshiftd reload\fR, outcome in the log only). SIGUSR1: a status report in the log.
.SH RELOAD AND UPGRADE
\fBsystemctl reload shiftd\fR runs \fBshiftd reload\fR: the running process starts
/usr/bin/shiftd with the listening socket, keeps serving until the new process is ready
(migrations included), makes it the main process, then drains its requests and lets its
running jobs finish untouched before it exits. A new process that cannot start is killed,
the old one keeps serving, and the reload fails with the reason. Package upgrades reload the
same way; the socket is never restarted.
.SH EXIT STATUS
0 clean stop; 75 stopped but a shutdown stage cut work (the warning names the setting to raise);
69 a required startup step failed; 78 configuration error.
.SH SANDBOX
The unit runs shiftd and its jobs in a systemd sandbox: the file system is read-only except
/var/lib/shiftd. To let tasks write elsewhere, run \fBsystemctl edit shiftd\fR and add
.RS
.nf
[Service]
ReadWritePaths=/srv/backups
.fi
.RE
then \fBsystemctl restart shiftd\fR. Other drop-ins an operator may need:
\fBReadOnlyPaths=\fR to show tasks more, \fBProtectHome=read-only\fR to let them read home
directories, \fBRestrictAddressFamilies=AF_NETLINK\fR for tools that list interfaces,
\fBSystemCallFilter=@resources\fR for tools that change priorities or limits. Raise
\fBTimeoutStopSec=\fR when shutdown.grace grows; \fBshiftd check\fR prints the value.
"#;
