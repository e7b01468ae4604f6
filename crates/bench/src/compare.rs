//! `sluice-bench compare`: starts a throwaway PostgreSQL, seeds it once, and starts
//! PgBouncer (when installed) and Sluice from **one and the same pgbouncer.ini**, so
//! both poolers get the same pool budget by construction (Sluice reads PgBouncer's
//! format as it is).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sluice_embedded_pg::{free_port, give_to_server_account, run_unprivileged, EmbeddedPg, PgOptions};

use crate::runner::Target;

/// What `compare` runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// PostgreSQL directly (a connection per client, no pooler).
    Direct,
    Pgbouncer,
    Sluice,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Pgbouncer => "pgbouncer",
            Kind::Sluice => "sluice",
        }
    }
}

/// The pool budget both poolers get; the defaults are the incident's.
#[derive(Debug, Clone)]
pub struct PoolBudget {
    pub pool_mode: String,
    pub default_pool_size: u32,
    pub reserve_pool_size: u32,
    pub reserve_pool_timeout: f64,
    pub query_wait_timeout: u32,
    pub max_client_conn: u32,
    /// More `name = value` lines for `[pgbouncer]`.
    pub extra: Vec<String>,
    /// Lines for Sluice only: settings PgBouncer does not know, and `[lanes]` entries.
    pub sluice_extra: Vec<String>,
    pub sluice_lanes: Vec<String>,
}

impl Default for PoolBudget {
    fn default() -> Self {
        PoolBudget {
            pool_mode: "transaction".into(),
            default_pool_size: 25,
            reserve_pool_size: 5,
            reserve_pool_timeout: 5.0,
            query_wait_timeout: 120,
            max_client_conn: 2000,
            extra: Vec::new(),
            sluice_extra: Vec::new(),
            sluice_lanes: Vec::new(),
        }
    }
}

/// Running PostgreSQL and poolers; everything stops on drop.
pub struct Stack {
    pg: EmbeddedPg,
    work: tempfile::TempDir,
    poolers: Vec<(Kind, Child, u16)>,
    /// The pgbouncer.ini both poolers read.
    pub ini: String,
    /// Superuser connection to the benchmark database, for setup and monitoring.
    pub admin_conninfo: String,
}

/// The database and role the scenario runs as.
const DB: &str = "app";
const ROLE: &str = "app";

impl Stack {
    /// Starts PostgreSQL with room for `max_direct_clients` direct connections.
    pub fn start_postgres(max_direct_clients: usize) -> Result<Stack> {
        let pg = EmbeddedPg::start(PgOptions {
            hba: vec!["host all all 127.0.0.1/32 trust".into()],
            conf: vec![
                format!("max_connections = {}", (max_direct_clients + 100).max(300)),
                "shared_buffers = 256MB".into(),
                "work_mem = 16MB".into(),
                "track_io_timing = on".into(),
            ],
        })
        .context("cannot start the throwaway PostgreSQL")?;
        pg.psql("postgres", &format!("CREATE ROLE {ROLE} LOGIN"))?;
        pg.psql("postgres", &format!("CREATE DATABASE {DB} OWNER {ROLE}"))?;
        let work = tempfile::Builder::new().prefix("sluice-bench-").tempdir()?;
        std::fs::set_permissions(work.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        give_to_server_account(work.path())?;
        let admin_conninfo = format!("host=127.0.0.1 port={} user=postgres dbname={DB}", pg.port());
        Ok(Stack {
            pg,
            work,
            poolers: Vec::new(),
            ini: String::new(),
            admin_conninfo,
        })
    }

    /// The scenario's own role on PostgreSQL directly (setup runs as it, so it owns
    /// the tables).
    pub fn direct_conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user={ROLE} dbname={DB}", self.pg.port())
    }

