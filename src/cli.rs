//! The command line, defined once: parsed by `main` and rendered as the man page.

use std::path::PathBuf;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

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

#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
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
    /// could not start (the old one then keeps serving). Refused first (exit 78, nothing
    /// started) when the configuration is invalid or the unit's timeouts do not fit it, as
    /// `shiftd check` would say. This is the unit's ExecReload=, so `systemctl reload
    /// shiftd` fails when the hand-over does.
    Reload {
        /// How long to wait for the outcome. Default: the startup budget
        /// (startup.step_timeout × 4) plus 5s.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Print the man page shiftd(8) in roff.
    #[command(hide = true)]
    Man,
    /// Start, show, list, follow and cancel jobs of the running service (a client of its
    /// HTTP API; see CLIENT below).
    Job {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: JobAction,
    },
    /// List the configured tasks, pause and resume them (a client of the HTTP API).
    Task {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: TaskAction,
    },
}

/// How the client reaches the service and prints what it says.
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct ClientArgs {
    /// The service's base URL, e.g. http://127.0.0.1:8080. Default: the address of
    /// shiftd.socket, else http.listen of the configuration (0.0.0.0 and :: mean loopback).
    #[arg(long, global = true, env = "SHIFTD_URL", value_name = "URL")]
    pub url: Option<String>,
    /// A file holding the bearer token to send (see [auth] in the configuration).
    #[arg(long, global = true, env = "SHIFTD_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<std::path::PathBuf>,
    /// Print the API's JSON as it is, for scripts, instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Deadline of each request (connecting and the answer's head). A --follow stream
    /// silent for three times this is reopened where it was.
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `shiftd job …`
#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum JobAction {
    /// Start a job of TASK and print it (with --wait, once it has ended).
    Start {
        /// The task, as `shiftd task list` names it.
        task: String,
        /// A parameter, NAME=VALUE; repeat for each.
        #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Repeating a start with the same key and parameters within 24 h names the same job.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        /// Run it no sooner than this long from now, e.g. 10m.
        #[arg(long, value_name = "DURATION", conflicts_with = "run_at")]
        delay: Option<String>,
        /// Run it no sooner than this time (RFC 3339, e.g. 2026-01-31T03:00:00Z).
        #[arg(long, value_name = "TIME")]
        run_at: Option<String>,
        /// Print the job's output as it comes until the job ends; exit as --wait does.
        #[arg(long)]
        follow: bool,
        /// Wait until the job ends: exit 0 if it succeeded, 3 if it failed or was cancelled.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        waiting: WaitArgs,
    },
    /// Show a job and the last lines of its output.
    Get {
        /// The job id.
        id: String,
    },
    /// List jobs, newest first.
    List {
        /// Only jobs of this task.
        #[arg(long, value_name = "TASK")]
        task: Option<String>,
        /// Only jobs in this state (queued, scheduled, running, succeeded, failed, cancelled).
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        /// At most this many jobs (fetched a page of up to 500 at a time).
        #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Print a job's output; with --follow, also the lines still to come, until it ends.
    Log {
        /// The job id.
        id: String,
        /// Keep printing new lines until the job ends (across restarts of the service).
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        waiting: WaitArgs,
    },
    /// Cancel a job: a queued one never runs, a running one is stopped.
    Cancel {
        /// The job id.
        id: String,
    },
}

/// Deadlines of --wait and --follow.
#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct WaitArgs {
    /// With --wait or --follow: how long to keep trying while the service cannot be reached
    /// or answers 503 (a restart, an upgrade) before giving up with exit 69.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub reconnect_for: Duration,
    /// With --wait or --follow: give up (exit 75) when the job has not ended after this long.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub wait_for: Duration,
}

/// `shiftd task …`
#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum TaskAction {
    /// The configured tasks this token may use, paused or not, with their next scheduled run.
    List,
    /// Stop claiming queued jobs of TASK on every node (running ones go on).
    Pause {
        /// The task.
        task: String,
    },
    /// Let jobs of TASK be claimed again.
    Resume {
        /// The task.
        task: String,
    },
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

    /// `shiftd job …`/`shiftd task …`: the job ended, but did not succeed (--wait, --follow).
    pub const JOB_NOT_SUCCEEDED: u8 = 3;
    /// `shiftd job …`/`shiftd task …`: the API answered 404 (no such job or task).
    pub const NOT_FOUND: u8 = 4;
    /// `shiftd job …`/`shiftd task …`: the API refused the request (400, 401, 403, 409, 422…).
    pub const REFUSED: u8 = 5;
    /// `shiftd job …`/`shiftd task …`: the job had not ended within --wait-for.
    pub const STILL_RUNNING: u8 = 75;
    /// `shiftd job …`/`shiftd task …`: whoever read the output closed it (`| head`), as a
    /// shell reports a writer ended by SIGPIPE.
    pub const OUTPUT_CLOSED: u8 = 141;
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
    out.extend_from_slice(MAN_CLIENT.as_bytes());
    out.extend_from_slice(client_commands(&Cli::command()).as_bytes());
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// Sections clap cannot derive: files, environment, exit status, sandboxing.
const MAN_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/shiftd/shiftd.toml\fR
The configuration: [http], [database], [startup], [shutdown], [log], [jobs], [auth], [notices], [ui] and [tasks.NAME].
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
.SH DELAYED JOBS AND SCHEDULES
A start request may carry \fB"delay": "10m"\fR or \fB"run_at": "2026-11-22T03:00:00+01:00"\fR
(a run_at in the past means now): the job is \fBscheduled\fR
until then. A task with \fBschedule = "0 3 * * *"\fR (cron, five fields, or six with a leading
seconds field), \fBtimezone = "Europe/Berlin"\fR (default UTC) gets one job, without
parameters, at each occurrence, enqueued once across all processes sharing the database.
After downtime \fBcatch_up = "latest"\fR (default) runs the latest missed occurrence once,
\fB"none"\fR skips missed ones; a new or changed schedule catches nothing up.
.SH DASHBOARD
\fB/ui/\fR on the API's own port is a dashboard for people: the state of the service and its
queue, the last ten stops with each stage against its budget, the jobs (filtered by task and
state), each job with its log as it is written, and the tasks, with pause, resume and a start
form. Log in with an API token: the session cookie holds no secret, lasts \fB[ui] session_ttl\fR
(default 12h), ends when that token is removed or changed, and may see and do what the token
may over the API. Forms carry a CSRF token; a login sent from another site is refused. With no
tokens configured the dashboard is read-only. It needs no asset from another host.
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

