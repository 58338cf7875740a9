//! The node's container images, through the Kubernetes Container Runtime
//! Interface (`ImageService/ListImages`, gRPC over the runtime's unix
//! socket: containerd's or CRI-O's), for the image-scan add-on (SPEC 10.2).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::ListImagesRequest;
use serde::Serialize;
use tokio::net::UnixStream;
use tonic::transport::{Endpoint, Uri};

/// Where runtimes put their CRI socket, looked at in this order.
pub const KNOWN_SOCKETS: [&str; 2] = ["/run/containerd/containerd.sock", "/var/run/crio/crio.sock"];

/// The most images one list carries (SPEC 10.2); more are cut, the first
/// by ID kept, and said in the log.
pub const MAX_IMAGES: usize = 5_000;
/// The most tags or repository digests of one image that are sent.
pub const MAX_NAMES: usize = 64;
/// The longest tag or repository digest sent; a longer one is left out.
pub const MAX_NAME_CHARS: usize = 512;

/// One image as the runtime describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    /// The image ID: `sha256:` and the digest of its config.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub size_bytes: u64,
}

/// Why the images could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("no container runtime socket: none of {} exists (set --cri-socket)", KNOWN_SOCKETS.join(", "))]
    NoSocket,
    #[error("cannot connect to the container runtime at {path}: {error}")]
    Connect { path: String, error: String },
    #[error("the container runtime at {path} refused ListImages: {error}")]
    List { path: String, error: String },
    #[error("the container runtime at {path} did not answer within {secs} s")]
    Timeout { path: String, secs: u64 },
}

impl ImagesError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ImagesError::NoSocket => "no_socket",
            ImagesError::Connect { .. } => "connect",
            ImagesError::List { .. } => "list",
            ImagesError::Timeout { .. } => "timeout",
        }
    }
}

/// The first runtime socket that exists under `root` (`/` on a node; the
/// DaemonSet mounts the host's at the same path).
pub fn find_socket(root: &Path) -> Option<PathBuf> {
    KNOWN_SOCKETS
        .iter()
        .map(|s| root.join(s.trim_start_matches('/')))
        .find(|p| p.exists())
}

/// Lists the images of the runtime at `socket`, sorted by ID, at most
/// [`MAX_IMAGES`] (the second value says how many were left out).
pub async fn list(socket: &Path, timeout: Duration) -> Result<(Vec<Image>, usize), ImagesError> {
    let path = socket.display().to_string();
    let work = async {
        let target = socket.to_path_buf();
        // The URI is a placeholder: the connector dials the socket.
        let channel =
            Endpoint::from_static("http://[::]:50051")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let target = target.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(target).await?))
                    }
                }))
                .await
                .map_err(|e| ImagesError::Connect {
                    path: path.clone(),
                    error: format!(
                        "{e}: {}",
                        std::error::Error::source(&e)
                            .map(ToString::to_string)
                            .unwrap_or_default()
                    ),
                })?;
        let mut client = ImageServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let answer = client
            .list_images(ListImagesRequest { filter: None })
            .await
            .map_err(|e| ImagesError::List {
                path: path.clone(),
                error: e.message().to_string(),
            })?;
        Ok(answer.into_inner().images)
    };
    let images =
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ImagesError::Timeout {
                path: socket.display().to_string(),
                secs: timeout.as_secs(),
            })??;
    let names = |list: Vec<String>| -> Vec<String> {
        list.into_iter()
            .filter(|n| n.chars().count() <= MAX_NAME_CHARS && !n.chars().any(char::is_control))
            .take(MAX_NAMES)
            .collect()
    };
    let mut out: Vec<Image> = images
        .into_iter()
        .filter(|i| shared::images::check_image_id(&i.id).is_ok())
        .map(|i| Image {
            id: i.id,
            repo_tags: names(i.repo_tags),
            repo_digests: names(i.repo_digests),
            size_bytes: i.size,
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out.dedup_by(|a, b| a.id == b.id);
    let cut = out.len().saturating_sub(MAX_IMAGES);
    out.truncate(MAX_IMAGES);
    Ok((out, cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_known_socket_that_exists_is_found() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(find_socket(root.path()), None);
        let crio = root.path().join("var/run/crio");
        std::fs::create_dir_all(&crio).unwrap();
        std::fs::write(crio.join("crio.sock"), "").unwrap();
        assert_eq!(find_socket(root.path()), Some(crio.join("crio.sock")));
        let containerd = root.path().join("run/containerd");
        std::fs::create_dir_all(&containerd).unwrap();
        std::fs::write(containerd.join("containerd.sock"), "").unwrap();
        assert_eq!(
            find_socket(root.path()),
            Some(containerd.join("containerd.sock"))
        );
    }

    #[tokio::test]
    async fn a_socket_nobody_listens_on_is_a_connect_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("none.sock");
        let e = list(&socket, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(e.kind(), "connect", "{e}");
        assert!(e.to_string().contains("none.sock"), "{e}");
    }
}
