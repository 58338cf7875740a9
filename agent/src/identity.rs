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

/// Where the cluster token comes from. A mounted Secret is re-read before
/// each push, so a rotated token takes effect without a restart.
#[derive(Debug, Clone)]
pub enum TokenSource {
    File(PathBuf),
    Value(String),
}

impl TokenSource {
    /// The file wins over the value when both are set.
    pub fn from_settings(
        file: Option<PathBuf>,
        value: Option<String>,
    ) -> anyhow::Result<TokenSource> {
        match (file, value) {
            (Some(f), _) => Ok(TokenSource::File(f)),
            (None, Some(v)) if !v.trim().is_empty() => Ok(TokenSource::Value(v.trim().to_string())),
            _ => anyhow::bail!(
                "no cluster token: set CORE_METER_TOKEN_FILE (a mounted Secret) or CORE_METER_TOKEN"
            ),
        }
    }

    pub fn current(&self) -> anyhow::Result<String> {
        match self {
            TokenSource::Value(v) => Ok(v.clone()),
            TokenSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("read cluster token {}: {e}", path.display()))?;
                let token = text.trim();
                anyhow::ensure!(
                    !token.is_empty(),
                    "cluster token file {} is empty",
                    path.display()
                );
                Ok(token.to_string())
            }
        }
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
    fn a_token_file_is_read_fresh_and_wins_over_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let source = TokenSource::from_settings(Some(path.clone()), Some("env".into())).unwrap();
        assert_eq!(source.current().unwrap(), "first");
        std::fs::write(&path, "rotated").unwrap();
        assert_eq!(source.current().unwrap(), "rotated");
        assert!(TokenSource::from_settings(None, None).is_err());
        assert!(TokenSource::from_settings(None, Some("  ".into())).is_err());
    }
}
