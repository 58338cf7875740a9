//! The real binaries as end-to-end tests use them: found (built if needed), started on free ports, spoken to over plain HTTP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The path of a workspace binary. `cargo test --workspace` (the README's
/// test command) builds every binary before any test runs; run alone, this
/// crate's tests build the binaries only if they are missing.
pub fn binary(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let path = target.join("debug").join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--workspace", "--bins"])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --workspace --bins failed");
    }
    path
}

/// A port nothing listens on now.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `aggregator serve` on a free port with its own database.
pub struct Service {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: String,
}

impl Service {
    pub fn start(database: &Path, admin: &str) -> Service {
        let addr = free_addr();
        let child = Command::new(binary("aggregator"))
            .args(["serve", "--listen", &addr.to_string(), "--database"])
            .arg(database)
            .env("CORE_METER_ADMIN_TOKEN", admin)
            .env_remove("CORE_METER_WEBHOOK_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aggregator serve");
        let service = Service {
            child,
            addr,
            admin: admin.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while request(addr, "GET", "/readyz", None, None).map(|r| r.0) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "aggregator serve did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        service
    }

    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let (s, b) =
            request(self.addr, method, path, Some(&self.admin), body).expect("the service answers");
        (
            s,
            serde_json::from_str(&b).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Creates an account and a cluster; returns the cluster token.
    pub fn account_with_cluster(&self, account: &str, cluster: &str) -> String {
        let (s, _) = self.admin(
            "POST",
            "/v1/admin/accounts",
            Some(&format!(r#"{{"id":"{account}"}}"#)),
        );
        assert_eq!(s, 201);
        let (s, v) = self.admin(
            "POST",
            &format!("/v1/admin/accounts/{account}/clusters"),
            Some(&format!(r#"{{"name":"{cluster}"}}"#)),
        );
        assert_eq!(s, 201);
        v["token"].as_str().unwrap().to_string()
    }

    pub fn kill_hard(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`: (status, body), or None if the connection failed.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Some((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// The machine's online CPUs, as the kernel lists them.
pub fn online_cpus() -> u64 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    text.trim()
        .split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1,
            None => 1,
        })
        .sum()
}
