//! Compares the installed systemd unit's timeouts with the service's own budgets.
//!
//! `shiftd check` and `shiftd reload` call [`check_installed_unit`]. It asks systemd for the unit's
//! `TimeoutStopUSec`, `TimeoutStartUSec` and `WatchdogUSec` (with a deadline: `systemctl`
//! is killed after 3 s) and says whether the stop and the startup fit inside them. When
//! they do not, the lines end with the exact drop-in to write. Off systemd it skips.
//!
//! Reading systemd's answer ([`evaluate`]), its time spans ([`parse_timespan`]) and the
//! fit rules ([`fit`]) are pure functions, tested without systemd. This module uses
//! nothing but the standard library.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the service needs from its unit, taken from the configuration.
pub struct Budgets {
    /// `shutdown.grace`: the whole stop, every stage included.
    pub stop_grace: Duration,
    /// The longest startup the configuration allows (every startup step at its limit).
    pub startup_total: Duration,
}

/// The verdict of [`check_installed_unit`]: each variant carries lines for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitFit {
    /// The check could not run here; the line says why.
    Skipped(String),
    /// Every timeout fits; one line per setting.
    Fits(Vec<String>),
    /// At least one timeout is too short; the last lines are the drop-in to write.
    DoesNotFit(Vec<String>),
}

/// Time the process needs after `shutdown.grace` to exit: the unit's `TimeoutStopSec` is
/// `shutdown.grace` plus this (60s + 10s = 70s in the shipped unit).
pub const STOP_MARGIN: Duration = Duration::from_secs(10);

/// Slack on top of the longest startup: `TimeoutStartSec` is `startup_total` plus this.
pub const START_MARGIN: Duration = Duration::from_secs(10);

/// The skip reason when there is no systemd to ask.
pub const NOT_UNDER_SYSTEMD: &str = "not running under systemd: skipped the unit check";

/// How long `systemctl show` may take before it is killed.
const SYSTEMCTL_DEADLINE: Duration = Duration::from_secs(3);

/// The properties asked for. `LoadState` tells an installed unit from systemd's defaults,
/// which `systemctl show` prints for a unit that does not exist.
const PROPERTIES: &str = "LoadState,TimeoutStopUSec,TimeoutStartUSec,WatchdogUSec";

/// A systemd time span as `systemctl show` prints it: a duration, or `infinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timespan {
    Finite(Duration),
    Infinity,
}

/// The three timeouts of an installed unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitTimeouts {
    pub stop: Timespan,
    pub start: Timespan,
    /// `Finite(0)` (or `Infinity`) means the watchdog is off.
    pub watchdog: Timespan,
}

/// Asks systemd about `unit` (e.g. "shiftd") and compares its timeouts with `budgets`.
pub fn check_installed_unit(unit: &str, budgets: &Budgets) -> UnitFit {
    // sd_booted(3): this directory exists only when systemd is the running init.
    if !Path::new("/run/systemd/system").is_dir() {
        return UnitFit::Skipped(NOT_UNDER_SYSTEMD.to_string());
    }
    match systemctl_show(unit) {
        Ok(text) => evaluate(unit, &text, budgets),
        Err(skip) => UnitFit::Skipped(skip),
    }
}

/// Judges the output of `systemctl show UNIT -p LoadState,TimeoutStopUSec,...`.
pub fn evaluate(unit: &str, show_output: &str, budgets: &Budgets) -> UnitFit {
    let value = |key: &str| {
        show_output
            .lines()
            .find_map(|line| {
                line.strip_prefix(key)
                    .and_then(|rest| rest.strip_prefix('='))
            })
            .map(str::trim)
    };
    match value("LoadState") {
        Some("loaded") => {}
        Some(state) => {
            return UnitFit::Skipped(format!(
                "the unit {unit} is not installed here (LoadState={state}): skipped the unit check"
            ))
        }
        None => {
            return UnitFit::Skipped(format!(
                "systemctl did not report the LoadState of {unit}: skipped the unit check"
            ))
        }
    }
    let timespan = |key: &str| -> Result<Timespan, String> {
        let text = value(key).ok_or_else(|| format!("systemctl did not report {key}"))?;
        parse_timespan(text).map_err(|e| format!("cannot read {key}={text}: {e}"))
    };
    let timeouts = match (
        timespan("TimeoutStopUSec"),
        timespan("TimeoutStartUSec"),
        timespan("WatchdogUSec"),
    ) {
        (Ok(stop), Ok(start), Ok(watchdog)) => UnitTimeouts {
            stop,
            start,
            watchdog,
        },
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return UnitFit::Skipped(format!("{e}: skipped the unit check"))
        }
    };
    fit(unit, &timeouts, budgets)
}

