//! TLS for the tests: the workspace's throwaway CA (`testkit::pki`) with a server and a client certificate, and serving the fake aggregator over HTTPS (tokio-rustls + hyper), with or without a client certificate required.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use testkit::pki::{write_file, Ca};

/// A CA and what it signed, written as PEM files into a directory.
pub struct Pki {
    /// The CA's certificate: what `--ca-file` is given.
    pub ca_file: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// A new CA named `name`, a server certificate for `127.0.0.1` and
    /// `localhost`, and a client certificate for `node-agent`, all from the
    /// workspace's one throwaway CA (`testkit::pki`); the files go into
    /// `dir` with `prefix`.
    pub fn new(dir: &Path, prefix: &str) -> Pki {
        let ca = Ca::new(&format!("{prefix} test CA"));
        let server = ca.server("localhost");
        let client = ca.client("node-agent");
        let write = |name: &str, text: &str| {
            let path = dir.join(format!("{prefix}-{name}"));
            // Keys as a Secret's defaultMode 0400 leaves them: others may not read them.
            let mode = if name.ends_with("key.pem") {
                0o600
            } else {
                0o644
            };
            write_file(&path, text, mode);
            path
        };
        Pki {
            ca_file: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server.cert_pem),
            server_key: write("server-key.pem", &server.key_pem),
            client_cert: write("client.pem", &client.cert_pem),
            client_key: write("client-key.pem", &client.key_pem),
        }
    }

    /// The server's rustls settings: its certificate, and when
    /// `require_client_cert`, a client certificate signed by this CA.
    pub fn server_config(&self, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.server_cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&self.server_key).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&self.ca_file).unwrap() {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(certs, key).unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// Serves `app` over TLS on `listener` until the runtime ends, each
/// connection on its own task; handshakes that fail are counted.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    config: Arc<rustls::ServerConfig>,
    handshake_failures: Arc<AtomicU64>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let failures = handshake_failures.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(_) => {
                    failures.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
