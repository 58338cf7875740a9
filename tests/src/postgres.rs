//! The one throwaway PostgreSQL server of the tests and the benches: its
//! own cluster in a temporary directory, on a free local port, stopped and
//! removed when dropped. The binaries come from the machine (`initdb` on
//! the PATH, or Debian's `/usr/lib/postgresql/<version>/bin`); as root, the
//! server runs as the `postgres` user, since PostgreSQL refuses root.
//!
//! Tests take it with `fsync` off (`start`); the benches with PostgreSQL's
//! durable defaults (`start_durable`): the SQLite side of a bench commits
//! with `synchronous = FULL`, so a disk-free PostgreSQL would not be a fair
//! peer. It can be crashed (`pg_ctl stop -m immediate`) and restarted, so
//! that a bench reads only what PostgreSQL recovers.

use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{bail, Context};

pub struct TempPostgres {
    // Declared first so the server is stopped before the directory goes.
    bin: PathBuf,
    data: PathBuf,
    pub port: u16,
    as_user: Option<String>,
    options: String,
    durable: bool,
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

impl TempPostgres {
    /// Initialises a cluster with `fsync` off and starts it; fails naming
    /// what went wrong.
    pub fn start() -> anyhow::Result<TempPostgres> {
        TempPostgres::start_with(false)
    }

    /// The same with PostgreSQL's durable defaults (`fsync`,
    /// `synchronous_commit`, `full_page_writes` on): the benches' peer.
    pub fn start_durable() -> anyhow::Result<TempPostgres> {
        TempPostgres::start_with(true)
    }

    /// `start_durable` when `durable`, else `start`.
    pub fn start_with(durable: bool) -> anyhow::Result<TempPostgres> {
        TempPostgres::start_with_options(durable, "")
    }

    /// A server with more `-c name=value` options (a bench's
    /// `shared_preload_libraries=pg_stat_statements`, say).
    pub fn start_with_options(durable: bool, extra: &str) -> anyhow::Result<TempPostgres> {
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
        // Held through initdb, let go just before the server binds it.
        let held = testkit::ports::HeldPort::new();
        let port = held.addr().port();
        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            dir.path().display()
        );
        if !durable {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        if !extra.is_empty() {
            options.push(' ');
            options.push_str(extra);
        }
        let pg = TempPostgres {
            bin,
            data: dir.path().join("data"),
            port,
            as_user,
            options,
            durable,
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
        held.release();
        pg.start_server()?;
        Ok(pg)
    }

    fn start_server(&self) -> anyhow::Result<()> {
        let log = self.data.with_file_name("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-l",
                &log.display().to_string(),
                "-o",
                &self.options,
                "-w",
                "-t",
                "120",
                "start",
            ],
        )
        .with_context(|| {
            format!(
                "the server did not start; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        Ok(())
    }

    /// Starts counting where the server's time goes in `database`, for
    /// [`TempPostgres::statements`] (the server must have been started
    /// with [`TempPostgres::STATEMENTS`]).
    pub fn count_statements(&self, database: &str) {
        self.client(database)
            .batch_execute(
                "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset();",
            )
            .expect("pg_stat_statements");
    }

    /// The statements that took the most of the server's time since
    /// [`TempPostgres::count_statements`], a line each: time (execution and
    /// planning), calls, rows, the start of the text.
    pub fn statements(&self, database: &str) -> String {
        let rows = self
            .client(database)
            .query(
                "SELECT calls, rows, total_exec_time + total_plan_time,
                        left(regexp_replace(query, '\\s+', ' ', 'g'), 110)
                   FROM pg_stat_statements ORDER BY 3 DESC LIMIT 15",
                &[],
            )
            .expect("pg_stat_statements");
        let mut out =
            String::from("server time by statement (pg_stat_statements, execution + planning):\n");
        for r in rows {
            let (calls, rows, ms, query): (i64, i64, f64, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            out.push_str(&format!(
                "  {ms:>9.1} ms {calls:>7} calls {rows:>8} rows  {query}\n"
            ));
        }
        out
    }

    /// The server option that loads `pg_stat_statements`.
    pub const STATEMENTS: &'static str = "-c shared_preload_libraries=pg_stat_statements";

    /// A client on `database`.
    pub fn client(&self, database: &str) -> ::postgres::Client {
        ::postgres::Client::connect(&self.url(database), ::postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url(database)))
    }

    /// Creates `database` and returns its URL.
    pub fn create_database(&self, database: &str) -> String {
        self.client("postgres")
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .expect("CREATE DATABASE");
        self.url(database)
    }

    /// The server's durability settings, as it reports them.
    pub fn settings(&self) -> String {
        let mut client = self.client("postgres");
        let names = [
            "server_version",
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_sync_method",
            "shared_buffers",
            "commit_delay",
            "commit_siblings",
        ];
        let shown: Vec<String> = names
            .iter()
            .map(|name| {
                let row = client
                    .query_one(&format!("SHOW {name}"), &[])
                    .expect("SHOW");
                format!("{name}={}", row.get::<_, String>(0))
            })
            .collect();
        format!(
            "PostgreSQL {} ({})",
            shown.join(", "),
            if self.durable {
                "durable defaults"
            } else {
                "the test helpers' fsync=off settings"
            }
        )
    }

    /// Crashes the server (`pg_ctl stop -m immediate`: no checkpoint, WAL
    /// replay at the next start) and starts it again on the same port.
    pub fn crash_and_restart(&self) {
        let data = self.data.display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"])
            .expect("crash the server");
        self.start_server().expect("restart the server");
    }

    /// CPU time (user + system, in clock ticks of 1/100 s) the server has
    /// used so far: the postmaster with its exited children (reaped
    /// backends) and its live children.
    pub fn cpu_ticks(&self) -> u64 {
        let pid_file =
            std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap_or_default();
        let Some(postmaster) = pid_file.lines().next().map(str::trim) else {
            return 0;
        };
        let fields = |stat: &str| -> Vec<String> {
            let text = std::fs::read_to_string(stat).unwrap_or_default();
            text.rsplit_once(')').map_or(Vec::new(), |(_, rest)| {
                rest.split_whitespace().map(str::to_string).collect()
            })
        };
        let ticks =
            |f: &[String], i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // After the name: state, ppid, ... utime (11), stime (12), cutime (13), cstime (14).
        let own = fields(&format!("/proc/{postmaster}/stat"));
        let mut total = ticks(&own, 11) + ticks(&own, 12) + ticks(&own, 13) + ticks(&own, 14);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let path = entry.path().join("stat");
            if !entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                continue;
            }
            let f = fields(&path.display().to_string());
            if f.get(1).map(String::as_str) == Some(postmaster) {
                total += ticks(&f, 11) + ticks(&f, 12);
            }
        }
        total
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