/// Each client command with its usage, what it does and its own options, in roff (clap's
/// man renderer shows only the top-level subcommands).
fn client_commands(cli: &clap::Command) -> String {
    let roff = |text: &str| text.replace('\\', "\\e").replace('-', "\\-");
    let mut out = String::from(".SS Commands\n");
    for group in ["job", "task"] {
        let Some(group) = cli.find_subcommand(group) else {
            continue;
        };
        for action in group.get_subcommands() {
            let mut usage = format!("shiftd {} {}", group.get_name(), action.get_name());
            for arg in action.get_positionals() {
                usage.push_str(&format!(" {}", arg.get_id().as_str().to_uppercase()));
            }
            out.push_str(&format!(".TP\n\\fB{}\\fR\n", roff(&usage)));
            if let Some(about) = action.get_about() {
                out.push_str(&format!("{}\n", roff(&about.to_string())));
            }
            for arg in action.get_arguments() {
                if arg.is_positional() || arg.is_global_set() || arg.get_id() == "help" {
                    continue;
                }
                let Some(long) = arg.get_long() else {
                    continue;
                };
                let mut name = match arg.get_short() {
                    Some(short) => format!("-{short}, --{long}"),
                    None => format!("--{long}"),
                };
                if let Some(value) = arg
                    .get_value_names()
                    .and_then(|v| v.first())
                    .filter(|_| arg.get_action().takes_values())
                {
                    name.push_str(&format!(" {value}"));
                }
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                let default = match arg.get_default_values().first() {
                    Some(d) => format!(" (default {})", d.to_string_lossy()),
                    None => String::new(),
                };
                out.push_str(&format!(
                    ".RS\n.TP\n\\fB{}\\fR\n{}{}\n.RE\n",
                    roff(&name),
                    roff(&help),
                    roff(&default)
                ));
            }
        }
    }
    out.push_str(".PP\nEvery command also takes \\fB\\-\\-url\\fR, \\fB\\-\\-token\\-file\\fR, \\fB\\-\\-json\\fR, \\fB\\-\\-timeout\\fR and \\fB\\-\\-config\\fR.\n");
    out
}

/// The client commands: where they connect, examples, exit codes.
const MAN_CLIENT: &str = r#".SH CLIENT
\fBshiftd job\fR and \fBshiftd task\fR talk to the running service over its HTTP API.
They connect to \fB--url\fR (or $SHIFTD_URL); else to the address of \fBshiftd.socket\fR
(asked of systemctl, when there is one); else to http.listen of the configuration
(\fB--config\fR); 0.0.0.0 and :: mean loopback. \fB--token-file\fR (or $SHIFTD_TOKEN_FILE)
names a file holding the bearer token. Tables are for people; \fB--json\fR prints the API's
JSON as it is. Every request has a deadline (\fB--timeout\fR, 10s).
.PP
\fB--follow\fR prints output lines as they are written and survives a restart, an upgrade or
a crash of the service: it reconnects with backoff for up to \fB--reconnect-for\fR (60s) and
resumes after the last line it printed, so no line is printed twice or lost. It ends when the
job ends.
.PP
.nf
shiftd job start backup \-p target=db1 \-\-follow
shiftd job start report \-p day=2026\-01\-31 \-\-delay 10m
shiftd job start backup \-p target=db1 \-\-wait \-\-json
shiftd job list \-\-task backup \-\-state failed \-\-limit 20
shiftd job get 42
shiftd job log 42 \-\-follow
shiftd job cancel 42
shiftd task list
shiftd task pause backup
shiftd task resume backup
.fi
.PP
Exit status of the client: 0 done (with \fB--wait\fR or \fB--follow\fR: the job succeeded);
3 the job ended but did not succeed (failed or cancelled); 4 not found (no such job or task);
5 refused (a bad parameter, a token that may not, a job already ended: the API's message is
printed); 69 cannot connect, or the service was unavailable for longer than
\fB--reconnect-for\fR; 75 the job had not ended within \fB--wait-for\fR (24h);
78 the configuration or the token file cannot be read; 141 the reader of the output
closed it (as \fBhead\fR does); 1 anything else; 2 a usage error.
"#;
