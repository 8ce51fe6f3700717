//! Cron schedules: parsing (`croner`) and occurrence times in a task's time zone
//! (`chrono-tz`). Times handed out are milliseconds since the Unix epoch, as in the queue.
//!
//! Five fields (minute hour day-of-month month day-of-week) as POSIX cron, or six with a
//! leading seconds field (an extension, for schedules finer than a minute). Names of months
//! and weekdays, ranges, lists and steps are croner's; a year field is refused.
//! Daylight-saving changes follow croner: a wall-clock time that does not exist (spring
//! forward) runs at the first instant after the gap, one that exists twice (fall back)
//! runs once.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use crate::config::{CatchUp, TaskConfig};

/// A parsed schedule of one task.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub expr: String,
    pub tz: Tz,
    pub catch_up: CatchUp,
    cron: Cron,
}

/// Parses a cron expression of five or six fields; the message says what is wrong.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let fields = expr.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(format!(
            "`{expr}` has {fields} fields; write five (minute hour day-of-month month day-of-week, e.g. \"0 3 * * *\") or six with a leading seconds field"
        ));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| {
            format!("`{expr}` is not a cron expression: {e}; e.g. \"0 3 * * *\" is 03:00 every day")
        })?;
    // A date that never comes ("0 0 30 2 *") would make every look search for years.
    if cron.find_next_occurrence(&Utc::now(), false).is_err() {
        return Err(format!(
            "`{expr}` never occurs (no such date); check the day-of-month and month fields"
        ));
    }
    Ok(cron)
}

/// Parses an IANA time zone name such as "Europe/Berlin" or "UTC".
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("`{name}` is not an IANA time zone name; write e.g. \"UTC\" or \"Europe/Berlin\"")
    })
}

impl Schedule {
    /// The task's schedule, if it has one. The configuration was validated, so an error
    /// here means it was not; it is reported as such.
    pub fn of(config: &TaskConfig) -> Result<Option<Self>, String> {
        let Some(expr) = &config.schedule else {
            return Ok(None);
        };
        Ok(Some(Self {
            expr: expr.clone(),
            tz: parse_timezone(&config.timezone)?,
            catch_up: config.catch_up,
            cron: parse_cron(expr)?,
        }))
    }

    /// What is stored as the schedule's identity: a change of either the expression or
    /// the time zone is a new schedule (its baseline starts again).
    pub fn spec(&self) -> String {
        format!(
            "{} {}",
            self.expr.split_whitespace().collect::<Vec<_>>().join(" "),
            self.tz.name()
        )
    }

