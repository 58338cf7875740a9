//! `agent log-retention`, the reference client of the log-storage add-on (SPEC 10.4): measures a directory of day folders, reports each day's bytes, and deletes the days the aggregator says to purge.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use chrono::NaiveDate;
use serde::Serialize;
use shared::clock::Clock;
use shared::lifecycle::State;
use shared::logs::{
    DayBytes, UsageAnswer, UsageReport, MAX_REPORT_BYTES, MAX_REPORT_DAYS, USAGE_PATH,
};

use crate::identity::Token;
use crate::pusher::{colon, error_detail, http_client, read_prefix, send_error, PushError};
use crate::tls::ClientTls;

/// The format of a day folder's name.
const DAY_FORMAT: &str = "%Y-%m-%d";
/// How many skipped names the warning lists.
const SKIPPED_NAMED: usize = 10;

/// What one pass needs.
#[derive(Debug)]
pub struct Options {
    /// The log directory: one folder per day.
    pub dir: PathBuf,
    /// The aggregator's base URL.
    pub aggregator: String,
    pub tls: ClientTls,
    /// The account's `logs` token.
    pub token: Token,
    /// Report, but delete nothing.
    pub dry_run: bool,
    /// How long the report may take.
    pub timeout: Duration,
}

/// The day folders directly inside a log directory, and what else is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measured {
    /// The log directory, its symbolic links resolved once, so that the
    /// deleting works in the directory that was measured.
    pub dir: PathBuf,
    /// Oldest first.
    pub days: Vec<DayBytes>,
    /// The names of the entries that are not day folders, left alone.
    pub skipped: Vec<String>,
}

/// What a pass did, printed as one JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub quota_bytes: u64,
    pub used_bytes: u64,
    pub state: State,
    pub accept_writes: bool,
    pub over_quota: bool,
    /// Oldest first; with `dry_run`, what would have been deleted.
    pub purged: Vec<DayBytes>,
    pub dry_run: bool,
}

/// Why the usage report got no answer to act on. Nothing is deleted then.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("send the usage report: {0}")]
    Send(PushError),
    #[error("the aggregator refused the usage report ({status}){}", colon(.detail))]
    Refused { status: u16, detail: String },
    #[error("the aggregator's answer to the usage report is not what SPEC 10.5 describes: {0}")]
    Decode(String),
}

/// The name of `day`'s folder: `YYYY-MM-DD`.
pub fn folder_name(day: NaiveDate) -> String {
    day.format(DAY_FORMAT).to_string()
}

/// The day a folder name stands for: exactly `YYYY-MM-DD` (not `2026-1-5`,
/// not `+2026-01-05`), a date that exists.
pub fn day_of(name: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(name, DAY_FORMAT)
        .ok()
        .filter(|day| folder_name(*day) == name)
}

/// One pass: measure, report, and delete what the answer says to purge.
pub async fn run(options: &Options, clock: &dyn Clock) -> anyhow::Result<Summary> {
    let measured = measure(&options.dir)?;
    if !measured.skipped.is_empty() {
        tracing::warn!(
            dir = %measured.dir.display(),
            skipped = measured.skipped.len(),
            names = ?measured.skipped.iter().take(SKIPPED_NAMED).collect::<Vec<_>>(),
            "entries that are not day folders (directories named YYYY-MM-DD) are left alone"
        );
    }
    let report = UsageReport {
        at: clock.now(),
        days: measured.days.clone(),
    };
    let client = http_client(options.timeout, &options.tls)?;
    let answer = send(&client, options, &report).await?;
    let purged = purge(&measured, &answer.purge, options.dry_run)?;
    Ok(Summary {
        quota_bytes: answer.quota_bytes,
        used_bytes: answer.used_bytes,
        state: answer.state,
        accept_writes: answer.accept_writes,
        over_quota: answer.over_quota,
        purged,
        dry_run: options.dry_run,
    })
}

/// Lists `dir`'s direct entries: a real directory (a symbolic link is never
/// followed) named like a day is a log day, weighing the bytes of the
/// regular files under it. More days than a report may name is an error,
/// before anything is walked.
pub fn measure(dir: &Path) -> anyhow::Result<Measured> {
    let bad = |e: std::io::Error| anyhow::anyhow!("--dir {}: {e}", dir.display());
    let root = std::fs::canonicalize(dir).map_err(bad)?;
    anyhow::ensure!(root.is_dir(), "--dir {}: not a directory", dir.display());
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for entry in std::fs::read_dir(&root).map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let name = entry.file_name();
        match name.to_str().and_then(day_of) {
            Some(day) if is_real_dir(&entry.path())? => found.push(day),
            _ => skipped.push(name.to_string_lossy().into_owned()),
        }
    }
    anyhow::ensure!(
        found.len() <= MAX_REPORT_DAYS,
        "--dir {}: {} day folders, more than the {MAX_REPORT_DAYS} a usage report may name; nothing was sent",
        dir.display(),
        found.len()
    );
    found.sort();
    skipped.sort();
    let days = found
        .into_iter()
        .map(|day| {
            let bytes = tree_bytes(&root.join(folder_name(day)))?;
            Ok(DayBytes { day, bytes })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Measured {
        dir: root,
        days,
        skipped,
    })
}

