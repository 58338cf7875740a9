//! Who this agent speaks for: the node's name and the cluster's token.

use std::path::PathBuf;

/// The node's name: given (from `NODE_NAME`, the downward API), else the host name.
pub fn node_name(given: Option<&str>) -> anyhow::Result<String> {
    if let Some(name) = given.map(str::trim).filter(|n| !n.is_empty()) {
        return Ok(name.to_string());
    }
    sysinfo::System::host_name()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no node name: set NODE_NAME (spec.nodeName via the downward API) or a host name"
            )
        })
}

/// What to warn of when the node's name is outside the domain the
/// aggregator takes (`shared::domain`: ASCII letters, digits, `-`, `_`, `.`,
/// at most 253): its samples are rejected as `invalid_node` unless the
/// aggregator stored the node before that domain existed. The agent runs
/// all the same: only the aggregator knows which of the two it is.
pub fn node_name_warning(name: &str) -> Option<String> {
    shared::domain::check_name(shared::domain::NameKind::NodeName, name)
        .err()
        .map(|e| format!("NODE_NAME (or the host name): {e}; the aggregator rejects such a node's samples as invalid_node unless it stored the node before"))
}

/// The cluster token. It is never printed: `Debug` shows `<redacted>` and
/// there is no `Display`, so it cannot slip into a log line, an error or a
/// panic message by accident; [`Token::expose`] is for the request header.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(value: &str) -> Token {
        Token(value.trim().to_string())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the cluster token comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    File(TokenFile),
    Value(Token),
}

impl TokenSource {
    /// The file wins over the value when both are set. A file must exist
    /// and must not be readable by everyone.
    pub fn from_settings(
        file: Option<PathBuf>,
        value: Option<String>,
    ) -> anyhow::Result<TokenSource> {
        match (file, value) {
            (Some(f), _) => {
                check_file(&f)?;
                Ok(TokenSource::File(TokenFile {
                    path: f,
                    cached: None,
                    reads: 0,
                }))
            }
            (None, Some(v)) if !v.trim().is_empty() => Ok(TokenSource::Value(Token::new(&v))),
            _ => anyhow::bail!(
                "no cluster token: set CORE_METER_TOKEN_FILE (a mounted Secret) or CORE_METER_TOKEN"
            ),
        }
    }

    /// The token to push with now: a file is read again only when it changed.
    pub fn current(&mut self) -> anyhow::Result<Token> {
        match self {
            TokenSource::Value(v) => Ok(v.clone()),
            TokenSource::File(file) => file.current(),
        }
    }
}

/// A token file (a mounted Secret: a symlink into a directory the kubelet
/// swaps on rotation). Before each push its metadata is looked at, following
/// the links; only when that changed is it read again, so a rotated Secret
/// takes effect without a restart and an unchanged one costs one `stat`.
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
    cached: Option<(Stamp, Token)>,
    reads: u64,
}

/// What tells a changed file from the one read before: a rotation makes a
/// new file (another inode) or rewrites it (mtime, ctime, length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The largest token file read.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// The file's stamp, or why it cannot be used: missing, not a file, or
/// readable by everyone on the node.
fn check_file(path: &std::path::Path) -> anyhow::Result<Stamp> {
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("token file {}: {e}", path.display()))?;
    checked(path, &meta)
}

/// The stamp of `meta` (of `path`), or why that file cannot be used.
fn checked(path: &std::path::Path, meta: &std::fs::Metadata) -> anyhow::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    anyhow::ensure!(meta.is_file(), "token file {}: not a file", path.display());
    anyhow::ensure!(
        meta.mode() & 0o004 == 0,
        "token file {} is readable by everyone (mode {:o}): run `chmod o-r {}`, or give the Secret's volume `defaultMode: 0400`",
        path.display(),
        meta.mode() & 0o7777,
        path.display()
    );
    anyhow::ensure!(
        meta.len() <= MAX_TOKEN_FILE_BYTES,
        "token file {}: {} bytes, more than a token's {MAX_TOKEN_FILE_BYTES}",
        path.display(),
        meta.len()
    );
    Ok(Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    })
}

impl TokenFile {
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// How often the file was read (not just looked at).
    pub fn reads(&self) -> u64 {
        self.reads
    }