    /// Starts the poolers among `kinds`, each from the same ini with its own port.
    pub fn start_poolers(
        &mut self,
        kinds: &[Kind],
        budget: &PoolBudget,
        sluice: &Path,
        pgbouncer: Option<&Path>,
    ) -> Result<()> {
        std::fs::write(self.work.path().join("userlist.txt"), format!("\"{ROLE}\" \"\"\n"))?;
        for kind in kinds {
            let bin = match kind {
                Kind::Direct => continue,
                Kind::Sluice => sluice.to_path_buf(),
                Kind::Pgbouncer => match pgbouncer {
                    Some(p) => p.to_path_buf(),
                    None => bail!(
                        "PgBouncer is not installed (apt-get install -y pgbouncer), or leave it out with --targets"
                    ),
                },
            };
            let port = free_port()?;
            let dir = self.work.path().join(kind.name());
            std::fs::create_dir_all(&dir)?;
            give_to_server_account(&dir)?;
            let mut ini = self.ini_text(budget, port, &dir);
            if *kind == Kind::Sluice {
                for line in &budget.sluice_extra {
                    ini.push_str(line);
                    ini.push('\n');
                }
                if !budget.sluice_lanes.is_empty() {
                    ini.push_str("\n[lanes]\n");
                    for line in &budget.sluice_lanes {
                        ini.push_str(line);
                        ini.push('\n');
                    }
                }
            }
            let ini_path = dir.join("pooler.ini");
            std::fs::write(&ini_path, &ini)?;
            if *kind == Kind::Sluice {
                // The ini shown in the report: the same for both but the port.
                self.ini = ini
                    .replace(&port.to_string(), "PORT")
                    .replace(&dir.display().to_string(), "DIR");
            }
            let log = std::fs::File::create(dir.join("pooler.log"))?;
            let mut cmd = Command::new(&bin);
            cmd.arg(&ini_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            if *kind == Kind::Pgbouncer {
                run_unprivileged(&mut cmd)?;
            }
            let mut child = cmd.spawn().with_context(|| format!("cannot start {}", bin.display()))?;
            wait_listening(&mut child, port, &dir.join("pooler.log"))
                .with_context(|| format!("{} did not start", kind.name()))?;
            self.poolers.push((*kind, child, port));
        }
        Ok(())
    }

    fn ini_text(&self, b: &PoolBudget, port: u16, dir: &Path) -> String {
        let mut ini = format!(
            "[databases]\n{DB} = host=127.0.0.1 port={pg} dbname={DB}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir = {dir}\n\
             auth_type = trust\nauth_file = {userlist}\npool_mode = {mode}\n\
             default_pool_size = {size}\nreserve_pool_size = {reserve}\nreserve_pool_timeout = {rt}\n\
             query_wait_timeout = {qwt}\nmax_client_conn = {mcc}\n\
             log_connections = 0\nlog_disconnections = 0\n",
            pg = self.pg.port(),
            dir = dir.display(),
            userlist = self.work.path().join("userlist.txt").display(),
            mode = b.pool_mode,
            size = b.default_pool_size,
            reserve = b.reserve_pool_size,
            rt = b.reserve_pool_timeout,
            qwt = b.query_wait_timeout,
            mcc = b.max_client_conn,
        );
        for line in &b.extra {
            ini.push_str(line);
            ini.push('\n');
        }
        ini
    }

    /// The targets, in the order of `kinds`.
    pub fn targets(&self, kinds: &[Kind]) -> Vec<Target> {
        kinds
            .iter()
            .filter_map(|k| {
                let conninfo = match k {
                    Kind::Direct => self.direct_conninfo(),
                    _ => {
                        let (_, _, port) = self.poolers.iter().find(|(kind, _, _)| kind == k)?;
                        format!("host=127.0.0.1 port={port} user={ROLE} dbname={DB}")
                    }
                };
                Some(Target {
                    name: k.name().to_owned(),
                    conninfo,
                })
            })
            .collect()
    }

    /// A pooler's log (for errors).
    pub fn pooler_log(&self, kind: Kind) -> String {
        std::fs::read_to_string(self.work.path().join(kind.name()).join("pooler.log")).unwrap_or_default()
    }

    /// Between runs: a checkpoint, so one run's writes are not flushed during the next.
    pub fn settle(&self) -> Result<()> {
        self.pg.psql(DB, "CHECKPOINT").map(|_| ())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.poolers {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, child, _) in &mut self.poolers {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_listening(child: &mut Child, port: u16, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "not listening on {port} after 15 s: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `--sluice`, else `$SLUICE_BIN`, else `sluice` next to this binary, else on `PATH`.
pub fn find_sluice(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given.or_else(|| std::env::var_os("SLUICE_BIN").map(PathBuf::from)) {
        return Ok(p);
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("sluice")))
        .filter(|p| p.exists())
    {
        return Ok(sibling);
    }
    on_path("sluice").context("sluice binary not found: build it (cargo build --release -p sluice) or pass --sluice")
}

/// `--pgbouncer`, else `pgbouncer` on `PATH` or in /usr/sbin (Debian's package).
pub fn find_pgbouncer(given: Option<PathBuf>) -> Option<PathBuf> {
    given
        .or_else(|| on_path("pgbouncer"))
        .or_else(|| Some(PathBuf::from("/usr/sbin/pgbouncer")).filter(|p| p.exists()))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file())
}
