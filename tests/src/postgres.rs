//! A throwaway PostgreSQL server for tests (issue 10's groundwork): its own
//! cluster in a temporary directory, on a free local port, stopped and
//! removed when dropped. The binaries come from the machine (`initdb` on
//! the PATH, or Debian's `/usr/lib/postgresql/<version>/bin`); as root, the
//! server runs as the `postgres` user, since PostgreSQL refuses root.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context};

pub struct TempPostgres {
    // Declared first so the server is stopped before the directory goes.
    bin: PathBuf,
    data: PathBuf,
    pub port: u16,
    as_user: Option<String>,
    _dir: tempfile::TempDir,
}

/// The directory holding `initdb` and `pg_ctl`, if the machine has PostgreSQL.
pub fn binaries() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir);
            }
        }
    }
    // Debian installs them off the PATH, one directory per major version.
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl TempPostgres {
    /// Initialises a cluster and starts it; fails naming what went wrong.
    pub fn start() -> anyhow::Result<TempPostgres> {
        let bin = binaries().context("no PostgreSQL on this machine (initdb not found)")?;
        let dir = tempfile::Builder::new()
            .prefix("core-meter-pg-")
            .tempdir()?;
        let as_user = if is_root() {
            Some("postgres".to_string())
        } else {
            None
        };
        if let Some(user) = &as_user {
            let uid = Command::new("id").args(["-u", user]).output()?;
            if !uid.status.success() {
                bail!("running as root needs a `{user}` user for the server (PostgreSQL refuses root)");
            }
            let status = Command::new("chown")
                .args([&format!("{user}:"), &dir.path().display().to_string()])
                .status()?;
            if !status.success() {
                bail!("cannot hand {} to {user}", dir.path().display());
            }
        }
        let port = free_port()?;
        let pg = TempPostgres {
            bin,
            data: dir.path().join("data"),
            port,
            as_user,
            _dir: dir,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            pg.socket_dir().display()
        );
        let log = pg.data.with_file_name("server.log");
        pg.run(
            "pg_ctl",
            &[
                "-D",
                &pg.data.display().to_string(),
                "-l",
                &log.display().to_string(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .with_context(|| {
            format!(
                "the server did not start; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        Ok(pg)
    }

    fn socket_dir(&self) -> &Path {
        self.data.parent().expect("the data directory has a parent")
    }

    /// A connection URL for `database` as the `postgres` superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs one of the server's programs (as the server's user when root).
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let path = self.bin.join(program);
        let mut command = match &self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let out = command
            .args(args)
            .output()
            .with_context(|| format!("run {}", path.display()))?;
        if !out.status.success() {
            bail!(
                "{program} {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// Runs SQL through `psql` and returns its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        // Beside the server's programs, or (Debian's wrapper) on the PATH.
        let psql = Some(self.bin.join("psql"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("psql"));
        let out = Command::new(psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url(database))
            .args(["-c", sql])
            .output()
            .context("run psql")?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        if let Err(e) = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]) {
            eprintln!("stopping the test PostgreSQL: {e}");
        }
    }
}