/// The fit rules. The stop fits when `TimeoutStopSec >= shutdown.grace + STOP_MARGIN`,
/// the startup when `TimeoutStartSec >= startup_total + START_MARGIN`; `infinity` always
/// fits. The watchdog is reported, never judged: shiftd pings at half of any interval.
pub fn fit(unit: &str, timeouts: &UnitTimeouts, budgets: &Budgets) -> UnitFit {
    let mut lines = Vec::new();
    let mut drop_in = Vec::new();
    let stop_needs = budgets.stop_grace + STOP_MARGIN;
    let start_needs = budgets.startup_total + START_MARGIN;
    let checks = [
        Requirement {
            setting: "TimeoutStopSec",
            phase: "the stop",
            limit: timeouts.stop,
            needs: stop_needs,
            sum: format!(
                "shutdown.grace {} + {} margin = {}",
                show(budgets.stop_grace),
                show(STOP_MARGIN),
                show(stop_needs)
            ),
            otherwise: "systemd would SIGKILL shiftd and its jobs in the middle of the drain",
        },
        Requirement {
            setting: "TimeoutStartSec",
            phase: "the startup",
            limit: timeouts.start,
            needs: start_needs,
            sum: format!(
                "{} at most (startup.step_timeout per step) + {} margin = {}",
                show(budgets.startup_total),
                show(START_MARGIN),
                show(start_needs)
            ),
            otherwise: "systemd would kill a slow but healthy start",
        },
    ];
    for check in checks {
        let setting = check.setting;
        match check.limit {
            Timespan::Infinity => lines.push(format!(
                "{setting}=infinity: systemd never cuts {} short; shiftd's own budgets bound it ({})",
                check.phase, check.sum
            )),
            Timespan::Finite(limit) if limit >= check.needs => lines.push(format!(
                "{setting}={} fits {}: {}",
                show(limit),
                check.phase,
                check.sum
            )),
            Timespan::Finite(limit) => {
                lines.push(format!(
                    "{setting}={} is too short for {}: {}; {}",
                    show(limit),
                    check.phase,
                    check.sum,
                    check.otherwise
                ));
                drop_in.push(format!("{setting}={}s", whole_seconds_up(check.needs)));
            }
        }
    }

    lines.push(match timeouts.watchdog {
        Timespan::Finite(interval) if !interval.is_zero() => {
            format!(
                "WatchdogSec={}: shiftd pings every {}",
                show(interval),
                show(interval / 2)
            )
        }
        _ => "WatchdogSec is off: a hung shiftd is not restarted by systemd".to_string(),
    });

    if drop_in.is_empty() {
        return UnitFit::Fits(lines);
    }
    lines.push(format!(
        "Fix: run `systemctl edit {unit}` and write these lines (saving reloads systemd):"
    ));
    lines.push("[Service]".to_string());
    lines.extend(drop_in);
    UnitFit::DoesNotFit(lines)
}

/// One timeout of the unit and what it must hold.
struct Requirement {
    setting: &'static str,
    /// "the stop", "the startup".
    phase: &'static str,
    limit: Timespan,
    needs: Duration,
    /// How `needs` adds up, for people.
    sum: String,
    /// What happens when the timeout is shorter.
    otherwise: &'static str,
}

