//! `sluice --demo`: the embedded default. Starts a throwaway PostgreSQL, puts Sluice
//! in front of it with `pooler.toml`'s settings, and cleans up on Ctrl-C.

use std::path::Path;

use anyhow::{Context, Result};
use sluice_embedded_pg::{EmbeddedPg, PgOptions};
use sluice_pooler::config::{self, DatabaseConfig};
use tracing::info;

pub const DEMO_USER: &str = "demo";
pub const DEMO_PASSWORD: &str = "demo";

pub fn run(config_path: &Path) -> Result<()> {
    let mut loaded = if config_path.exists() {
        config::load(config_path).map_err(anyhow::Error::msg)?
    } else {
        eprintln!(
            "sluice: {} not found; using PgBouncer's defaults in transaction mode",
            config_path.display()
        );
        let mut l = config::Loaded {
            config: config::Config::default(),
            path: config_path.to_path_buf(),
            secrets: Default::default(),
            ignored: vec![],
            sources: Default::default(),
            warnings: vec![],
            lanes: Default::default(),
            client_tls: None,
            server_tls: None,
            hba: None,
        };
        l.config.pool_mode = config::PoolMode::Transaction;
        l.config.listen_addr = "127.0.0.1".into();
        l
    };

    eprintln!("sluice: starting a throwaway PostgreSQL ...");
    let pg = EmbeddedPg::start(PgOptions::default())?;
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {DEMO_USER} LOGIN PASSWORD '{DEMO_PASSWORD}'"),
    )?;
    pg.psql("postgres", &format!("CREATE DATABASE {DEMO_USER} OWNER {DEMO_USER}"))?;

    // Every database goes to the throwaway server; the demo user logs in with SCRAM.
    loaded.config.databases.clear();
    loaded.config.databases.insert(
        "*".into(),
        DatabaseConfig {
            host: Some(pg.host().into()),
            port: Some(pg.port()),
            ..Default::default()
        },
    );
    loaded.config.auth_file = None;
    loaded.secrets.clear();
    loaded.secrets.insert(DEMO_USER.into(), DEMO_PASSWORD.into());
    // The demo user may also drive the admin console.
    loaded.config.admin_users = DEMO_USER.into();
    let listen = if loaded.config.listen_addr.is_empty() {
        "127.0.0.1".to_string()
    } else {
        loaded.config.listen_addr.clone()
    };
    loaded.config.listen_addr = listen.clone();
    let port = loaded.config.listen_port;
    let host = config::list(&listen)
        .next()
        .filter(|h| *h != "*")
        .unwrap_or("127.0.0.1")
        .to_string();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let _app = sluice_pooler::start(&loaded).await.context("cannot start the pooler")?;
        info!(postgres_port = pg.port(), "demo PostgreSQL is up");
        println!();
        println!(
            "Sluice ({} mode, pool size {}) is running in front of a throwaway PostgreSQL {}.",
            loaded.config.pool_mode,
            loaded.config.default_pool_size,
            pg.port()
        );
        println!("Connect:");
        println!("  psql \"host={host} port={port} user={DEMO_USER} password={DEMO_PASSWORD} dbname={DEMO_USER}\"");
        println!("Load it:");
        println!(
            "  PGPASSWORD={DEMO_PASSWORD} {} -i -h {host} -p {port} -U {DEMO_USER} {DEMO_USER}",
            pg.bin("pgbench").display()
        );
        println!(
            "  PGPASSWORD={DEMO_PASSWORD} {} -c 50 -j 2 -T 10 -S -h {host} -p {port} -U {DEMO_USER} {DEMO_USER}",
            pg.bin("pgbench").display()
        );
        println!("Admin console:");
        println!("  psql \"host={host} port={port} user={DEMO_USER} password={DEMO_PASSWORD} dbname=pgbouncer\" -c 'SHOW POOLS;'");
        if !loaded.config.metrics_addr.is_empty() {
            println!("Metrics: curl http://{}/metrics", loaded.config.metrics_addr);
        }
        println!("Ctrl-C stops Sluice and deletes the database.");
        crate::wait_for_shutdown_signal().await?;
        crate::remove_unix_socket(&loaded.config);
        Ok::<_, anyhow::Error>(())
    })?;
    eprintln!("sluice: stopping; removing the throwaway PostgreSQL");
    drop(pg);
    Ok(())
}
