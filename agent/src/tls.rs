//! How the agent reaches the aggregator safely: the roots a certificate is verified against, the optional client certificate, the loopback rule for plain HTTP, and telling a TLS failure from other push errors.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The largest PEM file read (a CA bundle of a few hundred certificates fits).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// What the aggregator's certificate is verified against, and what this
/// agent shows when asked for a certificate. There is no way to skip
/// verification.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// `None`: the system's roots and Mozilla's (webpki) roots.
    ca: Option<CaBundle>,
    identity: Option<ClientIdentity>,
}

#[derive(Clone)]
struct CaBundle {
    path: PathBuf,
    certs: Vec<CertificateDer<'static>>,
}

#[derive(Clone)]
struct ClientIdentity {
    cert_path: PathBuf,
    /// The certificate chain and the key, as one PEM for reqwest. It holds
    /// the private key, so nothing prints it (see the `Debug` impl).
    pem: Vec<u8>,
}

/// The paths only: never key material.
impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_file", &self.ca.as_ref().map(|c| &c.path))
            .field("client_cert", &self.identity.as_ref().map(|i| &i.cert_path))
            .finish()
    }
}

impl ClientTls {
    /// Reads and checks every file given; a bad one is an error naming its
    /// flag, its path and what is wrong with it.
    pub fn load(
        ca_file: Option<&Path>,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
    ) -> anyhow::Result<ClientTls> {
        let ca = ca_file.map(load_ca).transpose()?;
        let identity = match (client_cert, client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(load_identity(cert, key)?),
            _ => anyhow::bail!(
                "--client-cert (CORE_METER_CLIENT_CERT) and --client-key (CORE_METER_CLIENT_KEY) go together: give both or neither"
            ),
        };
        Ok(ClientTls { ca, identity })
    }

    /// What certificates are verified against, for log lines and errors.
    pub fn roots(&self) -> String {
        match &self.ca {
            Some(ca) => format!("the CA file {}", ca.path.display()),
            None => "the system's and Mozilla's roots".to_string(),
        }
    }

    pub fn has_client_cert(&self) -> bool {
        self.identity.is_some()
    }

    /// Sets the roots and the client certificate on a client being built.
    pub fn apply(
        &self,
        mut builder: reqwest::ClientBuilder,
    ) -> anyhow::Result<reqwest::ClientBuilder> {
        builder = builder.use_rustls_tls();
        if let Some(ca) = &self.ca {
            // Only the cluster's CA: a public certificate for the aggregator's
            // name is not enough.
            builder = builder.tls_built_in_root_certs(false);
            for der in &ca.certs {
                let cert = reqwest::Certificate::from_der(der)
                    .map_err(|e| anyhow::anyhow!("--ca-file {}: {e}", ca.path.display()))?;
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(id) = &self.identity {
            let identity = reqwest::Identity::from_pem(&id.pem)
                .map_err(|e| anyhow::anyhow!("--client-cert {}: {e}", id.cert_path.display()))?;
            builder = builder.identity(identity);
        }
        Ok(builder)
    }
}

/// A PEM file's bytes, checked and read through one open. `private`: a key,
/// refused when anyone on the node may read it.
fn read_pem(flag: &str, path: &Path, private: bool) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let bad = |reason: String| anyhow::anyhow!("{flag} {}: {reason}", path.display());
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| bad(format!("cannot read it: {e}")))?;
    if !meta.is_file() {
        return Err(bad("not a file".to_string()));
    }
    let mode = meta.permissions().mode();
    if private && mode & 0o004 != 0 {
        return Err(bad(format!(
            "readable by everyone (mode {:o}); it holds a private key: run `chmod o-r {}`, or give the Secret's volume `defaultMode: 0400`",
            mode & 0o7777,
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(bad(format!(
            "more than the {MAX_PEM_BYTES} bytes a PEM file may have"
        )));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("the file is empty".to_string()));
    }
    Ok(bytes)
}

/// The certificates of a PEM file, at least one.
fn certificates(
    flag: &str,
    path: &Path,
    pem: &[u8],
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{flag} {}: not valid PEM: {e}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{flag} {}: no certificate in it (expected PEM blocks \"-----BEGIN CERTIFICATE-----\")",
        path.display()
    );
    Ok(certs)
}

fn load_ca(path: &Path) -> anyhow::Result<CaBundle> {
    let pem = read_pem("--ca-file", path, false)?;
    let certs = certificates("--ca-file", path, &pem)?;
    // Each must be a certificate rustls can take as a root.
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots.add(cert.clone()).map_err(|e| {
            anyhow::anyhow!(
                "--ca-file {}: certificate {} of {} cannot be a root: {e}",
                path.display(),
                i + 1,
                certs.len()
            )
        })?;
    }
    Ok(CaBundle {
        path: path.to_path_buf(),
        certs,
    })
}

fn load_identity(cert_path: &Path, key_path: &Path) -> anyhow::Result<ClientIdentity> {
    let cert_pem = read_pem("--client-cert", cert_path, false)?;
    certificates("--client-cert", cert_path, &cert_pem)?;
    let key_pem = read_pem("--client-key", key_path, true)?;
    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        anyhow::anyhow!(
            "--client-key {}: no private key in it (expected a PEM block \"-----BEGIN PRIVATE KEY-----\", RSA or EC): {e}",
            key_path.display()
        )
    })?;
    let mut pem = cert_pem;
    pem.push(b'\n');
    pem.extend_from_slice(&key_pem);
    // Try it as reqwest will, so that a pair it cannot take is a start-up
    // error, not a failure at the first push.
    reqwest::Identity::from_pem(&pem).map_err(|e| {
        anyhow::anyhow!(
            "--client-cert {} with --client-key {}: {e}",
            cert_path.display(),
            key_path.display()
        )
    })?;
    Ok(ClientIdentity {
        cert_path: cert_path.to_path_buf(),
        pem,
    })
}

