//! The durable spool: every sample is a file, fsynced before it counts as taken and removed only once the aggregator acknowledged it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use shared::wire::AgentSample;

/// Pending samples live in `pending/` as `<seq>.json` (seq zero-padded to 20
/// digits, so names sort as numbers); `seq` holds the last seq handed out.
const PENDING: &str = "pending";
const CORRUPT: &str = "corrupt";
const SEQ_FILE: &str = "seq";
/// The `seq` file's one format since 0.2: exactly this many digits, zero
/// padded, no newline (`u64::MAX` has 20). A fixed width lets every later
/// value overwrite the same bytes in place, which needs no free block: a seq
/// can be reserved on a full disk. Agent 0.1.0 wrote the digits unpadded and
/// replaced the file each time; it reads the padded form too.
const SEQ_WIDTH: usize = 20;
/// Corrupt files kept for inspection; older ones are deleted.
const CORRUPT_KEPT: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why `Spool::append` did not store a sample, and what became of its seq.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The sample's file could not be written, but its seq is reserved
    /// (durably in the `seq` file). The caller keeps the sample under this
    /// seq and no other; no restart hands it out again.
    #[error("seq {seq} reserved, the sample not written: {source}")]
    NotWritten {
        seq: u64,
        #[source]
        source: SpoolError,
    },
    /// The next seq could not be written to the `seq` file, so none was
    /// handed out (a restarted agent would hand out the same one again) and
    /// nothing of the sample stays in the spool. `write` is why its own file
    /// could not be written, if it could not.
    #[error("{}cannot reserve a seq: {source}", sample_error(.write))]
    NoSeq {
        write: Option<SpoolError>,
        #[source]
        source: SpoolError,
    },
}

fn sample_error(write: &Option<SpoolError>) -> String {
    write
        .as_ref()
        .map_or_else(String::new, |e| format!("cannot write the sample: {e}; "))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What appending did besides storing the sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// The oldest samples dropped to stay within the bound.
    pub dropped: u64,
}

/// What reading the pending samples found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub samples: Vec<AgentSample>,
    /// Files that were unreadable or not a sample, moved to `corrupt/`.
    pub corrupt: u64,
}