/// Parses a systemd time span: "1min 10s", "70s", "500ms", "1.5s", "1h30min", "0",
/// "infinity". A number without a unit is seconds, as in unit files.
pub fn parse_timespan(text: &str) -> Result<Timespan, String> {
    let text = text.trim();
    if text == "infinity" {
        return Ok(Timespan::Infinity);
    }
    if text.is_empty() {
        return Err("empty time span".to_string());
    }
    let mut total_ns: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() {
            return Err(format!("`{text}`: expected a number at `{rest}`"));
        }
        // systemd allows blanks between a number and its unit ("5 min").
        let after = after.trim_start();
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_ns = unit_nanoseconds(unit)
            .ok_or_else(|| format!("`{text}`: unknown time unit `{unit}`"))?;
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(format!("`{text}`: `{number}` is not a number"));
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole
                .parse()
                .map_err(|_| format!("`{text}`: `{number}` is too large"))?
        };
        let mut part = whole
            .checked_mul(unit_ns)
            .ok_or_else(|| format!("`{text}` is too large"))?;
        // Digits after the point, each a tenth of the one before (extra digits below a
        // nanosecond are dropped).
        let mut scale = unit_ns;
        for digit in fraction.bytes().take(30) {
            scale /= 10;
            part += u128::from(digit - b'0') * scale;
        }
        total_ns = total_ns
            .checked_add(part)
            .ok_or_else(|| format!("`{text}` is too large"))?;
        rest = after.trim_start();
    }
    let secs =
        u64::try_from(total_ns / 1_000_000_000).map_err(|_| format!("`{text}` is too large"))?;
    Ok(Timespan::Finite(Duration::new(
        secs,
        (total_ns % 1_000_000_000) as u32,
    )))
}

/// The length of one `unit` in nanoseconds, with systemd's names (systemd.time(7)).
fn unit_nanoseconds(unit: &str) -> Option<u128> {
    const US: u128 = 1_000;
    const MS: u128 = 1_000_000;
    const S: u128 = 1_000_000_000;
    Some(match unit {
        "ns" | "nsec" => 1,
        "us" | "usec" | "µs" | "μs" => US,
        "ms" | "msec" => MS,
        "" | "s" | "sec" | "second" | "seconds" => S,
        "m" | "min" | "minute" | "minutes" => 60 * S,
        "h" | "hr" | "hour" | "hours" => 3_600 * S,
        "d" | "day" | "days" => 86_400 * S,
        "w" | "week" | "weeks" => 7 * 86_400 * S,
        // systemd's month and year: 30.44 and 365.25 days.
        "M" | "month" | "months" => 2_629_800 * S,
        "y" | "year" | "years" => 31_557_600 * S,
        _ => return None,
    })
}

/// "70s", "250ms" or "1.5s": short and exact, for messages.
fn show(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) && d.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.subsec_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Whole seconds, rounded up, for a drop-in that must not fall short.
fn whole_seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Runs `systemctl show UNIT -p ...` and returns its output, or why the check is skipped.
/// `systemctl` is killed when it takes longer than [`SYSTEMCTL_DEADLINE`].
fn systemctl_show(unit: &str) -> Result<String, String> {
    let mut child = match Command::new("systemctl")
        .args(["show", unit, "--no-pager", "-p", PROPERTIES])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(NOT_UNDER_SYSTEMD.to_string())
        }
        Err(e) => {
            return Err(format!(
                "cannot run systemctl ({e}): skipped the unit check"
            ))
        }
    };
    // Read both pipes on their own threads so a full pipe can never stall the child.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + SYSTEMCTL_DEADLINE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`systemctl show {unit}` did not answer within {}: skipped the unit check",
                    show(SYSTEMCTL_DEADLINE)
                ));
            }
            Err(e) => {
                return Err(format!(
                    "cannot wait for systemctl ({e}): skipped the unit check"
                ))
            }
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if status.success() {
        return Ok(stdout);
    }
    let reason = stderr
        .lines()
        .next()
        .unwrap_or("no message")
        .trim()
        .to_string();
    if reason.contains("not been booted with systemd") {
        return Err(NOT_UNDER_SYSTEMD.to_string());
    }
    Err(format!(
        "`systemctl show {unit}` failed ({status}: {reason}): skipped the unit check"
    ))
}