/// How the agent may talk to the aggregator at `url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Https,
    /// Plain HTTP to this machine: nothing crosses a network.
    LoopbackHttp,
    /// Plain HTTP across a network, allowed by `--insecure-plaintext`.
    InsecureHttp,
}

/// Plain HTTP only to a loopback address or `localhost`, unless
/// `insecure_plaintext`: the token and the samples would cross the network
/// in the clear.
pub fn transport(url: &str, insecure_plaintext: bool) -> anyhow::Result<Transport> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| anyhow::anyhow!("--aggregator {url}: not a URL: {e}"))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("--aggregator {url}: no host in it"))?;
    match parsed.scheme() {
        "https" => Ok(Transport::Https),
        "http" => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = match bare.parse::<IpAddr>() {
                Ok(ip) => ip.is_loopback(),
                Err(_) => {
                    let name = bare.trim_end_matches('.').to_ascii_lowercase();
                    // Only the exact name: a resolver may send *.localhost to DNS.
                    name == "localhost"
                }
            };
            if loopback {
                Ok(Transport::LoopbackHttp)
            } else if insecure_plaintext {
                Ok(Transport::InsecureHttp)
            } else {
                anyhow::bail!(
                    "--aggregator {url}: plain HTTP to a host that is not this machine would send the token and what is sent with it in the clear; use https://, or give --insecure-plaintext (CORE_METER_INSECURE_PLAINTEXT=true) to allow it"
                )
            }
        }
        other => anyhow::bail!(
            "--aggregator {url}: the scheme {other}:// is neither https:// nor http://"
        ),
    }
}

/// What went wrong in TLS, if a request failed there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// This agent could not verify the aggregator's certificate.
    ServerCertificate(String),
    /// The aggregator refused the handshake (e.g. no or a wrong client
    /// certificate), or it failed otherwise.
    Handshake(String),
}

/// Walks an error's `source()` chain for a rustls error (or, failing that,
/// words that only a certificate failure uses). An `io::Error` does not
/// list the error it wraps as its source, so that one is looked into too.
pub fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut texts = Vec::new();
    while let Some(err) = current {
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        let tls = err
            .downcast_ref::<rustls::Error>()
            .or_else(|| inner.and_then(|i| i.downcast_ref::<rustls::Error>()));
        if let Some(tls) = tls {
            return Some(classify(tls));
        }
        texts.push(err.to_string());
        current = err.source().or(inner);
    }
    let certificate = [
        "certificate",
        "UnknownIssuer",
        "NotValidForName",
        "invalid peer certificate",
    ];
    let text = texts.join(": ");
    certificate
        .iter()
        .any(|w| text.contains(w))
        .then(|| TlsFailure::ServerCertificate(texts.last().cloned().unwrap_or(text)))
}

fn classify(tls: &rustls::Error) -> TlsFailure {
    match tls {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::UnsupportedNameType => TlsFailure::ServerCertificate(tls.to_string()),
        rustls::Error::AlertReceived(alert) => {
            TlsFailure::Handshake(format!("{tls}{}", alert_hint(*alert)))
        }
        _ => TlsFailure::Handshake(tls.to_string()),
    }
}

/// The error and its sources on one line, `: ` between them (as anyhow's `{:#}`).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(e);
    while let Some(err) = current {
        let text = err.to_string();
        // An io::Error prints what it wraps; do not say it twice.
        if !parts.last().is_some_and(|last| last.ends_with(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

fn alert_hint(alert: rustls::AlertDescription) -> &'static str {
    use rustls::AlertDescription as A;
    match alert {
        A::CertificateRequired => {
            " (the aggregator wants a client certificate: give --client-cert and --client-key)"
        }
        A::BadCertificate
        | A::UnknownCA
        | A::CertificateUnknown
        | A::CertificateExpired
        | A::CertificateRevoked
        | A::UnsupportedCertificate
        | A::AccessDenied => " (the aggregator refused this agent's client certificate)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_allowed_only_to_loopback_unless_insecure_plaintext_is_given() {
        for url in [
            "http://127.0.0.1:8080",
            "http://127.3.4.5",
            "http://[::1]:80",
            "http://localhost:8080",
            "http://LOCALHOST.",
        ] {
            assert_eq!(
                transport(url, false).unwrap(),
                Transport::LoopbackHttp,
                "{url}"
            );
        }
        let e = transport("http://core-meter-aggregator:8080", false).unwrap_err();
        assert!(e.to_string().contains("http://core-meter-aggregator:8080"));
        assert!(e.to_string().contains("--insecure-plaintext"));
        assert!(transport("http://10.0.0.1:8080", false).is_err());
        assert!(transport("http://localhost.example.com", false).is_err());
        assert_eq!(
            transport("http://10.0.0.1:8080", true).unwrap(),
            Transport::InsecureHttp
        );
        assert_eq!(
            transport("https://core-meter-aggregator:8443", false).unwrap(),
            Transport::Https
        );
        assert!(transport("ftp://x", true).is_err());
        assert!(transport("not a url", true).is_err());
    }

    #[test]
    fn a_missing_or_empty_pem_file_is_named_with_its_flag_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = ClientTls::load(Some(&missing), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--ca-file ") && e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "\n").unwrap();
        let e = ClientTls::load(Some(&empty), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty.pem") && e.contains("empty"), "{e}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello").unwrap();
        let e = ClientTls::load(Some(&garbage), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("garbage.pem") && e.contains("no certificate"),
            "{e}"
        );
        let e = ClientTls::load(None, Some(&garbage), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--client-cert") && e.contains("--client-key"),
            "{e}"
        );
    }
}
