//! `sluice [OPTIONS] [CONFIG]`: PgBouncer's command line, plus `--check` and `--demo`.

mod daemon;
mod demo;
mod healthcheck;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use sluice_pooler::config::{self, Loaded};
use tracing::{error, info, warn};

/// A PostgreSQL connection pooler, drop-in for PgBouncer.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about)]
struct Cli {
    /// Config file: Sluice TOML, or a PgBouncer .ini (default: pooler.toml).
    config: Option<PathBuf>,
    /// Run in the background (needs pidfile; logs go to logfile).
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Do not log to stderr.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// More logging (-v: debug, -vv: trace).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    verbose: u8,
    /// Switch to this user at startup.
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// PgBouncer's online restart. Not supported: Sluice reloads in place instead.
    #[arg(short = 'R', long = "reboot", hide = true)]
    reboot: bool,
    /// Validate the config, print the effective settings, and exit.
    #[arg(long)]
    check: bool,
    /// Start a throwaway PostgreSQL and run Sluice in front of it.
    #[arg(long)]
    demo: bool,
}

/// `sluice healthcheck [CONFIG]`.
#[derive(Parser, Debug)]
#[command(name = "sluice healthcheck")]
struct HealthCli {
    /// The config file Sluice runs with (default: pooler.toml).
    config: Option<PathBuf>,
}

/// `sluice convert pgbouncer.ini > pooler.toml`.
#[derive(Parser, Debug)]
#[command(name = "sluice convert")]
struct ConvertCli {
    /// The PgBouncer ini file to convert (its %include files are noted, not inlined).
    ini: PathBuf,
}

fn convert(cli: ConvertCli) -> Result<()> {
    let text = std::fs::read_to_string(&cli.ini).with_context(|| format!("cannot read {}", cli.ini.display()))?;
    let out = config::convert::ini_to_toml(&text, &cli.ini.display().to_string()).map_err(anyhow::Error::msg)?;
    print!("{out}");
    Ok(())
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("convert") {
        return match convert(ConvertCli::parse_from(std::env::args().skip(1))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice convert: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        let cli = HealthCli::parse_from(std::env::args().skip(1));
        let default_path = cli.config.is_none();
        let path = cli.config.unwrap_or_else(|| PathBuf::from("pooler.toml"));
        return match healthcheck::run(default_path, &path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice healthcheck: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if cli.reboot {
        bail!("-R (online restart) is not supported; send SIGHUP to reload instead");
    }
    let path = cli.config.clone().unwrap_or_else(|| PathBuf::from("pooler.toml"));
    if cli.demo {
        init_logging(None, cli.quiet, cli.verbose)?;
        return demo::run(&path);
    }
    let loaded = load(cli.config.is_none(), &path)?;
    if cli.check {
        print_check(&loaded);
        return Ok(());
    }
    let user = cli.user.clone().or_else(|| loaded.config.user.clone());
    let mut started = daemon::Started::foreground();
    if cli.daemon {
        let Some(pidfile) = &loaded.config.pidfile else {
            bail!("-d needs pidfile set in {}", path.display());
        };
        if loaded.config.logfile.is_none() {
            bail!(
                "-d needs logfile set in {} (stderr is closed in the background)",
                path.display()
            );
        }
        check_pidfile(Path::new(pidfile))?;
        // Fork before any thread exists (the runtime starts after this).
        started = daemon::start()?;
    }
    if let Some(u) = &user {
        switch_user(u)?;
    }
    init_logging(
        loaded.config.logfile.as_deref(),
        cli.quiet || cli.daemon,
        cli.verbose.max(loaded.config.verbose),
    )?;
    if let Some(pidfile) = &loaded.config.pidfile {
        std::fs::write(pidfile, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write pidfile {pidfile}"))?;
    }
    for (key, origin) in &loaded.ignored {
        warn!("{origin}: setting '{key}' is accepted for compatibility but has no effect yet");
    }
    for w in &loaded.warnings {
        warn!("{w}");
    }
    let result = serve(loaded.clone(), &mut started);
    if let Err(e) = &result {
        // In the background stderr goes nowhere: the logfile must say why.
        if cli.daemon {
            error!("{e:#}");
        }
    }
    if let Some(pidfile) = &loaded.config.pidfile {
        let _ = std::fs::remove_file(pidfile);
    }
    result
}

fn serve(loaded: Loaded, started: &mut daemon::Started) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice")
        .build()?;
    runtime.block_on(async move {
        let app = sluice_pooler::start(&loaded).await?;
        info!(config = %loaded.path.display(), version = env!("CARGO_PKG_VERSION"), "sluice started");
        started.confirm();
        sluice_pooler::shutdown::run_until_shutdown(&app).await?;
        remove_unix_socket(&loaded.config);
        Ok(())
    })
}

/// The listener's socket file outlives the process otherwise.
fn remove_unix_socket(c: &config::Config) {
    if !c.unix_socket_dir.is_empty() {
        let _ = std::fs::remove_file(Path::new(&c.unix_socket_dir).join(format!(".s.PGSQL.{}", c.listen_port)));
    }
}

/// SIGTERM, SIGINT or SIGQUIT: the demo stops at once on any of them.
async fn wait_for_shutdown_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = quit.recv() => {}
    }
    Ok(())
}

fn check_pidfile(pidfile: &Path) -> Result<()> {
    if let Ok(text) = std::fs::read_to_string(pidfile) {
        if let Ok(pid) = text.trim().parse::<i32>() {
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
                bail!(
                    "pidfile {} names a running process ({pid}): is Sluice already running?",
                    pidfile.display()
                );
            }
        }
    }
    Ok(())
}