/// Whether `path` is a directory itself, not a symbolic link to one; a path
/// that is gone is not.
fn is_real_dir(path: &Path) -> anyhow::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => Ok(meta.is_dir()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// The bytes of the regular files under `folder`. A symbolic link counts 0
/// and is not entered. What goes away during the walk counts 0: the log
/// service may rotate a file meanwhile.
fn tree_bytes(folder: &Path) -> anyhow::Result<u64> {
    let mut total: u64 = 0;
    let mut pending = vec![folder.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => anyhow::bail!("{}: {e}", dir.display()),
        };
        for entry in entries {
            let path = entry
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
                .path();
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => anyhow::bail!("{}: {e}", path.display()),
            };
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

/// Deletes the folders of the `days` to purge, oldest first, and returns
/// them with their measured bytes. Only a day `measured` found is touched
/// (another is warned of and left alone). Each folder is looked at again
/// right before it goes: one that is no longer a real directory (gone, or
/// replaced by a symbolic link) is left alone. With `dry_run` nothing is
/// deleted and what would be is returned.
pub fn purge(
    measured: &Measured,
    days: &[NaiveDate],
    dry_run: bool,
) -> anyhow::Result<Vec<DayBytes>> {
    let mut wanted = days.to_vec();
    wanted.sort();
    wanted.dedup();
    let mut purged = Vec::new();
    for day in wanted {
        let Ok(i) = measured.days.binary_search_by_key(&day, |d| d.day) else {
            tracing::warn!(
                %day,
                dir = %measured.dir.display(),
                "the answer says to purge a day that is not a day folder measured here; nothing is deleted for it"
            );
            continue;
        };
        let path = measured.dir.join(folder_name(day));
        if !is_real_dir(&path)? {
            tracing::warn!(
                path = %path.display(),
                "a day folder to purge is no longer a directory (gone, or replaced by a symbolic link); left alone"
            );
            continue;
        }
        if !dry_run {
            // remove_dir_all follows no symbolic link: neither one inside the
            // folder nor the folder itself, should it become one since the
            // look above.
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("delete the day folder {}", path.display()))?;
            tracing::info!(%day, bytes = measured.days[i].bytes, path = %path.display(), "day folder purged");
        }
        purged.push(measured.days[i]);
    }
    Ok(purged)
}

/// `PUT {aggregator}/v1/log-storage/usage` with the logs token; the answer
/// of a 2xx, else why not.
pub async fn send(
    client: &reqwest::Client,
    options: &Options,
    report: &UsageReport,
) -> Result<UsageAnswer, ReportError> {
    let url = format!("{}{USAGE_PATH}", options.aggregator.trim_end_matches('/'));
    let response = client
        .put(&url)
        .bearer_auth(options.token.expose())
        .json(report)
        .send()
        .await
        .map_err(|e| ReportError::Send(send_error(e, &options.tls.roots())))?;
    let status = response.status();
    let body = read_prefix(response, MAX_REPORT_BYTES + 1).await;
    if !status.is_success() {
        return Err(ReportError::Refused {
            status: status.as_u16(),
            detail: refusal(&body),
        });
    }
    if body.len() > MAX_REPORT_BYTES {
        return Err(ReportError::Decode(format!(
            "more than {MAX_REPORT_BYTES} bytes"
        )));
    }
    serde_json::from_slice(&body).map_err(|e| ReportError::Decode(e.to_string()))
}

/// What an error answer says: `code: message`, and the field it names.
fn refusal(body: &[u8]) -> String {
    let detail = error_detail(body);
    let field = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["field"].as_str().map(str::to_owned));
    match field {
        Some(field) => {
            let field: String = field
                .chars()
                .filter(|c| !c.is_control())
                .take(100)
                .collect();
            format!("{detail} (field {field})")
        }
        None => detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn day(text: &str) -> NaiveDate {
        day_of(text).unwrap()
    }

    fn write(path: &Path, bytes: usize) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![b'x'; bytes]).unwrap();
    }

    fn bytes_of(measured: &Measured) -> Vec<(String, u64)> {
        measured
            .days
            .iter()
            .map(|d| (folder_name(d.day), d.bytes))
            .collect()
    }

    #[test]
    fn a_day_folder_is_named_exactly_year_month_day() {
        assert_eq!(day_of("2026-01-05"), NaiveDate::from_ymd_opt(2026, 1, 5));
        for bad in [
            "2026-1-5",
            "+2026-01-05",
            "2026-02-30",
            "2026-01-05.old",
            "",
            "x",
        ] {
            assert_eq!(day_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn measuring_counts_the_files_nested_in_each_day_folder_and_leaves_other_entries_alone() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path();
        write(&logs.join("2026-01-01/app.log"), 10);
        write(&logs.join("2026-01-01/nested/deeper/app.log.1"), 20);
        std::fs::create_dir(logs.join("2026-01-02")).unwrap();
        write(&logs.join("2026-01-03"), 5);
        write(&logs.join("notes/readme"), 7);
        std::fs::create_dir(logs.join("2026-1-4")).unwrap();
        write(&logs.join(".lock"), 1);

        let measured = measure(logs).unwrap();
        assert_eq!(
            bytes_of(&measured),
            vec![("2026-01-01".into(), 30), ("2026-01-02".into(), 0)]
        );
        assert_eq!(
            measured.skipped,
            vec![".lock", "2026-01-03", "2026-1-4", "notes"]
        );
    }

    #[test]
    fn a_symlink_to_a_big_file_outside_the_directory_counts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let big = outside.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        write(&outside.path().join("elsewhere/file"), 1000);
        let folder = dir.path().join("2026-03-01");
        write(&folder.join("app.log"), 3);
        symlink(&big, folder.join("big.log")).unwrap();
        symlink(outside.path().join("elsewhere"), folder.join("more")).unwrap();

        let measured = measure(dir.path()).unwrap();
        assert_eq!(bytes_of(&measured), vec![("2026-03-01".into(), 3)]);
    }

    #[test]
    fn a_symlink_named_like_a_day_is_skipped_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(&outside.path().join("precious"), 50);
        symlink(outside.path(), dir.path().join("2026-01-01")).unwrap();
        write(&dir.path().join("2026-01-02/app.log"), 4);

        let measured = measure(dir.path()).unwrap();
        assert_eq!(bytes_of(&measured), vec![("2026-01-02".into(), 4)]);
        assert_eq!(measured.skipped, vec!["2026-01-01"]);
        let purged = purge(&measured, &[day("2026-01-01")], false).unwrap();
        assert!(purged.is_empty());
        assert!(outside.path().join("precious").exists());
    }

    #[test]
    fn purging_deletes_only_measured_days_oldest_first_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [("2026-01-01", 1), ("2026-01-02", 2), ("2026-01-03", 3)] {
            write(&dir.path().join(name).join("app.log"), bytes);
        }
        let measured = measure(dir.path()).unwrap();
        // Made after measuring: never reported, so never deleted.
        write(&dir.path().join("2026-01-04/app.log"), 4);

        let asked = [
            day("2026-01-03"),
            day("2026-01-01"),
            day("2026-01-04"),
            day("2026-01-01"),
        ];
        let purged = purge(&measured, &asked, false).unwrap();
        assert_eq!(
            purged,
            vec![
                DayBytes {
                    day: day("2026-01-01"),
                    bytes: 1
                },
                DayBytes {
                    day: day("2026-01-03"),
                    bytes: 3
                },
            ]
        );
        assert!(!dir.path().join("2026-01-01").exists());
        assert!(dir.path().join("2026-01-02/app.log").exists());
        assert!(!dir.path().join("2026-01-03").exists());
        assert!(dir.path().join("2026-01-04/app.log").exists());
    }

    #[test]
    fn a_dry_run_deletes_nothing_and_says_what_it_would() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("2026-01-01/app.log"), 8);
        let measured = measure(dir.path()).unwrap();
        let purged = purge(&measured, &[day("2026-01-01")], true).unwrap();
        assert_eq!(
            purged,
            vec![DayBytes {
                day: day("2026-01-01"),
                bytes: 8
            }]
        );
        assert!(dir.path().join("2026-01-01/app.log").exists());
    }

    #[test]
    fn a_day_folder_replaced_by_a_symlink_after_measuring_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(&outside.path().join("precious"), 50);
        let folder = dir.path().join("2026-01-01");
        write(&folder.join("app.log"), 8);
        let measured = measure(dir.path()).unwrap();

        std::fs::remove_dir_all(&folder).unwrap();
        symlink(outside.path(), &folder).unwrap();
        let purged = purge(&measured, &[day("2026-01-01")], false).unwrap();
        assert!(purged.is_empty());
        assert!(outside.path().join("precious").exists());
        assert!(folder.symlink_metadata().unwrap().is_symlink());
    }

    #[test]
    fn more_days_than_a_report_may_name_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = day("2000-01-01");
        for n in 0..=MAX_REPORT_DAYS {
            let d = first + chrono::Days::new(n as u64);
            std::fs::create_dir(dir.path().join(folder_name(d))).unwrap();
        }
        let e = measure(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(&dir.path().display().to_string()) && e.contains("10001 day folders"),
            "{e}"
        );
    }

    #[test]
    fn a_refusal_names_the_code_the_message_and_the_field() {
        let body = br#"{"error":{"code":"invalid_day","message":"day 1999-01-01 is out of range","field":"days[0].day"}}"#;
        assert_eq!(
            refusal(body),
            "invalid_day: day 1999-01-01 is out of range (field days[0].day)"
        );
        assert_eq!(refusal(b"bad gateway"), "bad gateway");
    }
}