pub struct Spool {
    dir: PathBuf,
    pending_dir: PathBuf,
    /// Pending seqs and their file sizes.
    files: BTreeMap<u64, u64>,
    /// The last seq handed out; the `seq` file holds it or more.
    last_seq: u64,
    /// The `seq` file holds the fixed width, so it is overwritten in place.
    seq_fixed: bool,
    max_samples: usize,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, bounded to `max_samples` pending samples.
    pub fn open(dir: &Path, max_samples: usize) -> Result<Spool, SpoolError> {
        assert!(max_samples > 0, "a spool holds at least one sample");
        let pending_dir = dir.join(PENDING);
        fs::create_dir_all(&pending_dir).map_err(io(&pending_dir))?;
        let mut files = BTreeMap::new();
        for entry in fs::read_dir(&pending_dir).map_err(io(&pending_dir))? {
            let entry = entry.map_err(io(&pending_dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                // A write that never completed: its sample was never taken.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            if let Some(seq) = name
                .strip_suffix(".json")
                .and_then(|s| s.parse::<u64>().ok())
            {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                files.insert(seq, size);
            }
        }
        let seq_path = dir.join(SEQ_FILE);
        // Left by an upgrade of the seq file that never completed.
        let _ = fs::remove_file(seq_path.with_extension("tmp"));
        let (stored_seq, seq_fixed) = match fs::read(&seq_path) {
            Ok(bytes) => match parse_seq(&bytes) {
                Some(parsed) => parsed,
                None => {
                    tracing::error!(path = %seq_path.display(), content = %String::from_utf8_lossy(&bytes).trim(), "seq file is corrupt; continuing from the highest pending sample");
                    (0, false)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, false),
            Err(e) => return Err(io(&seq_path)(e)),
        };
        let last_seq = stored_seq.max(files.keys().next_back().copied().unwrap_or(0));
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            pending_dir,
            files,
            last_seq,
            seq_fixed,
            max_samples,
        };
        if !spool.seq_fixed {
            // Missing, corrupt or written by 0.1.0: write it once in the fixed
            // width, now, while there may still be room for a new block.
            // Should that fail, the next reservation tries again; the value
            // on disk is never lowered either way.
            if let Err(e) = spool.persist_seq(last_seq) {
                tracing::warn!(error = %e, "cannot write the seq file in its fixed width yet; trying again at the next sample");
            }
        }
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The seq the next sample will get.
    pub fn next_seq(&self) -> u64 {
        self.last_seq + 1
    }

    /// Hands out the next seq once it is durably in the `seq` file, so that
    /// no restart can hand it out again. Nothing is handed out on an error.
    fn reserve(&mut self) -> Result<u64, SpoolError> {
        let seq = self.last_seq + 1;
        self.persist_seq(seq)?;
        self.last_seq = seq;
        Ok(seq)
    }

    /// Makes the `seq` file hold `seq`, durably. Once it has the fixed width
    /// it is overwritten in place: the same bytes of the same file, so no new
    /// block is needed and a full disk does not refuse it (so on tmpfs, see
    /// the tests, and on ext4; a copy-on-write file system such as btrfs or
    /// ZFS may still need room). Before that it is replaced (temporary file,
    /// fsync, rename, directory fsync), which needs room once.
    fn persist_seq(&mut self, seq: u64) -> Result<(), SpoolError> {
        let path = self.dir.join(SEQ_FILE);
        let text = format!("{seq:0SEQ_WIDTH$}");
        debug_assert_eq!(text.len(), SEQ_WIDTH);
        // Should that fail (the file removed, or not writable for this user
        // while its directory is), replacing it may still work.
        if self.seq_fixed && overwrite_in_place(&path, text.as_bytes()).is_ok() {
            return Ok(());
        }
        write_durably(&path, text.as_bytes())?;
        sync_dir(&self.dir)?;
        self.seq_fixed = true;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.files.values().sum()
    }

    fn path_of(&self, seq: u64) -> PathBuf {
        self.pending_dir.join(format!("{seq:020}.json"))
    }

    /// Stores a new sample under the next seq. When this returns Ok its file
    /// (written, fsynced, renamed into place, the directory fsynced) and the
    /// seq are on disk: a crash after it loses nothing. On an error nothing
    /// of the sample is in the spool, and `AppendError` says whether a seq was
    /// reserved for it, to keep it in memory under.
    ///
    /// The file goes first, the `seq` file second: a crash between the two
    /// leaves the file, and `open` continues after the highest file, so a
    /// crash never skips a seq (the aggregator would read a gap as a lost
    /// sample). Only a sample the disk refuses gets its seq reserved alone.
    pub fn append(
        &mut self,
        node: &str,
        cores: u32,
        at: DateTime<Utc>,
        agent_version: &str,
    ) -> Result<(AgentSample, Appended), AppendError> {
        let seq = self.last_seq + 1;
        let sample = AgentSample {
            node: node.to_string(),
            cores,
            at,
            seq,
            agent_version: agent_version.to_string(),
        };
        let body = serde_json::to_vec(&sample).expect("a sample serialises");
        let path = self.path_of(seq);
        let written = write_durably(&path, &body).and_then(|()| {
            sync_dir(&self.pending_dir).inspect_err(|_| {
                // Not known to be durable, so not stored.
                let _ = fs::remove_file(&path);
            })
        });
        if let Err(write) = written {
            return Err(match self.reserve() {
                Ok(seq) => AppendError::NotWritten { seq, source: write },
                Err(source) => AppendError::NoSeq {
                    write: Some(write),
                    source,
                },
            });
        }
        if let Err(source) = self.persist_seq(seq) {
            // Delivered and removed, the file would leave nothing on disk to
            // say that its seq was handed out: take it back. (Should the file
            // stay all the same, it is delivered after a restart under its
            // seq, beside the copy the caller keeps: one measurement twice,
            // which the node-hour maximum absorbs, rather than a seq twice.)
            let _ = fs::remove_file(&path);
            let _ = sync_dir(&self.pending_dir);
            return Err(AppendError::NoSeq {
                write: None,
                source,
            });
        }
        self.last_seq = seq;
        self.files.insert(seq, body.len() as u64);
        // The sample is stored: failing to drop an old one must not say otherwise.
        let mut appended = Appended::default();
        while self.files.len() > self.max_samples {
            let (&oldest, _) = self.files.iter().next().expect("not empty");
            if let Err(e) = self.remove(oldest) {
                tracing::error!(error = %e, seq = oldest, "cannot drop the oldest sample to stay within the bound");
                break;
            }
            appended.dropped += 1;
        }
        Ok((sample, appended))
    }

    /// Up to `limit` pending samples, oldest first. A file that cannot be read
    /// as a sample is moved to `corrupt/` (and counted), never retried.
    pub fn load(&mut self, limit: usize) -> Loaded {
        let mut loaded = Loaded::default();
        let seqs: Vec<u64> = self.files.keys().copied().collect();
        for seq in seqs {
            if loaded.samples.len() >= limit {
                break;
            }
            let path = self.path_of(seq);
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<AgentSample>(&b).map_err(|e| e.to_string()))
                .and_then(|s| {
                    if s.seq == seq {
                        Ok(s)
                    } else {
                        Err(format!("file holds seq {}", s.seq))
                    }
                });
            match parsed {
                Ok(sample) => loaded.samples.push(sample),
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "corrupt spool file skipped");
                    self.quarantine(seq);
                    loaded.corrupt += 1;
                }
            }
        }
        loaded
    }

