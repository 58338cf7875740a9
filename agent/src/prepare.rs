//! `agent prepare-spool`: hands the spool's host directory to the agent's user.
//!
//! In a DaemonSet the spool is a hostPath that the kubelet creates as
//! root:root 0755, and the agent runs as a non-root user, so it could not
//! write there. An init container runs this as root with only `CAP_CHOWN`:
//! it changes the owner of that one directory (and of anything under it that
//! an earlier run left with another owner) and exits. Symbolic links are never
//! followed: a link planted in a host directory must not make root change the
//! owner of some other host file. It only walks into directories root owns,
//! so nothing it walks can be changed under it by another user; an entry of
//! a third user (neither root nor the agent's) stops it with that entry named.
//! Once the directory is the agent's, it is not walked at all.

use std::fs;
use std::io;
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Entries looked at, at most: a spool holds 720 samples by default, so this
/// is far above anything legitimate and still bounds a hostile directory.
pub const MAX_ENTRIES: usize = 100_000;

/// A user and group, as `uid:gid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl std::str::FromStr for Owner {
    type Err = String;

    fn from_str(s: &str) -> Result<Owner, String> {
        let (uid, gid) = s
            .split_once(':')
            .ok_or_else(|| format!("owner {s:?} is not uid:gid, such as 65532:65532"))?;
        let number = |what: &str, v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("owner {s:?}: the {what} {v:?} is not a number"))
        };
        Ok(Owner {
            uid: number("uid", uid)?,
            gid: number("gid", gid)?,
        })
    }
}

/// What `prepare` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    /// Entries (the directory included) whose owner was changed.
    pub changed: usize,
    /// Entries already owned by the user.
    pub unchanged: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0} holds more than {MAX_ENTRIES} entries; not a spool")]
    TooMany(PathBuf),
    #[error("{path} belongs to uid {uid}, neither root nor the agent's user; change its owner by hand if it is the spool's")]
    ForeignOwner { path: PathBuf, uid: u32 },
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> PrepareError + '_ {
    move |source| PrepareError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` if it is missing, makes it private (0700) while it still
/// has its old owner, and gives it and everything under it to `owner`.
/// Running it again changes nothing.
pub fn prepare(dir: &Path, owner: Owner) -> Result<Prepared, PrepareError> {
    fs::create_dir_all(dir).map_err(at(dir))?;
    let mut done = Prepared::default();
    // Look at everything first, while root still owns the directories and
    // may walk them; then change owners deepest first, the directory last.
    let mut stack = vec![dir.to_path_buf()];
    let mut to_change = Vec::new();
    let mut seen = 0usize;
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).map_err(at(&path))?;
        if meta.uid() == owner.uid {
            // The agent's already, and so is what it wrote under it: never
            // walked (root may not read it, and the agent could change it).
            if meta.gid() == owner.gid {
                done.unchanged += 1;
            } else {
                to_change.push(path);
            }
            continue;
        }
        if meta.uid() != 0 {
            return Err(PrepareError::ForeignOwner {
                path,
                uid: meta.uid(),
            });
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(at(&path))? {
                seen += 1;
                if seen > MAX_ENTRIES {
                    return Err(PrepareError::TooMany(dir.to_path_buf()));
                }
                stack.push(entry.map_err(at(&path))?.path());
            }
        }
        to_change.push(path);
    }
    let root_owns_it = fs::symlink_metadata(dir).map_err(at(dir))?.uid() == 0;
    if root_owns_it && owner.uid != 0 {
        // chmod needs the owner (or CAP_FOWNER): while root still owns it.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(at(dir))?;
    }
    for path in to_change.iter().rev() {
        lchown(path, Some(owner.uid), Some(owner.gid)).map_err(at(path))?;
        done.changed += 1;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_is_read_as_uid_colon_gid() {
        assert_eq!(
            "65532:65533".parse::<Owner>(),
            Ok(Owner {
                uid: 65532,
                gid: 65533
            })
        );
        for bad in ["65532", "a:1", "1:b", ":", "-1:0"] {
            let e = bad.parse::<Owner>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn a_directory_already_owned_by_the_user_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let meta = fs::metadata(dir.path()).unwrap();
        let me = Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        };
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let done = prepare(dir.path(), me).unwrap();
        assert_eq!(
            done,
            Prepared {
                changed: 0,
                unchanged: 1
            }
        );
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "nothing is touched when nothing is to do");
    }

    #[test]
    fn a_missing_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let spool_root = dir.path().join("core-meter");
        let meta = fs::metadata(dir.path()).unwrap();
        let me = Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        };
        prepare(&spool_root, me).unwrap();
        assert!(spool_root.is_dir());
    }
}
