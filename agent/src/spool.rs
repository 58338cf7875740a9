//! The durable spool: every sample is a file, fsynced before it counts as taken and removed only once the aggregator acknowledged it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use shared::wire::AgentSample;

/// Pending samples live in `pending/` as `<seq>.json` (seq zero-padded to 20
/// digits, so names sort as numbers); `seq` holds the last seq handed out.
const PENDING: &str = "pending";
const CORRUPT: &str = "corrupt";
const SEQ_FILE: &str = "seq";
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
    last_seq: u64,
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
        let stored_seq = match fs::read_to_string(&seq_path) {
            Ok(text) => text.trim().parse::<u64>().unwrap_or_else(|_| {
                tracing::error!(path = %seq_path.display(), content = %text.trim(), "seq file is corrupt; continuing from the highest pending sample");
                0
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(&seq_path)(e)),
        };
        let last_seq = stored_seq.max(files.keys().next_back().copied().unwrap_or(0));
        Ok(Spool {
            dir: dir.to_path_buf(),
            pending_dir,
            files,
            last_seq,
            max_samples,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The seq the next sample will get.
    pub fn next_seq(&self) -> u64 {
        self.last_seq + 1
    }

    /// Hands out the next seq without storing a sample (for a sample kept in
    /// memory while the disk refuses writes).
    pub fn take_seq(&mut self) -> u64 {
        self.last_seq += 1;
        let _ = self.write_seq();
        self.last_seq
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

    /// Stores a new sample with the next seq. When this returns Ok the sample
    /// and the seq are on disk (written, fsynced, renamed into place, and the
    /// directory fsynced): a crash after it loses nothing.
    pub fn append(
        &mut self,
        node: &str,
        cores: u32,
        at: DateTime<Utc>,
        agent_version: &str,
    ) -> Result<(AgentSample, Appended), SpoolError> {
        let sample = AgentSample {
            node: node.to_string(),
            cores,
            at,
            seq: self.last_seq + 1,
            agent_version: agent_version.to_string(),
        };
        let body = serde_json::to_vec(&sample).expect("a sample serialises");
        let path = self.path_of(sample.seq);
        write_durably(&path, &body)?;
        sync_dir(&self.pending_dir)?;
        self.last_seq = sample.seq;
        self.files.insert(sample.seq, body.len() as u64);
        self.write_seq()?;
        let mut appended = Appended::default();
        while self.files.len() > self.max_samples {
            let (&oldest, _) = self.files.iter().next().expect("not empty");
            self.remove(oldest)?;
            appended.dropped += 1;
        }
        Ok((sample, appended))
    }

    fn write_seq(&self) -> Result<(), SpoolError> {
        write_durably(
            &self.dir.join(SEQ_FILE),
            self.last_seq.to_string().as_bytes(),
        )?;
        sync_dir(&self.dir)
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

/// Writes `body` to `path` so that after return either the old file or the
/// whole new one is there, on disk: write a temporary file, fsync, rename.
fn write_durably(path: &Path, body: &[u8]) -> Result<(), SpoolError> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(body).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io(path))
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