    fn quarantine(&mut self, seq: u64) {
        let from = self.path_of(seq);
        let corrupt = self.dir.join(CORRUPT);
        let moved = fs::create_dir_all(&corrupt)
            .and_then(|_| fs::rename(&from, corrupt.join(format!("{seq:020}.json"))));
        if moved.is_err() {
            let _ = fs::remove_file(&from);
        }
        self.files.remove(&seq);
        // Keep the quarantine bounded.
        if let Ok(entries) = fs::read_dir(&corrupt) {
            let mut names: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            if names.len() > CORRUPT_KEPT {
                names.sort();
                for old in &names[..names.len() - CORRUPT_KEPT] {
                    let _ = fs::remove_file(old);
                }
            }
        }
    }

    /// Forgets an acknowledged sample.
    pub fn remove(&mut self, seq: u64) -> Result<(), SpoolError> {
        let path = self.path_of(seq);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        self.files.remove(&seq);
        Ok(())
    }

    /// Makes removals durable (one directory fsync for many removals).
    pub fn sync(&self) -> Result<(), SpoolError> {
        sync_dir(&self.pending_dir)
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.files.contains_key(&seq)
    }
}

/// The value of a `seq` file and whether it has the fixed width. Agent 0.1.0
/// wrote unpadded digits; a trailing newline (a hand edit) is accepted too.
fn parse_seq(bytes: &[u8]) -> Option<(u64, bool)> {
    let fixed = bytes.len() == SEQ_WIDTH && bytes.iter().all(u8::is_ascii_digit);
    let value = std::str::from_utf8(bytes).ok()?.trim().parse().ok()?;
    Some((value, fixed))
}

/// Overwrites the first bytes of the existing file at `path` with `body`,
/// without truncating it, and waits until they are on disk.
fn overwrite_in_place(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(body, 0)?;
    // The size does not change, so the data is all there is to sync.
    f.sync_data()
}

