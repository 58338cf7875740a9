//! HTTPS for the service: rustls with a certificate chain and key read from
//! PEM files, read again when they change (cert-manager rotates them) without
//! touching open connections, and optionally a CA whose client certificates
//! agents must present to push samples (mutual TLS).

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{anyhow, Context};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::TlsFiles;
use crate::metrics::ServiceMetrics;

/// How often the files are looked at for a change by default. cert-manager
/// renews a certificate well before it ends (a third of its life by
/// default), so a few seconds late is nothing.
pub const DEFAULT_RELOAD_POLL: Duration = Duration::from_secs(10);

/// The most a PEM file may hold: a long chain is a few KiB; more means the
/// setting names the wrong file.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// What a request's connection proved, put in each request's extensions by
/// the server (absent on plain HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    /// The client presented a certificate the client CA verified.
    pub client_certificate: bool,
    /// The client's address, as the audit log records it.
    pub peer: Option<std::net::SocketAddr>,
}

/// The TLS settings in force, and what they were read from.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// The digest of the files last read (successfully or not), so one bad
    /// change is reported once, not at every look.
    seen: Mutex<[u8; 32]>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

/// The bytes of the files, read once per look.
struct Read3 {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Read3 {
    fn digest(&self) -> [u8; 32] {
        let mut d = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            let part = part.map_or(&[][..], |p| p.as_slice());
            d.update((part.len() as u64).to_le_bytes());
            d.update(part);
        }
        d.finalize().into()
    }
}

impl Tls {
    /// Reads and checks the files; any fault stops start-up naming the setting and the file.
    pub fn load(files: TlsFiles) -> anyhow::Result<Tls> {
        let read = read_files(&files)?;
        let config = server_config(&files, &read)?;
        Ok(Tls {
            seen: Mutex::new(read.digest()),
            current: RwLock::new(config),
            files,
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Whether agents must present a client certificate to push.
    pub fn requires_client_certificate(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The acceptor for a new connection: the settings read last.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().expect("tls lock").clone())
    }

    /// Reads the files again; when they changed and are sound, new
    /// connections use them. Open connections keep what they agreed.
    /// `Ok(false)`: unchanged; `Err`: changed but unusable, and the settings
    /// in force stay (said once per change).
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let read = read_files(&self.files)?;
        let digest = read.digest();
        {
            let mut seen = self.seen.lock().expect("tls lock");
            if *seen == digest {
                return Ok(false);
            }
            *seen = digest;
        }
        let config = server_config(&self.files, &read)?;
        *self.current.write().expect("tls lock") = config;
        Ok(true)
    }
}

/// Looks at the files every `watch.poll` until `watch.stop`, swapping in
/// changed ones. A fault is logged when it first appears or changes, not
/// at every look.
pub async fn watch_files(tls: Arc<Tls>, metrics: Arc<ServiceMetrics>, mut watch: super::Watch) {
    let mut last_fault: Option<String> = None;
    while watch.nap(super::TLS_FILES).await {
        let looked = {
            let tls = tls.clone();
            tokio::task::spawn_blocking(move || tls.reload_if_changed())
                .await
                .unwrap_or_else(|e| Err(anyhow!("the reload task failed: {e}")))
        };
        match looked {
            Ok(false) => {}
            Ok(true) => {
                last_fault = None;
                metrics.tls_reloads.get_or_create(&ok_label(true)).inc();
                tracing::info!(cert = %tls.files.cert.display(), "TLS certificate reloaded; new connections use it");
            }
            Err(e) => {
                let fault = format!("{e:#}");
                if last_fault.as_ref() != Some(&fault) {
                    metrics.tls_reloads.get_or_create(&ok_label(false)).inc();
                    tracing::error!(error = %fault, "TLS files changed but cannot be used; still serving the previous certificate");
                    last_fault = Some(fault);
                }
            }
        }
    }
}

fn ok_label(ok: bool) -> crate::metrics::ResultLabels {
    crate::metrics::ResultLabels {
        result: if ok { "ok" } else { "failed" }.to_string(),
    }
}

fn read_files(files: &TlsFiles) -> anyhow::Result<Read3> {
    Ok(Read3 {
        cert: read_pem("tls_cert", &files.cert)?,
        key: crate::config::secret_file::read_private("tls_key", &files.key, MAX_PEM_BYTES)?,
        client_ca: files
            .client_ca
            .as_deref()
            .map(|p| read_pem("tls_client_ca", p))
            .transpose()?,
    })
}

fn read_pem(setting: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| anyhow!("{setting}: cannot read {}: {e}", path.display()))?;
    anyhow::ensure!(
        bytes.len() as u64 <= MAX_PEM_BYTES,
        "{setting}: {} is larger than {MAX_PEM_BYTES} bytes; it should hold PEM certificates or a key",
        path.display()
    );
    Ok(bytes)
}

