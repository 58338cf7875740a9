//! The store speaks TLS to PostgreSQL: a server of the test's own with a
//! certificate from a throwaway CA; the store verifies it against
//! `sslrootcert`, and refuses a server its roots did not sign.

use crate::support;
use testkit::pki;

use std::path::{Path, PathBuf};
use std::process::Command;

use aggregator::config::Database;
use aggregator::store::{Durability, Store};
use pki::{write_file, Ca};

struct Server {
    dir: PathBuf,
    url: String,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/tools/postgres-server");
        let out = Command::new(&script)
            .arg("start")
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Server {
            dir: dir.to_path_buf(),
            url,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/tools/postgres-server");
        let _ = Command::new(script).arg("stop").arg(&self.dir).status();
    }
}

fn connect(url: String) -> Result<Store, String> {
    support::off_runtime(|| {
        Store::connect(&Database::Postgres(url), Durability::Durable).map_err(|e| e.to_string())
    })
}

#[test]
fn the_store_speaks_tls_to_postgresql_and_refuses_a_certificate_its_roots_did_not_sign() {
    if support::postgres_server().is_none() {
        eprintln!("skipped: runs where CORE_METER_TEST_POSTGRES says PostgreSQL is installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("database CA");
    let pg = dir.path().join("pg");
    std::fs::create_dir_all(pg.join("tls")).unwrap();
    let issued = ca.server("postgres");
    write_file(&pg.join("tls/server.crt"), &issued.cert_pem, 0o644);
    write_file(&pg.join("tls/server.key"), &issued.key_pem, 0o600);
    let server = Server::start(&pg);
    let ca_file = dir.path().join("ca.pem");
    write_file(&ca_file, &ca.pem(), 0o644);

    let store = connect(format!(
        "{}/postgres?sslmode=require&sslrootcert={}",
        server.url,
        ca_file.display()
    ))
    .expect("a TLS session to a server the CA signed");
    // The server's own view: the store's sessions are encrypted.
    let encrypted: i64 = support::off_runtime(|| {
        let mut admin =
            postgres::Client::connect(&format!("{}/postgres", server.url), postgres::NoTls)
                .unwrap();
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.application_name = 'core-meter' AND s.ssl",
                &[],
            )
            .unwrap()
            .get(0)
    });
    assert!(encrypted >= 1, "{encrypted} encrypted sessions");
    support::off_runtime(move || drop(store));

    let stranger = dir.path().join("other-ca.pem");
    write_file(&stranger, &Ca::new("another CA").pem(), 0o644);
    let refused = connect(format!(
        "{}/postgres?sslmode=require&sslrootcert={}",
        server.url,
        stranger.display()
    ))
    .err()
    .expect("a server certificate the roots did not sign is refused");
    assert!(
        refused.contains("certificate") || refused.contains("UnknownIssuer"),
        "{refused}"
    );

    let missing = connect(format!(
        "{}/postgres?sslmode=require&sslrootcert={}/none.pem",
        server.url,
        dir.path().display()
    ))
    .err()
    .unwrap();
    assert!(
        missing.contains("sslrootcert: cannot read") && missing.contains("none.pem"),
        "{missing}"
    );
}