    /// The latest occurrence at or before `now`, in ms.
    pub fn latest_at_or_before(&self, now_ms: i64) -> Option<i64> {
        let now = self.tz.from_utc_datetime(&utc(now_ms)?.naive_utc());
        self.cron
            .find_previous_occurrence(&now, true)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// The first occurrence strictly after `now`, in ms.
    pub fn next_after(&self, now_ms: i64) -> Option<i64> {
        let now = self.tz.from_utc_datetime(&utc(now_ms)?.naive_utc());
        self.cron
            .find_next_occurrence(&now, false)
            .ok()
            .map(|t| t.timestamp_millis())
    }
}

fn utc(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(ms)
}

/// RFC 3339 in UTC with milliseconds, as every time of the API.
pub fn rfc3339_ms(ms: i64) -> String {
    utc(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn schedule(expr: &str, tz: &str) -> Schedule {
        let config = TaskConfig {
            command: vec!["/bin/true".into()],
            schedule: Some(expr.into()),
            timezone: tz.into(),
            ..Default::default()
        };
        Schedule::of(&config).unwrap().unwrap()
    }

    #[test]
    fn five_and_six_fields_parse_others_do_not() {
        assert!(parse_cron("0 3 * * *").is_ok());
        assert!(parse_cron("*/2 * * * * *").is_ok());
        assert!(parse_cron("0 3 * *").unwrap_err().contains("4 fields"));
        assert!(parse_cron("0 0 3 * * * 2030")
            .unwrap_err()
            .contains("7 fields"));
        assert!(parse_cron("0 25 * * *")
            .unwrap_err()
            .contains("not a cron expression"));
        assert!(parse_cron("every day").is_err());
        assert!(parse_cron("0 0 30 2 *")
            .unwrap_err()
            .contains("never occurs"));
        assert!(parse_cron("0 0 29 2 *").is_ok(), "leap days come");
        assert!(parse_timezone("Europe/Berlin").is_ok());
        assert!(parse_timezone("Mars/Olympus").unwrap_err().contains("IANA"));
    }

    #[test]
    fn next_occurrence_in_utc_and_in_berlin() {
        let utc = schedule("0 3 * * *", "UTC");
        let now = at("2026-11-21T22:00:00Z");
        assert_eq!(utc.next_after(now), Some(at("2026-11-22T03:00:00Z")));
        assert_eq!(
            utc.latest_at_or_before(now),
            Some(at("2026-11-21T03:00:00Z"))
        );
        // Winter in Berlin: UTC+1.
        let berlin = schedule("0 3 * * *", "Europe/Berlin");
        assert_eq!(berlin.next_after(now), Some(at("2026-11-22T02:00:00Z")));
        // Summer: UTC+2.
        assert_eq!(
            berlin.next_after(at("2026-07-01T12:00:00Z")),
            Some(at("2026-07-02T01:00:00Z"))
        );
        // An occurrence exactly at now is the latest, not the next.
        assert_eq!(
            berlin.latest_at_or_before(at("2026-11-22T02:00:00Z")),
            Some(at("2026-11-22T02:00:00Z"))
        );
        assert_eq!(
            berlin.next_after(at("2026-11-22T02:00:00Z")),
            Some(at("2026-11-23T02:00:00Z"))
        );
    }

    #[test]
    fn daylight_saving_changes_in_berlin() {
        // 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that day.
        let s = schedule("30 2 * * *", "Europe/Berlin");
        let before = at("2026-03-28T12:00:00Z");
        let first = s.next_after(before).unwrap();
        let second = s.next_after(first).unwrap();
        // 02:30 does not exist on the day of the change: the job runs at the end of the
        // gap, 03:00 CEST = 01:00 UTC, once.
        assert_eq!(rfc3339_ms(first), "2026-03-29T01:00:00.000Z");
        // After the change: 02:30 CEST = 00:30 UTC.
        assert_eq!(second, at("2026-03-30T00:30:00Z"));
        // 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice, the job runs once.
        let s = schedule("30 2 * * *", "Europe/Berlin");
        let first = s.next_after(at("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(first, at("2026-10-25T00:30:00Z"));
        let second = s.next_after(first).unwrap();
        assert_eq!(second, at("2026-10-26T01:30:00Z"));
        // A daily 03:00 across the spring change: 24 h apart in local time, 23 h in UTC.
        let s = schedule("0 3 * * *", "Europe/Berlin");
        let a = s.next_after(at("2026-03-28T12:00:00Z")).unwrap();
        let b = s.next_after(a).unwrap();
        assert_eq!(a, at("2026-03-29T01:00:00Z"));
        assert_eq!(b, at("2026-03-30T01:00:00Z"));
        assert_eq!(
            s.next_after(at("2026-03-27T12:00:00Z")),
            Some(at("2026-03-28T02:00:00Z"))
        );
    }

    #[test]
    fn spec_is_the_identity_of_expression_and_zone() {
        assert_eq!(schedule("0  3 * * *", "UTC").spec(), "0 3 * * * UTC");
        assert_ne!(
            schedule("0 3 * * *", "UTC").spec(),
            schedule("0 3 * * *", "Europe/Berlin").spec()
        );
    }
}
