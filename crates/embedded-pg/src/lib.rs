//! A throwaway PostgreSQL for `sluice --demo`, the integration tests and the
//! benchmarks: initdb into a temporary directory, start `postgres` on a free port on
//! 127.0.0.1, stop and delete everything on drop.
//!
//! `initdb` refuses to run as root, so when we are root the server runs as the
//! `postgres` user (the child process itself gets that uid, so its PID is the
//! postmaster's and signals reach it directly).

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};

/// Options for a throwaway server.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// pg_hba.conf lines. The superuser `postgres` always gets local trust.
    pub hba: Vec<String>,
    /// Extra postgresql.conf lines.
    pub conf: Vec<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            hba: vec![
                "host all postgres 127.0.0.1/32 trust".into(),
                "host all all 127.0.0.1/32 scram-sha-256".into(),
                "host all all ::1/128 scram-sha-256".into(),
            ],
            conf: vec![],
        }
    }
}

pub struct EmbeddedPg {
    dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    bin: PathBuf,
    child: Option<Child>,
}

/// The directory with initdb, postgres, psql, pgbench: `$PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`.
pub fn bin_dir() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .context("PostgreSQL binaries not found: install postgresql or set PG_BIN")?;
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The unprivileged account to run PostgreSQL as when we are root.
fn run_as() -> Result<Option<User>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user =
        User::from_name("postgres")?.context("running as root and there is no 'postgres' user to run PostgreSQL as")?;
    Ok(Some(user))
}

fn as_user(cmd: &mut Command, user: &Option<User>) {
    if let Some(u) = user {
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
        cmd.env("HOME", &u.dir);
    }
}

/// Makes `cmd` run as the account PostgreSQL runs as when we are root: PgBouncer,
/// like PostgreSQL, refuses to run as root.
pub fn run_unprivileged(cmd: &mut Command) -> Result<()> {
    as_user(cmd, &run_as()?);
    Ok(())
}

/// Gives `path` to that account when we are root, so it can write there.
pub fn give_to_server_account(path: &Path) -> Result<()> {
    if let Some(u) = run_as()? {
        nix::unistd::chown(path, Some(u.uid), Some(u.gid)).with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

impl EmbeddedPg {
    pub fn start(opts: PgOptions) -> Result<EmbeddedPg> {
        let bin = bin_dir()?;
        let user = run_as()?;
        let dir = tempfile::Builder::new().prefix("sluice-pg-").tempdir()?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let data = dir.path().join("data");
        if let Some(u) = &user {
            nix::unistd::chown(dir.path(), Some(u.uid), Some(u.gid))?;
        }

        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-N", "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_user(&mut initdb, &user);
        let out = initdb.output().context("cannot run initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }

        let port = free_port()?;
        let mut conf = vec![
            format!("port = {port}"),
            "listen_addresses = '127.0.0.1'".into(),
            format!("unix_socket_directories = '{}'", dir.path().display()),
            "fsync = off".into(),
            "synchronous_commit = off".into(),
            "full_page_writes = off".into(),
            "shared_buffers = 64MB".into(),
            "max_connections = 300".into(),
            "log_min_messages = warning".into(),
        ];
        conf.extend(opts.conf);
        append(&data.join("postgresql.conf"), &conf)?;
        let mut hba = vec!["local all all trust".to_string()];
        hba.extend(opts.hba);
        fs::write(data.join("pg_hba.conf"), hba.join("\n") + "\n")?;

        let mut pg = EmbeddedPg {
            dir,
            data,
            port,
            bin,
            child: None,
        };
        pg.spawn()?;
        Ok(pg)
    }

    /// Starts the server again after [`EmbeddedPg::stop`]; waits until it accepts connections.
    pub fn spawn(&mut self) -> Result<()> {
        let user = run_as()?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))?;
        if let Some(u) = &user {
            nix::unistd::chown(&self.dir.path().join("postgres.log"), Some(u.uid), Some(u.gid))?;
        }
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        as_user(&mut cmd, &user);
        self.child = Some(cmd.spawn().context("cannot start postgres")?);
        self.wait_ready(Duration::from_secs(30))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait()? {
                    bail!("postgres exited ({status}); log:\n{}", self.log());
                }
            }
            if start.elapsed() > timeout {
                bail!("postgres did not start within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// Directory of the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn bin(&self, tool: &str) -> PathBuf {
        self.bin.join(tool)
    }

    /// PID of the postmaster.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Runs SQL as the superuser over the Unix socket; returns psql's unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-h"])
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .output()
            .context("cannot run psql")?;
        if !out.status.success() {
            bail!("psql failed on {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Restarts the server (fast shutdown, then start on the same port).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// `pg_ctl restart -m immediate`: the postmaster is told to quit at once (SIGQUIT),
    /// every backend dies without cleanup, and the next start runs crash recovery.
    pub fn restart_immediate(&mut self) -> Result<()> {
        self.signal_and_reap(Signal::SIGQUIT)?;
        self.spawn()
    }

    /// SIGKILL of the postmaster, then a start on the same port. Its orphaned backends
    /// notice the postmaster's death and exit; until they have, the new postmaster
    /// refuses to start (shared memory still in use), so the start is retried.
    pub fn kill_and_start(&mut self) -> Result<()> {
        self.signal_and_reap(Signal::SIGKILL)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Sends `signal` to the postmaster and waits for it to exit.
    fn signal_and_reap(&mut self, signal: Signal) -> Result<()> {
        let mut child = self.child.take().context("postgres is not running")?;
        kill(Pid::from_raw(child.id() as i32), signal).context("cannot signal postgres")?;
        child.wait().context("cannot wait for postgres")?;
        Ok(())
    }

    /// Fast shutdown: rolls back open transactions and disconnects everyone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EmbeddedPg {
    fn drop(&mut self) {
        self.stop();
    }
}

fn append(path: &Path, lines: &[String]) -> Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new().append(true).open(path)?;
    writeln!(f)?;
    for l in lines {
        writeln!(f, "{l}")?;
    }
    Ok(())
}