fn certificates(
    setting: &str,
    path: &Path,
    pem: &[u8],
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{setting}: {} is not PEM: {e}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{setting}: {} holds no certificate (no -----BEGIN CERTIFICATE----- block)",
        path.display()
    );
    Ok(certs)
}

fn server_config(files: &TlsFiles, read: &Read3) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = certificates("tls_cert", &files.cert, &read.cert)?;
    // The key's own parse error could quote it; say only where and what.
    let key = PrivateKeyDer::from_pem_slice(&read.key).map_err(|_| {
        anyhow!(
            "tls_key: {} holds no private key in PEM (PKCS#8, PKCS#1 or SEC1)",
            files.key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match (&files.client_ca, &read.client_ca) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("tls_client_ca", path, pem)? {
                roots.add(cert).map_err(|e| {
                    anyhow!(
                        "tls_client_ca: {} holds a certificate rustls refuses: {e}",
                        path.display()
                    )
                })?;
            }
            // Asked, not required, at the handshake: probes, Prometheus and
            // operators connect without one; the ingest route requires it.
            // A certificate presented is verified all the same.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| anyhow!("tls_client_ca: {}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        anyhow!(
            "tls_cert and tls_key: {} and {} do not make a usable certificate: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Session tickets (stateless, keys rotated every 6 hours): an agent
    // that comes back within them resumes instead of a full handshake.
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| anyhow!("TLS session tickets: {e}"))?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Made {
        dir: tempfile::TempDir,
        files: TlsFiles,
    }

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn made(name: &str) -> Made {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: None,
        };
        issue(&files, name);
        Made { dir, files }
    }

    fn issue(files: &TlsFiles, name: &str) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        write(&files.cert, &c.cert.pem(), 0o644);
        write(&files.key, &c.key_pair.serialize_pem(), 0o600);
    }

    fn error(files: TlsFiles) -> String {
        format!("{:#}", Tls::load(files).unwrap_err())
    }

    #[test]
    fn a_sound_certificate_and_key_load() {
        let m = made("localhost");
        let tls = Tls::load(m.files.clone()).unwrap();
        assert!(!tls.requires_client_certificate());
        assert!(!tls.reload_if_changed().unwrap(), "nothing changed");
        // Session tickets, so an agent's next push resumes.
        assert!(tls.current.read().unwrap().ticketer.enabled());
    }

    #[test]
    fn a_key_anyone_may_read_is_refused_naming_the_setting_the_file_and_the_fix() {
        let m = made("localhost");
        std::fs::set_permissions(&m.files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = error(m.files.clone());
        assert!(e.starts_with("tls_key: "), "{e}");
        assert!(e.contains(&m.files.key.display().to_string()), "{e}");
        assert!(e.contains("mode 644") && e.contains("chmod o-r"), "{e}");
    }

    #[test]
    fn files_that_are_not_what_they_should_be_are_refused_naming_the_setting() {
        let m = made("localhost");
        let mut swapped = m.files.clone();
        swapped.cert = m.files.key.clone();
        swapped.key = m.dir.path().join("key-copy");
        std::fs::copy(&m.files.cert, &swapped.key).unwrap();
        std::fs::set_permissions(&swapped.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = error(swapped);
        assert!(
            e.starts_with("tls_cert: ") && e.contains("no certificate"),
            "{e}"
        );

        let mut no_key = m.files.clone();
        no_key.key = m.dir.path().join("empty.key");
        write(&no_key.key, "", 0o600);
        let e = error(no_key);
        assert!(
            e.starts_with("tls_key: ") && e.contains("no private key"),
            "{e}"
        );

        let other = made("other");
        let mut mismatched = m.files.clone();
        mismatched.key = other.files.key.clone();
        let e = error(mismatched);
        assert!(e.starts_with("tls_cert and tls_key: "), "{e}");

        let mut missing = m.files.clone();
        missing.client_ca = Some(m.dir.path().join("no-such-ca.pem"));
        let e = error(missing);
        assert!(
            e.starts_with("tls_client_ca: cannot read") && e.contains("no-such-ca.pem"),
            "{e}"
        );
    }

    #[test]
    fn a_changed_certificate_is_taken_and_a_broken_change_is_reported_once_keeping_the_old() {
        let m = made("localhost");
        let tls = Tls::load(m.files.clone()).unwrap();
        let before = Arc::as_ptr(&tls.current.read().unwrap().clone());
        issue(&m.files, "localhost");
        assert!(tls.reload_if_changed().unwrap());
        let after = Arc::as_ptr(&tls.current.read().unwrap().clone());
        assert_ne!(before, after);

        write(&m.files.cert, "not a certificate", 0o644);
        assert!(tls.reload_if_changed().is_err());
        assert!(
            !tls.reload_if_changed().unwrap(),
            "the same bad files: said once"
        );
        assert_eq!(Arc::as_ptr(&tls.current.read().unwrap().clone()), after);
    }
}
