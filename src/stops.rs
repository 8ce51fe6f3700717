//! The last stops of this host: what each stage took against its budget, what it cut and
//! why, kept in `<state_dir>/stops.json` for the dashboard's overview and for `/metrics`'
//! `previous_stop_stage_seconds`.
//!
//! A file, not the database: it is written at the very end of the stop, after the pool has
//! closed, and it describes this host's processes, not the shared queue. Written atomically
//! (a temporary file renamed over it) so a reader never sees half of it; an error is a
//! warning, never a failed stop.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::lifecycle::StopReport;

/// How many stops the history keeps.
pub const KEEP: usize = 10;

/// One stop, as `stops.json` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopEntry {
    /// When the stop began, unix seconds.
    pub at: i64,
    /// "stop", "fast" or "hand-over".
    pub kind: String,
    /// The version of the process that stopped.
    pub version: String,
    pub elapsed_ms: u64,
    pub stages: Vec<StageEntry>,
}

/// One stage of a stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageEntry {
    pub name: String,
    /// The setting to raise when the stage was cut.
    pub setting: String,
    pub budget_ms: u64,
    pub took_ms: u64,
    pub cut: bool,
    /// What the stage did, or what it cut ("3 requests drained", "2 jobs finished…").
    pub note: String,
}

impl StopEntry {
    /// The entry for `report`, stopped by a process of `version`.
    pub fn from_report(report: &StopReport, version: &str) -> Self {
        let at = report
            .started_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Self {
            at,
            kind: report.cause.as_str().to_owned(),
            version: version.to_owned(),
            elapsed_ms: report.elapsed.as_millis() as u64,
            stages: report
                .details
                .iter()
                .map(|s| StageEntry {
                    name: s.name.to_owned(),
                    setting: s.setting.to_owned(),
                    budget_ms: s.budget.as_millis() as u64,
                    took_ms: s.took.as_millis() as u64,
                    cut: s.cut,
                    note: s.note.clone(),
                })
                .collect(),
        }
    }

    /// The stages' durations in seconds, for `previous_stop_stage_seconds`.
    pub fn stage_seconds(&self) -> Vec<(String, f64)> {
        self.stages
            .iter()
            .map(|s| (s.name.clone(), s.took_ms as f64 / 1000.0))
            .collect()
    }
}

/// Where the history is kept.
pub fn path() -> PathBuf {
    crate::db::state_dir().join("stops.json")
}

/// Adds the stop of `report` to the history (keeping the last [`KEEP`]). Never fails: an
/// error is logged as a warning naming the file.
pub fn record(report: &StopReport, version: &str) {
    let path = path();
    if let Err(e) = record_at(&path, StopEntry::from_report(report, version)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot record this stop in {}: {e}", path.display());
    }
}

/// The stops recorded, newest first. A missing or unreadable file is an empty history.
pub fn history() -> Vec<StopEntry> {
    history_at(&path())
}

/// The newest stop recorded, if any.
pub fn last() -> Option<StopEntry> {
    history().into_iter().next()
}

fn history_at(path: &Path) -> Vec<StopEntry> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "no stop history");
            return Vec::new();
        }
    };
    match serde_json::from_str::<Vec<StopEntry>>(&text) {
        Ok(mut entries) => {
            entries.sort_by_key(|e| std::cmp::Reverse(e.at));
            entries
        }
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "the stop history cannot be read; starting a new one");
            Vec::new()
        }
    }
}

fn record_at(path: &Path, entry: StopEntry) -> std::io::Result<()> {
    let mut entries = history_at(path);
    entries.insert(0, entry);
    entries.sort_by_key(|e| std::cmp::Reverse(e.at));
    entries.truncate(KEEP);
    let text = serde_json::to_vec_pretty(&entries)?;
    // Beside the file (the same filesystem, so the rename is atomic), named for this
    // process: a predecessor finishing its own stop never writes the same temporary file.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, &text)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{StageReport, StopCause};
    use std::time::{Duration, SystemTime};

    fn report(at: u64, cause: StopCause) -> StopReport {
        let mut r = StopReport {
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            cause,
            elapsed: Duration::from_millis(1500),
            ..StopReport::default()
        };
        r.push(StageReport {
            name: "http-drain",
            setting: "shutdown.http_drain",
            budget: Duration::from_secs(30),
            took: Duration::from_millis(120),
            cut: false,
            note: "3 requests drained".into(),
        });
        r.push(StageReport {
            name: "jobs",
            setting: "shutdown.jobs_drain",
            budget: Duration::from_secs(1),
            took: Duration::from_millis(1300),
            cut: true,
            note: "1 job requeued".into(),
        });
        r
    }

    #[test]
    fn an_entry_has_the_agreed_json_shape() {
        let entry = StopEntry::from_report(&report(1_700_000_000, StopCause::Fast), "1.2.3");
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "at": 1_700_000_000, "kind": "fast", "version": "1.2.3", "elapsed_ms": 1500,
                "stages": [
                    {"name": "http-drain", "setting": "shutdown.http_drain", "budget_ms": 30000,
                     "took_ms": 120, "cut": false, "note": "3 requests drained"},
                    {"name": "jobs", "setting": "shutdown.jobs_drain", "budget_ms": 1000,
                     "took_ms": 1300, "cut": true, "note": "1 job requeued"},
                ]
            })
        );
        assert_eq!(
            entry.stage_seconds(),
            [("http-drain".to_owned(), 0.12), ("jobs".to_owned(), 1.3)]
        );
    }

    #[test]
    fn the_history_keeps_the_last_ten_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stops.json");
        assert!(history_at(&path).is_empty(), "a missing file is no history");
        for at in 1..=12 {
            let cause = if at % 2 == 0 {
                StopCause::HandOver
            } else {
                StopCause::Graceful
            };
            record_at(&path, StopEntry::from_report(&report(at, cause), "v")).unwrap();
        }
        let entries = history_at(&path);
        let ats: Vec<i64> = entries.iter().map(|e| e.at).collect();
        assert_eq!(ats, (3..=12).rev().collect::<Vec<_>>());
        assert_eq!(entries[0].kind, "hand-over");
        assert_eq!(entries[1].kind, "stop");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn a_corrupt_file_is_an_empty_history_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stops.json");
        std::fs::write(&path, "{not json").unwrap();
        assert!(history_at(&path).is_empty());
        record_at(
            &path,
            StopEntry::from_report(&report(5, StopCause::Graceful), "v"),
        )
        .unwrap();
        assert_eq!(history_at(&path).len(), 1);
    }

    #[test]
    fn a_write_that_fails_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("stops.json");
        let entry = StopEntry::from_report(&report(5, StopCause::Graceful), "v");
        assert!(record_at(&path, entry).is_err());
    }
}
