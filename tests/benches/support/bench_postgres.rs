//! A throwaway PostgreSQL server for the benches (`ingest_herd`, `billing_run`).
//!
//! Like `e2e::postgres::TempPostgres` (the machine's `initdb` and `pg_ctl`,
//! as the `postgres` user when root, a free local port, a temporary
//! directory), but with PostgreSQL's durable defaults: `fsync`,
//! `synchronous_commit` and `full_page_writes` on. The SQLite side of the
//! benches commits with `synchronous = FULL`, and the store leaves
//! PostgreSQL's durability to the server, so a server with `fsync = off` (the
//! test helpers' setting) would compare a disk-free PostgreSQL with a syncing
//! SQLite. `durable = false` gives the test helpers' settings, for a
//! comparison. It can also be crashed (`pg_ctl stop -m immediate`) and
//! restarted, so that a bench reads only what PostgreSQL recovers.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

pub struct BenchPostgres {
    bin: PathBuf,
    data: PathBuf,
    pub port: u16,
    as_user: Option<String>,
    options: String,
    durable: bool,
    _dir: tempfile::TempDir,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl BenchPostgres {
    /// Initialises a cluster in a temporary directory and starts it; panics naming what failed.
    pub fn start(durable: bool) -> BenchPostgres {
        let bin = e2e::postgres::binaries().expect(
            "no PostgreSQL on this machine (initdb not found): install Debian's postgresql",
        );
        let dir = tempfile::Builder::new()
            .prefix("core-meter-bench-pg-")
            .tempdir()
            .expect("a temporary directory");
        let as_user = is_root().then(|| "postgres".to_string());
        if let Some(user) = &as_user {
            let status = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(dir.path())
                .status()
                .expect("run chown");
            assert!(
                status.success(),
                "cannot hand {} to {user}",
                dir.path().display()
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            dir.path().display()
        );
        if !durable {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let pg = BenchPostgres {
            bin,
            data: dir.path().join("data"),
            port,
            as_user,
            options,
            durable,
            _dir: dir,
        };
        let data = pg.data.display().to_string();
        pg.run(
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        );
        pg.start_server();
        pg
    }

    fn start_server(&self) {
        let data = self.data.display().to_string();
        let log = self.data.with_file_name("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-l",
                &log,
                "-o",
                &self.options,
                "-w",
                "-t",
                "120",
                "start",
            ],
        );
    }

    /// A connection URL for `database` as the `postgres` superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A client on `database`.
    pub fn client(&self, database: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(database), postgres::NoTls)
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
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        self.start_server();
    }

    /// CPU seconds (user + system) the server has used so far: the
    /// postmaster with its exited children (reaped backends) and its live children.
    pub fn cpu_secs(&self) -> f64 {
        let pid_file =
            std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap_or_default();
        let Some(postmaster) = pid_file.lines().next().map(str::trim) else {
            return 0.0;
        };
        let fields = |stat: &str| -> Vec<String> {
            let text = std::fs::read_to_string(stat).unwrap_or_default();
            text.rsplit_once(')').map_or(Vec::new(), |(_, rest)| {
                rest.split_whitespace().map(str::to_string).collect()
            })
        };
        let ticks =
            |f: &[String], i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
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
        total / 100.0
    }

    /// Runs one of the server's programs (as the server's user when root); panics on failure.
    fn run(&self, program: &str, args: &[&str]) {
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
            .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
        assert!(
            out.status.success(),
            "{program} {}: {}{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.data.with_file_name("server.log")).unwrap_or_default()
        );
    }
}

impl Drop for BenchPostgres {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let path = self.bin.join("pg_ctl");
        let mut command = match &self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}
