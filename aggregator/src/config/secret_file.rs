//! Files that hold secrets (the admin token, the TLS key, webhook secrets):
//! refused when anyone on the machine may read them, bounded in size, and
//! never quoted in an error.

use std::io::Read;
use std::path::Path;

use anyhow::anyhow;

/// The bytes of a secret file, at most `max_bytes`: refused when anyone on
/// the machine may read it (mode `o+r`). The mode is that of the file read,
/// opened once (a Kubernetes Secret's files are links, swapped as a whole at
/// an update: a check by path and a later read could see two files).
pub fn read_private(setting: &str, path: &Path, max_bytes: u64) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable = |e: std::io::Error| anyhow!("{setting}: cannot read {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mode = file.metadata().map_err(unreadable)?.permissions().mode();
    anyhow::ensure!(
        mode & 0o004 == 0,
        "{setting}: {} may be read by anyone (mode {:o}); it holds a secret: chmod o-r it \
         (a Kubernetes Secret volume: defaultMode 0400)",
        path.display(),
        mode & 0o777
    );
    let mut content = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut content)
        .map_err(unreadable)?;
    anyhow::ensure!(
        content.len() as u64 <= max_bytes,
        "{setting}: {} is larger than {max_bytes} bytes; it must hold only the secret",
        path.display()
    );
    Ok(content)
}

/// The secret a file holds, trimmed of surrounding whitespace: refused when
/// world-readable, larger than `max_bytes`, not UTF-8 or empty. `setting`
/// names where the path came from; no message quotes the content.
pub fn read_secret(setting: &str, path: &Path, max_bytes: u64) -> anyhow::Result<String> {
    let content = read_private(setting, path, max_bytes)?;
    let content = String::from_utf8(content)
        .map_err(|_| anyhow!("{setting}: {} is not UTF-8 text", path.display()))?;
    let secret = content.trim();
    anyhow::ensure!(!secret.is_empty(), "{setting}: {} is empty", path.display());
    Ok(secret.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &Path, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join("secret");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_secret_readable_by_its_owner_and_group_is_read_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o400, 0o600, 0o440, 0o640] {
            let path = file(dir.path(), "  s3cret-value\n", mode);
            assert_eq!(read_secret("x_file", &path, 64).unwrap(), "s3cret-value");
        }
    }

    #[test]
    fn a_secret_anyone_may_read_is_refused_naming_the_path_and_the_fix_not_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "s3cret-value", 0o644);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        for p in [&path, &link] {
            let e = read_secret("x_file", p, 64).unwrap_err().to_string();
            assert!(e.starts_with("x_file: "), "{e}");
            assert!(
                e.contains(&p.display().to_string()) && e.contains("mode 644"),
                "{e}"
            );
            assert!(
                e.contains("chmod o-r") && e.contains("defaultMode 0400"),
                "{e}"
            );
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn an_empty_oversized_or_missing_secret_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_secret("x_file", &file(dir.path(), " \n", 0o600), 64).unwrap_err();
        assert!(e.to_string().ends_with("is empty"), "{e}");
        let e = read_secret("x_file", &file(dir.path(), &"y".repeat(65), 0o600), 64).unwrap_err();
        assert!(e.to_string().contains("larger than 64 bytes"), "{e}");
        assert!(!e.to_string().contains("yyy"), "{e}");
        let e = read_secret("x_file", &dir.path().join("none"), 64).unwrap_err();
        assert!(e.to_string().starts_with("x_file: cannot read"), "{e}");
    }
}