/// Reads a pipe to its end on a thread.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Timespan {
        Timespan::Finite(Duration::from_secs(n))
    }

    /// The budgets of the default configuration: grace 60s, 4 startup steps of 30s.
    fn default_budgets() -> Budgets {
        Budgets {
            stop_grace: Duration::from_secs(60),
            startup_total: Duration::from_secs(120),
        }
    }

    #[test]
    fn parses_what_systemctl_show_prints() {
        assert_eq!(parse_timespan("1min 10s"), Ok(secs(70)));
        assert_eq!(parse_timespan("70s"), Ok(secs(70)));
        assert_eq!(parse_timespan("2min 10s"), Ok(secs(130)));
        assert_eq!(parse_timespan("1min 30s"), Ok(secs(90)));
        assert_eq!(
            parse_timespan("500ms"),
            Ok(Timespan::Finite(Duration::from_millis(500)))
        );
        assert_eq!(parse_timespan("infinity"), Ok(Timespan::Infinity));
        assert_eq!(parse_timespan("0"), Ok(secs(0)));
        assert_eq!(parse_timespan("1h 2min 3s"), Ok(secs(3723)));
        assert_eq!(parse_timespan("1d"), Ok(secs(86_400)));
    }

    #[test]
    fn parses_unit_file_spellings() {
        assert_eq!(parse_timespan("1min10s"), Ok(secs(70)));
        assert_eq!(parse_timespan("90"), Ok(secs(90)));
        assert_eq!(
            parse_timespan("1.5s"),
            Ok(Timespan::Finite(Duration::from_millis(1500)))
        );
        assert_eq!(
            parse_timespan("2.250000s"),
            Ok(Timespan::Finite(Duration::from_millis(2250)))
        );
        assert_eq!(
            parse_timespan("300us"),
            Ok(Timespan::Finite(Duration::from_micros(300)))
        );
        assert_eq!(parse_timespan("  5 min "), Ok(secs(300)));
        assert_eq!(parse_timespan("1h30min"), Ok(secs(5400)));
    }

    #[test]
    fn rejects_what_is_not_a_time_span() {
        assert!(parse_timespan("").is_err());
        assert!(parse_timespan("soon").is_err());
        assert!(parse_timespan("10 parsecs").is_err());
        assert!(parse_timespan("1.2.3s").is_err());
        assert!(parse_timespan("99999999999999999999999999999999999999y").is_err());
    }

    #[test]
    fn shipped_timeouts_fit_the_default_budgets() {
        let unit = UnitTimeouts {
            stop: secs(70),
            start: secs(130),
            watchdog: secs(30),
        };
        match fit("shiftd", &unit, &default_budgets()) {
            UnitFit::Fits(lines) => {
                assert!(lines[0].contains("TimeoutStopSec=70s fits"), "{lines:?}");
                assert!(lines[0].contains("60s + 10s margin = 70s"), "{lines:?}");
                assert!(lines[2].contains("pings every 15s"), "{lines:?}");
            }
            other => panic!("expected Fits, got {other:?}"),
        }
    }

    #[test]
    fn a_short_stop_timeout_gives_the_drop_in() {
        let unit = UnitTimeouts {
            stop: secs(30),
            start: secs(130),
            watchdog: secs(0),
        };
        let UnitFit::DoesNotFit(lines) = fit("shiftd", &unit, &default_budgets()) else {
            panic!("a 30s stop timeout cannot hold a 60s grace");
        };
        let tail: Vec<&str> = lines
            .iter()
            .rev()
            .take(3)
            .rev()
            .map(String::as_str)
            .collect();
        assert!(tail[0].contains("systemctl edit shiftd"), "{lines:?}");
        assert_eq!(&tail[1..], ["[Service]", "TimeoutStopSec=70s"]);
        assert!(
            lines.iter().any(|l| l.contains("WatchdogSec is off")),
            "{lines:?}"
        );
    }

    #[test]
    fn the_drop_in_rounds_up_and_covers_both_timeouts() {
        let budgets = Budgets {
            stop_grace: Duration::from_millis(90_500),
            startup_total: Duration::from_secs(300),
        };
        let unit = UnitTimeouts {
            stop: secs(70),
            start: secs(130),
            watchdog: secs(30),
        };
        let UnitFit::DoesNotFit(lines) = fit("shiftd", &unit, &budgets) else {
            panic!("neither fits")
        };
        let n = lines.len();
        assert_eq!(
            &lines[n - 3..],
            ["[Service]", "TimeoutStopSec=101s", "TimeoutStartSec=310s"]
        );
    }

    #[test]
    fn the_margin_is_required_and_infinity_always_fits() {
        let unit = UnitTimeouts {
            stop: secs(69),
            start: secs(130),
            watchdog: secs(30),
        };
        assert!(matches!(
            fit("shiftd", &unit, &default_budgets()),
            UnitFit::DoesNotFit(_)
        ));
        let unit = UnitTimeouts {
            stop: Timespan::Infinity,
            start: Timespan::Infinity,
            watchdog: Timespan::Infinity,
        };
        assert!(matches!(
            fit("shiftd", &unit, &default_budgets()),
            UnitFit::Fits(_)
        ));
    }

    #[test]
    fn reads_systemctl_show_output() {
        let out = "LoadState=loaded\nTimeoutStopUSec=1min 10s\nTimeoutStartUSec=2min 10s\nWatchdogUSec=30s\n";
        assert!(matches!(
            evaluate("shiftd", out, &default_budgets()),
            UnitFit::Fits(_)
        ));
        let out =
            "LoadState=loaded\nTimeoutStopUSec=30s\nTimeoutStartUSec=2min 10s\nWatchdogUSec=0\n";
        assert!(matches!(
            evaluate("shiftd", out, &default_budgets()),
            UnitFit::DoesNotFit(_)
        ));
    }

    #[test]
    fn a_unit_that_is_not_installed_is_skipped() {
        // What systemctl prints for an unknown unit: its defaults, and LoadState=not-found.
        let out = "LoadState=not-found\nTimeoutStopUSec=1min 30s\nTimeoutStartUSec=1min 30s\nWatchdogUSec=0\n";
        match evaluate("shiftd", out, &default_budgets()) {
            UnitFit::Skipped(why) => assert!(why.contains("not installed"), "{why}"),
            other => panic!("expected Skipped, got {other:?}"),
        }
        assert!(matches!(
            evaluate("shiftd", "", &default_budgets()),
            UnitFit::Skipped(_)
        ));
        let out =
            "LoadState=loaded\nTimeoutStopUSec=eventually\nTimeoutStartUSec=1s\nWatchdogUSec=0\n";
        assert!(matches!(
            evaluate("shiftd", out, &default_budgets()),
            UnitFit::Skipped(_)
        ));
    }

    #[test]
    fn the_shipped_unit_is_sized_from_the_default_configuration() {
        // TimeoutStopSec = shutdown.grace + STOP_MARGIN, stated as a sum in the unit's comment;
        // TimeoutStartSec = the startup steps (service::STARTUP_STEPS: listener, database
        // connect, migrate, warm-up) at startup.step_timeout + START_MARGIN.
        let grace = crate::config::ShutdownConfig::default().grace;
        let startup_total = crate::service::startup_budget(&crate::config::Config::default());
        let unit = include_str!("../systemd/shiftd.service");
        let setting = |key: &str| {
            let prefix = format!("{key}=");
            let line = unit
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("no {key} in the unit"));
            parse_timespan(&line[prefix.len()..]).unwrap()
        };
        assert_eq!(
            setting("TimeoutStopSec"),
            Timespan::Finite(grace + STOP_MARGIN)
        );
        assert_eq!(
            setting("TimeoutStartSec"),
            Timespan::Finite(startup_total + START_MARGIN)
        );
        let sum = format!(
            "shutdown.grace ({}) + {} margin = {}",
            show(grace),
            show(STOP_MARGIN),
            show(grace + STOP_MARGIN)
        );
        assert!(unit.contains(&sum), "the unit's comment should say `{sum}`");
        let timeouts = UnitTimeouts {
            stop: setting("TimeoutStopSec"),
            start: setting("TimeoutStartSec"),
            watchdog: setting("WatchdogSec"),
        };
        let budgets = Budgets {
            stop_grace: grace,
            startup_total,
        };
        assert!(matches!(
            fit("shiftd", &timeouts, &budgets),
            UnitFit::Fits(_)
        ));
    }

    #[test]
    fn off_systemd_the_check_is_skipped_quickly() {
        if Path::new("/run/systemd/system").is_dir() {
            return; // a real systemd: the skip path is not reachable here
        }
        let started = Instant::now();
        assert_eq!(
            check_installed_unit("shiftd", &default_budgets()),
            UnitFit::Skipped(NOT_UNDER_SYSTEMD.to_string())
        );
        assert!(started.elapsed() < SYSTEMCTL_DEADLINE);
    }
}
