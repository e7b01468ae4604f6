//! Real drivers through Sluice in transaction mode, prepared statements included:
//! asyncpg (statement cache), SQLAlchemy async on asyncpg, Django 4.2 with psycopg
//! server-side binding, node-postgres named queries. Versions are pinned in
//! tests/drivers/requirements.txt and tests/drivers/node/package-lock.json; .ci/run
//! installs them.

mod support;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use support::*;

fn drivers_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/drivers"))
}

/// The virtualenv .ci/run makes with the pinned Python drivers.
fn venv_python() -> Result<PathBuf> {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/drivers-venv/bin/python"
    ));
    anyhow::ensure!(
        p.exists(),
        "no driver virtualenv at {}: run .ci/run, or python3 -m venv target/drivers-venv && target/drivers-venv/bin/pip install -r tests/drivers/requirements.txt",
        p.display()
    );
    Ok(p)
}

/// Runs a driver script to completion (on a blocking thread); it prints "ok".
async fn run(mut cmd: Command) -> Result<()> {
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{stdout}\n{stderr}"
    );
    Ok(())
}

fn settings() -> &'static str {
    "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 2\nquery_wait_timeout = 30"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_with_its_statement_cache() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, settings(), "")?;
    let (u, p) = PLAIN_USER;
    let mut cmd = Command::new(venv_python()?);
    cmd.arg(drivers_dir().join("asyncpg_clients.py"))
        .arg(format!("postgresql://{u}:{p}@127.0.0.1:{}/app", s.port))
        .args(["20", "15"]);
    run(cmd).await?;
    assert!(backends(&pg, u, "app")? <= 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_async_on_asyncpg() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, settings(), "")?;
    let (u, p) = PLAIN_USER;
    let mut cmd = Command::new(venv_python()?);
    cmd.arg(drivers_dir().join("sqlalchemy_async.py"))
        .arg(format!("postgresql+asyncpg://{u}:{p}@127.0.0.1:{}/app", s.port))
        .args(["10", "20"]);
    run(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_with_server_side_binding() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, settings(), "")?;
    let (u, p) = PLAIN_USER;
    let mut cmd = Command::new(venv_python()?);
    cmd.arg(drivers_dir().join("django_binding.py"))
        .args(["127.0.0.1", &s.port.to_string(), u, p, "app", "10", "20"]);
    run(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_named_queries() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, settings(), "")?;
    let (u, p) = PLAIN_USER;
    let node_dir = drivers_dir().join("node");
    anyhow::ensure!(
        node_dir.join("node_modules/pg").exists(),
        "node-postgres is not installed: npm ci --prefix tests/drivers/node (.ci/run does)"
    );
    let mut cmd = Command::new("node");
    cmd.current_dir(&node_dir)
        .arg("named_queries.js")
        .arg(format!("postgresql://{u}:{p}@127.0.0.1:{}/app", s.port))
        .args(["20", "20"]);
    run(cmd).await.context("node-postgres")
}