/// Writes `body` to `path` so that after return either the old file or the
/// whole new one is there, on disk: write a temporary file, fsync, rename.
/// A temporary file the disk refused is removed at once.
fn write_durably(path: &Path, body: &[u8]) -> Result<(), SpoolError> {
    let tmp = path.with_extension("tmp");
    let written = write_synced(&tmp, body)
        .map_err(io(&tmp))
        .and_then(|()| fs::rename(&tmp, path).map_err(io(path)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn write_synced(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(body)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        "2026-11-24T10:03:00Z".parse().unwrap()
    }

    #[test]
    fn samples_get_increasing_seqs_that_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10).unwrap();
        let (a, _) = spool.append("n", 4, at(), "t").unwrap();
        let (b, _) = spool.append("n", 4, at(), "t").unwrap();
        assert_eq!((a.seq, b.seq), (1, 2));
        spool.remove(1).unwrap();
        spool.remove(2).unwrap();
        drop(spool);
        let mut spool = Spool::open(dir.path(), 10).unwrap();
        assert!(spool.is_empty());
        let (c, _) = spool.append("n", 4, at(), "t").unwrap();
        assert_eq!(c.seq, 3, "a restarted agent never reuses a seq");
    }

    #[test]
    fn pending_samples_come_back_in_order_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10).unwrap();
        for cores in [1, 2, 3] {
            spool.append("n", cores, at(), "t").unwrap();
        }
        drop(spool);
        let mut spool = Spool::open(dir.path(), 10).unwrap();
        let loaded = spool.load(10);
        let cores: Vec<u32> = loaded.samples.iter().map(|s| s.cores).collect();
        assert_eq!(cores, vec![1, 2, 3]);
        assert_eq!(spool.load(2).samples.len(), 2);
    }

    #[test]
    fn at_the_bound_the_oldest_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 3).unwrap();
        let mut dropped = 0;
        for cores in 1..=5 {
            dropped += spool.append("n", cores, at(), "t").unwrap().1.dropped;
        }
        assert_eq!(dropped, 2);
        let seqs: Vec<u64> = spool.load(10).samples.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
    }

    #[test]
    fn a_corrupt_or_truncated_file_is_set_aside_and_the_rest_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10).unwrap();
        for cores in [1, 2, 3] {
            spool.append("n", cores, at(), "t").unwrap();
        }
        let second = dir.path().join("pending").join(format!("{:020}.json", 2));
        let body = fs::read(&second).unwrap();
        fs::write(&second, &body[..body.len() / 2]).unwrap();
        drop(spool);
        let mut spool = Spool::open(dir.path(), 10).unwrap();
        let loaded = spool.load(10);
        assert_eq!(loaded.corrupt, 1);
        assert_eq!(
            loaded.samples.iter().map(|s| s.seq).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert!(dir
            .path()
            .join("corrupt")
            .join(format!("{:020}.json", 2))
            .exists());
        assert_eq!(
            spool.load(10).corrupt,
            0,
            "reported once, not on every load"
        );
    }

    fn seq_file(dir: &Path) -> String {
        fs::read_to_string(dir.join(SEQ_FILE)).unwrap()
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        [dir.to_path_buf(), dir.join(PENDING)]
            .iter()
            .flat_map(|d| fs::read_dir(d).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn the_seq_file_has_a_fixed_width_and_is_overwritten_in_place() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10).unwrap();
        assert_eq!(
            seq_file(dir.path()),
            "00000000000000000000",
            "created at open"
        );
        let inode = fs::metadata(dir.path().join(SEQ_FILE)).unwrap().ino();
        for _ in 0..3 {
            spool.append("n", 4, at(), "t").unwrap();
        }
        assert_eq!(seq_file(dir.path()), "00000000000000000003");
        assert_eq!(
            fs::metadata(dir.path().join(SEQ_FILE)).unwrap().ino(),
            inode,
            "the same file, not a replacement"
        );
        drop(spool);
        assert_eq!(Spool::open(dir.path(), 10).unwrap().next_seq(), 4);
    }

    #[test]
    fn a_seq_file_of_agent_0_1_0_is_read_and_upgraded_once() {
        for (old, pending, next) in [("7", 0, 8), ("7\n", 0, 8), ("7", 9, 10), ("12", 9, 13)] {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir_all(dir.path().join(PENDING)).unwrap();
            fs::write(dir.path().join(SEQ_FILE), old).unwrap();
            if pending > 0 {
                let sample = r#"{"node":"n","cores":4,"at":"2026-11-24T10:03:00Z","seq":SEQ,"agent_version":"0.1.0"}"#;
                fs::write(
                    dir.path().join(PENDING).join(format!("{pending:020}.json")),
                    sample.replace("SEQ", &pending.to_string()),
                )
                .unwrap();
            }
            let mut spool = Spool::open(dir.path(), 10).unwrap();
            assert_eq!(spool.next_seq(), next, "from {old:?}");
            assert_eq!(seq_file(dir.path()), format!("{:020}", next - 1));
            assert_eq!(spool.append("n", 4, at(), "t").unwrap().0.seq, next);
            assert_eq!(seq_file(dir.path()), format!("{next:020}"));
            assert!(leftovers(dir.path()).is_empty());
        }
    }

    #[test]
    fn a_seq_file_that_cannot_be_upgraded_yet_keeps_its_value_until_it_can() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(PENDING)).unwrap();
        fs::write(dir.path().join(SEQ_FILE), "7").unwrap();
        // A directory where the temporary file goes: replacing the file fails.
        let blocker = dir.path().join("seq.tmp");
        fs::create_dir(&blocker).unwrap();
        let mut spool = Spool::open(dir.path(), 10).unwrap();
        assert_eq!(seq_file(dir.path()), "7", "the old value is kept");
        assert_eq!(spool.next_seq(), 8);
        assert!(matches!(
            spool.append("n", 4, at(), "t"),
            Err(AppendError::NoSeq { .. })
        ));
        assert_eq!(seq_file(dir.path()), "7");
        assert_eq!(spool.next_seq(), 8, "nothing handed out");
        assert!(
            !spool.path_of(8).exists(),
            "the sample's file is taken back"
        );
        fs::remove_dir(&blocker).unwrap();
        assert_eq!(spool.append("n", 4, at(), "t").unwrap().0.seq, 8);
        assert_eq!(seq_file(dir.path()), "00000000000000000008");
    }

    #[test]
    fn a_sample_the_disk_refuses_keeps_a_reserved_seq_that_reopening_never_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10).unwrap();
        assert_eq!(spool.append("n", 4, at(), "t").unwrap().0.seq, 1);
        // A directory where seq 2's file goes: the rename into place fails.
        let blocker = spool.path_of(2);
        fs::create_dir(&blocker).unwrap();
        match spool.append("n", 4, at(), "t") {
            Err(AppendError::NotWritten { seq, source }) => {
                assert_eq!(seq, 2);
                assert!(source.to_string().contains("00000000000000000002.json"));
            }
            other => panic!("expected NotWritten, got {other:?}"),
        }
        assert_eq!(
            seq_file(dir.path()),
            format!("{:020}", 2),
            "seq 2 is reserved"
        );
        assert!(
            leftovers(dir.path()).is_empty(),
            "no temporary file is left"
        );
        assert!(!spool.contains(2));
        assert_eq!(spool.next_seq(), 3, "never handed out twice");
        drop(spool);
        fs::remove_dir(&blocker).unwrap();
        let mut spool = Spool::open(dir.path(), 10).unwrap();
        assert_eq!(
            spool.append("n", 4, at(), "t").unwrap().0.seq,
            3,
            "a restarted agent does not reuse the seq of a sample kept in memory"
        );
        let seqs: Vec<u64> = spool.load(10).samples.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, vec![1, 3]);
    }

    #[test]
    fn a_seq_that_cannot_be_written_is_not_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10).unwrap();
        assert_eq!(spool.append("n", 4, at(), "t").unwrap().0.seq, 1);
        let seq_path = dir.path().join(SEQ_FILE);
        fs::remove_file(&seq_path).unwrap();
        fs::create_dir(&seq_path).unwrap();
        assert!(matches!(
            spool.append("n", 4, at(), "t"),
            Err(AppendError::NoSeq { write: None, .. })
        ));
        assert_eq!(spool.len(), 1, "no file without a persisted seq");
        assert!(
            !spool.path_of(2).exists(),
            "the sample's file is taken back"
        );
        assert_eq!(spool.next_seq(), 2);
        assert!(leftovers(dir.path()).is_empty());
        // Neither the sample's file nor the seq: both reasons are told.
        let blocker = spool.path_of(2);
        fs::create_dir(&blocker).unwrap();
        match spool.append("n", 4, at(), "t") {
            Err(e @ AppendError::NoSeq { write: Some(_), .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("cannot write the sample")
                        && text.contains("cannot reserve a seq"),
                    "{text}"
                );
            }
            other => panic!("expected NoSeq, got {other:?}"),
        }
        fs::remove_dir(&blocker).unwrap();
        fs::remove_dir(&seq_path).unwrap();
        assert_eq!(spool.append("n", 4, at(), "t").unwrap().0.seq, 2);
        assert_eq!(seq_file(dir.path()), format!("{:020}", 2));
    }

    #[test]
    fn reopening_continues_after_the_seq_file_or_the_highest_file_whichever_is_higher() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10).unwrap();
        spool.append("n", 4, at(), "t").unwrap();
        spool.append("n", 4, at(), "t").unwrap();
        drop(spool);
        // A crash after seq 2's file, before the seq file: no seq is skipped.
        fs::write(dir.path().join(SEQ_FILE), format!("{:020}", 1)).unwrap();
        let mut spool = Spool::open(dir.path(), 10).unwrap();
        assert_eq!(spool.next_seq(), 3);
        spool.remove(1).unwrap();
        spool.remove(2).unwrap();
        drop(spool);
        // Seq 5 reserved for a sample kept in memory: no file, still taken.
        fs::write(dir.path().join(SEQ_FILE), format!("{:020}", 5)).unwrap();
        assert_eq!(Spool::open(dir.path(), 10).unwrap().next_seq(), 6);
    }

    /// A small tmpfs, unmounted when dropped.
    struct Tmpfs(PathBuf);

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    /// Appends to `path` until the file system refuses.
    fn fill(path: &Path) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
    }

    #[test]
    fn on_a_full_tmpfs_the_seq_is_still_reserved_in_place_and_the_sample_kept_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
        if !mounted {
            testkit::skip("ROOT", "a tmpfs cannot be mounted here (needs root)");
            return;
        }
        let mnt = Tmpfs(dir.path().to_path_buf());
        let spool_dir = mnt.0.join("spool");
        let mut spool = Spool::open(&spool_dir, 10).unwrap();
        assert_eq!(spool.append("n", 4, at(), "t").unwrap().0.seq, 1);
        fill(&mnt.0.join("ballast"));
        for expected in 2..=4 {
            match spool.append("n", 4, at(), "t") {
                Err(AppendError::NotWritten { seq, source }) => {
                    assert_eq!(seq, expected);
                    assert!(
                        source.to_string().contains("No space left on device"),
                        "{source}"
                    );
                }
                other => panic!("expected NotWritten, got {other:?}"),
            }
            assert_eq!(
                seq_file(&spool_dir),
                format!("{expected:020}"),
                "the full disk took the seq in place"
            );
            assert!(
                leftovers(&spool_dir).is_empty(),
                "no empty temporary file is left"
            );
        }
        drop(spool);
        // Restarted while still full: the seqs of the samples held in memory stay taken.
        let mut spool = Spool::open(&spool_dir, 10).unwrap();
        assert_eq!(spool.next_seq(), 5);
        fs::remove_file(mnt.0.join("ballast")).unwrap();
        assert_eq!(spool.append("n", 4, at(), "t").unwrap().0.seq, 5);
    }

    #[test]
    fn a_half_written_temporary_file_is_not_a_sample() {
        let dir = tempfile::tempdir().unwrap();
        drop(Spool::open(dir.path(), 10).unwrap());
        fs::write(
            dir.path().join("pending").join(format!("{:020}.tmp", 1)),
            b"{\"no",
        )
        .unwrap();
        let mut spool = Spool::open(dir.path(), 10).unwrap();
        assert!(spool.load(10).samples.is_empty());
        assert_eq!(spool.next_seq(), 1);
    }
}