fn switch_user(name: &str) -> Result<()> {
    let user = nix::unistd::User::from_name(name)?.with_context(|| format!("no such user: {name}"))?;
    if nix::unistd::geteuid() == user.uid {
        return Ok(());
    }
    nix::unistd::setgid(user.gid).context("setgid")?;
    nix::unistd::setuid(user.uid).with_context(|| format!("cannot switch to user {name}"))?;
    Ok(())
}

fn init_logging(logfile: Option<&str>, quiet: bool, verbose: u8) -> Result<()> {
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    match (logfile, quiet) {
        (Some(f), quiet) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
                .with_context(|| format!("cannot open logfile {f}"))?;
            let file = std::sync::Mutex::new(file);
            if quiet {
                builder.with_writer(file).init();
            } else {
                builder.with_writer(file.and(std::io::stderr)).init();
            }
        }
        (None, true) => builder.with_writer(std::io::sink).init(),
        (None, false) => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

/// The config file; with none given and no `pooler.toml` here, the environment alone
/// (as in a container configured like the PgBouncer images).
pub(crate) fn load(default_path: bool, path: &Path) -> Result<Loaded> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    if default_path && !path.exists() && config::env::configures_backend(&env) {
        return config::load_env_only(env).map_err(anyhow::Error::msg);
    }
    config::load(path).map_err(anyhow::Error::msg)
}

/// `--check`: the effective settings with where each came from (file:line, an
/// environment variable, or the default); passwords masked.
fn print_check(loaded: &Loaded) {
    println!("# {} is valid", loaded.path.display());
    for (key, origin) in &loaded.ignored {
        println!("# {origin}: '{key}' is accepted but has no effect yet");
    }
    for w in &loaded.warnings {
        println!("# warning: {w}");
    }
    let value = toml::Value::try_from(&loaded.config).unwrap_or(toml::Value::Table(Default::default()));
    let table = value.as_table().cloned().unwrap_or_default();
    for (key, v) in &table {
        if v.is_table() {
            continue;
        }
        let from = loaded.sources.get(key).map(String::as_str).unwrap_or("default");
        println!("{key} = {v}  # {from}");
    }
    for section in ["databases", "users"] {
        let Some(entries) = table.get(section).and_then(|t| t.as_table()) else {
            continue;
        };
        for (name, entry) in entries {
            let from = loaded
                .sources
                .get(&format!("{section}.{name}"))
                .map(|s| format!("  # {s}"))
                .unwrap_or_default();
            println!("\n[{section}.{}]{from}", config::convert::table_key(name));
            for (k, v) in entry.as_table().into_iter().flatten() {
                let v = if k == "password" {
                    toml::Value::from("***")
                } else {
                    v.clone()
                };
                println!("{k} = {v}");
            }
        }
    }
    println!("\n# {} user(s) with passwords", loaded.secrets.len());
}
