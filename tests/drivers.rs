//! Real drivers through Sluice in transaction mode, prepared statements included:
//! asyncpg (statement cache), SQLAlchemy async on asyncpg, Django 4.2 with psycopg
//! server-side binding, psycopg 3 pipelines and executemany, psycopg clients through a
//! PostgreSQL restart, node-postgres named queries, pgJDBC (server-side prepared
//! statements, batches, cancel). Versions are pinned in tests/drivers/requirements.txt
//! and tests/drivers/node/package-lock.json; pgJDBC is Debian's
//! libpostgresql-jdbc-java. scripts/test.sh installs them all.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

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
        "no driver virtualenv at {}: run scripts/test.sh once (it installs what the tests need)",
        p.display()
    );
    Ok(p)
}

/// Runs a driver script to completion; it prints "ok". One that hangs (a client
/// stuck waiting for a server) is killed after 2 minutes and fails.
async fn run(cmd: Command) -> Result<()> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let limit = Duration::from_secs(120);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .map_err(|_| anyhow::anyhow!("the driver script did not finish within {limit:?}"))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{stdout}\n{stderr}"
    );
    // Figures the script reports (shown with --no-capture).
    print!("{stdout}");
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
        "node-postgres is not installed: run scripts/test.sh once (it installs what the tests need)"
    );
    let mut cmd = Command::new("node");
    cmd.current_dir(&node_dir)
        .arg("named_queries.js")
        .arg(format!("postgresql://{u}:{p}@127.0.0.1:{}/app", s.port))
        .args(["20", "20"]);
    run(cmd).await.context("node-postgres")
}

/// Transaction mode with md5 logins, a pool of `size`, md5_user as admin (for the
/// scripts' SHOW POOLS / SHOW CLIENTS), and `extra` settings.
fn with_admin(size: usize, extra: &str) -> String {
    format!(
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = {size}\nadmin_users = \"{}\"\n{extra}",
        MD5_USER.0
    )
}

/// An admin user for SHOW POOLS / SHOW CLIENTS from the driver scripts.
fn admin_dsn(s: &Sluice) -> String {
    let (u, p) = MD5_USER;
    format!("host=127.0.0.1 port={} user={u} password={p} dbname=pgbouncer", s.port)
}

/// psycopg 3.2 ends every pipeline (and executemany) with Sync, then Flush: the
/// server must go back to the pool at the Sync's ReadyForQuery all the same. 20
/// clients keep their connections open on a pool of 2; with a server kept per
/// pipeline, 18 of them would wait out query_wait_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_pipelines_and_executemany_release_their_server() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, &with_admin(2, "query_wait_timeout = 10"), "")?;
    let (u, p) = PLAIN_USER;
    let mut cmd = Command::new(venv_python()?);
    cmd.arg(drivers_dir().join("psycopg_pipelines.py"))
        .arg(format!(
            "host=127.0.0.1 port={} user={u} password={p} dbname=app",
            s.port
        ))
        .arg(admin_dsn(&s))
        .args(["20", "5"]);
    run(cmd).await?;
    assert!(backends(&pg, u, "app")? <= 2);
    Ok(())
}

/// How PostgreSQL goes away in [`psycopg_clients_through_a_restart`].
#[derive(Clone, Copy)]
enum Outage {
    /// `pg_ctl restart -m immediate`.
    Immediate,
    /// SIGKILL of the postmaster, then a start.
    Kill,
}

/// 20 psycopg clients on a pool of 8 loop through transactions while PostgreSQL
/// restarts; each reconnects when its connection breaks. Within 2 s of PostgreSQL
/// accepting connections again every client commits again, and SHOW CLIENTS lists no
/// client waiting longer than that (the script asserts both).
async fn psycopg_clients_through_a_restart(outage: Outage) -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, &with_admin(8, ""), "")?;
    let (u, p) = PLAIN_USER;
    let marker = s.dir.path().join("postgres-back");
    let mut cmd = Command::new(venv_python()?);
    cmd.arg(drivers_dir().join("psycopg_restart.py"))
        .arg(format!(
            "host=127.0.0.1 port={} user={u} password={p} dbname=app",
            s.port
        ))
        .arg(admin_dsn(&s))
        .args(["20", "12"])
        .arg(&marker);
    let script = tokio::spawn(run(cmd));
    // Load runs for a while before the outage.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        match outage {
            Outage::Immediate => pg.restart_immediate(),
            Outage::Kill => pg.kill_and_start(),
        }
        .map(|_| pg)
    })
    .await??;
    let back = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    std::fs::write(&marker, format!("{:.3}", back.as_secs_f64()))?;
    script.await?.with_context(|| s.log())?;
    drop(pg);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_clients_recover_from_an_immediate_restart() -> Result<()> {
    psycopg_clients_through_a_restart(Outage::Immediate).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_clients_recover_from_a_killed_postmaster() -> Result<()> {
    psycopg_clients_through_a_restart(Outage::Kill).await
}

/// pgJDBC (Debian's libpostgresql-jdbc-java): named server-side prepared statements
/// after prepareThreshold executions, executeBatch in a transaction, 20 threads on a
/// pool of 2 with connections held open, and Statement.cancel() ending a pg_sleep(10)
/// within 1 s. The program is compiled with the JDK's javac; no Maven.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_prepared_statements_batches_and_cancel() -> Result<()> {
    let jar = PathBuf::from("/usr/share/java/postgresql.jar");
    anyhow::ensure!(
        jar.exists(),
        "pgJDBC is not installed: run scripts/test.sh once (it installs libpostgresql-jdbc-java and a JDK)"
    );
    let classes = tempfile::tempdir()?;
    let javac = Command::new("javac")
        .arg("-d")
        .arg(classes.path())
        .arg(drivers_dir().join("java/PgJdbcClients.java"))
        .output()
        .context("javac (default-jdk-headless)")?;
    anyhow::ensure!(javac.status.success(), "{}", String::from_utf8_lossy(&javac.stderr));
    let pg = postgres()?;
    let s = Sluice::start(&pg, settings(), "")?;
    let (u, p) = PLAIN_USER;
    let mut cmd = Command::new("java");
    cmd.arg("-cp")
        .arg(format!("{}:{}", jar.display(), classes.path().display()))
        .arg("PgJdbcClients")
        .arg(format!("jdbc:postgresql://127.0.0.1:{}/app", s.port))
        .args([u, p, "20", "200"]);
    run(cmd).await.context("pgJDBC")?;
    assert!(backends(&pg, u, "app")? <= 2);
    Ok(())
}