    pub fn current(&mut self) -> anyhow::Result<Token> {
        let stamp = check_file(&self.path)?;
        if let Some((cached, token)) = &self.cached {
            if *cached == stamp {
                return Ok(token.clone());
            }
        }
        self.cached = None;
        self.reads += 1;
        // Checked and read through one open: the kubelet swaps a Secret's
        // files, and a check by path could pass a file the read never sees.
        let unreadable =
            |e: std::io::Error| anyhow::anyhow!("read cluster token {}: {e}", self.path.display());
        let file = std::fs::File::open(&self.path).map_err(unreadable)?;
        let opened = checked(&self.path, &file.metadata().map_err(unreadable)?)?;
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(file, MAX_TOKEN_FILE_BYTES + 1),
            &mut text,
        )
        .map_err(unreadable)?;
        anyhow::ensure!(
            text.len() as u64 <= MAX_TOKEN_FILE_BYTES,
            "token file {}: more than a token's {MAX_TOKEN_FILE_BYTES} bytes",
            self.path.display()
        );
        let token = Token::new(&text);
        anyhow::ensure!(
            !token.expose().is_empty(),
            "token file {} is empty",
            self.path.display()
        );
        // Taken again after reading: a write under way while reading gives
        // another stamp, so that file is read once more at the next push.
        let after = check_file(&self.path)?;
        if after == stamp && after == opened {
            self.cached = Some((stamp, token.clone()));
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_downward_api_name_wins_over_the_host_name() {
        assert_eq!(node_name(Some(" worker-7 ")).unwrap(), "worker-7");
        assert!(!node_name(None).unwrap().is_empty());
        assert_eq!(node_name(Some("")).unwrap(), node_name(None).unwrap());
    }

    #[test]
    fn a_node_name_outside_the_aggregators_domain_is_warned_of() {
        for bad in ["worker 7", "worker/7", ".hidden", &"n".repeat(254)] {
            let warning = node_name_warning(bad).expect("a warning");
            assert!(warning.starts_with("NODE_NAME"), "{warning}");
            assert!(warning.contains("node name must be 1 to 253"), "{warning}");
        }
        assert_eq!(node_name_warning("ip-10-0-1-7.ec2.internal"), None);
    }

    fn private_file(path: &std::path::Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn a_token_file_is_read_again_only_when_it_changed_and_wins_over_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        private_file(&path, "first\n");
        let mut source =
            TokenSource::from_settings(Some(path.clone()), Some("env".into())).unwrap();
        let TokenSource::File(file) = &mut source else {
            panic!("the file wins");
        };
        assert_eq!(file.current().unwrap().expose(), "first");
        assert_eq!(file.current().unwrap().expose(), "first");
        assert_eq!(file.reads(), 1, "an unchanged file is not read again");
        // A rotation as the kubelet does it: a new file put in place.
        let next = dir.path().join("token.new");
        private_file(&next, "rotated");
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(file.current().unwrap().expose(), "rotated");
        assert_eq!(file.reads(), 2);
        assert!(TokenSource::from_settings(None, None).is_err());
        assert!(TokenSource::from_settings(None, Some("  ".into())).is_err());
    }

    #[test]
    fn a_world_readable_token_file_is_refused_by_its_path_also_through_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("..data");
        std::fs::create_dir(&data).unwrap();
        let real = data.join("token");
        private_file(&real, "secret-value");
        let link = dir.path().join("token");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut source = TokenSource::from_settings(Some(link.clone()), None).unwrap();
        assert_eq!(source.current().unwrap().expose(), "secret-value");

        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = TokenSource::from_settings(Some(link.clone()), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&link.display().to_string()), "{e}");
        assert!(
            e.contains("chmod o-r") && e.contains("defaultMode: 0400"),
            "{e}"
        );
        // A running agent refuses it too, at the next push.
        assert!(source.current().is_err());
        let missing = dir.path().join("missing");
        let e = TokenSource::from_settings(Some(missing), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn the_token_is_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        private_file(&path, "s3cr3t-from-file");
        let mut file = TokenSource::from_settings(Some(path), None).unwrap();
        let token = file.current().unwrap();
        let value = TokenSource::from_settings(None, Some("s3cr3t-from-env".into())).unwrap();
        let printed = format!("{token:?} {file:?} {value:?} {:#?}", value);
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
    }
}
