//! Overload protection (docs/overload.md): short transactions never starve behind
//! slow ones, in lanes configured by tags and in the automatic mode; `BEGIN`,
//! `COMMIT` and known `SET`s need no server; full lane queues and waits are explained.

mod support;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use support::*;
use tokio_postgres::SimpleQueryMessage;

/// What one starvation run saw.
#[derive(Debug)]
struct Starvation {
    /// The slowest short transaction (BEGIN .. COMMIT, as the client saw it).
    short_worst: Duration,
    short_done: usize,
    short_failed: usize,
    long_started: usize,
}

/// Pool of 4; 10 clients run 5-s transactions, then 20 clients loop 5-ms transactions
/// for 6 s. The long ones start first, so with one FIFO queue they hold every server.
async fn starvation(settings: &str, extra: &str, long_sql: &'static str, warm_up: bool) -> Result<Starvation> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        &format!("auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 4\nquery_wait_timeout = 30\n{settings}"),
        extra,
    )?;
    let (u, p) = SCRAM_USER;
    let url = s.url(u, p, "app");
    const SHORT: &str = "SELECT pg_sleep(0.005) AS quick";
    if warm_up {
        // The automatic mode learns a transaction's kind when one has ended.
        let mut c = connect(&url).await?;
        let t = c.transaction().await?;
        t.batch_execute(SHORT).await?;
        t.commit().await?;
    }
    let mut longs = Vec::new();
    for _ in 0..10 {
        let url = url.clone();
        longs.push(tokio::spawn(async move {
            let mut c = connect(&url).await?;
            let t = c.transaction().await?;
            t.batch_execute(long_sql).await?;
            t.commit().await?;
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let long_started = pg_active(&pg, "pg_sleep(5)")?;
    let mut shorts = Vec::new();
    let until = Instant::now() + Duration::from_secs(6);
    for _ in 0..20 {
        let url = url.clone();
        shorts.push(tokio::spawn(async move {
            let mut c = connect(&url).await?;
            let (mut worst, mut done, mut failed) = (Duration::ZERO, 0, 0);
            while Instant::now() < until {
                let started = Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(8), async {
                    let t = c.transaction().await?;
                    t.batch_execute(SHORT).await?;
                    t.commit().await
                })
                .await;
                worst = worst.max(started.elapsed());
                match r {
                    Ok(Ok(())) => done += 1,
                    _ => {
                        failed += 1;
                        break;
                    }
                }
            }
            anyhow::Ok((worst, done, failed))
        }));
    }
    let mut run = Starvation {
        short_worst: Duration::ZERO,
        short_done: 0,
        short_failed: 0,
        long_started,
    };
    for h in shorts {
        let (worst, done, failed) = h.await??;
        run.short_worst = run.short_worst.max(worst);
        run.short_done += done;
        run.short_failed += failed;
    }
    for h in longs {
        h.abort();
    }
    Ok(run)
}

/// Backends running a statement containing `needle`.
fn pg_active(pg: &sluice_embedded_pg::EmbeddedPg, needle: &str) -> Result<usize> {
    let out = pg.psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%{needle}%' AND pid <> pg_backend_pid()"
        ),
    )?;
    out.trim().parse().context("count from psql")
}

const LONG: &str = "SELECT count(*), pg_sleep(5) FROM (SELECT 1) AS long_report";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_mode_reproduces_the_starvation() -> Result<()> {
    let run = starvation("overload_protection = \"off\"", "", LONG, false).await?;
    // Every server is held by a 5-s transaction; short ones wait them out.
    assert_eq!(run.long_started, 4, "{run:?}");
    assert!(run.short_worst >= Duration::from_secs(4), "{run:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_mode_keeps_short_transactions_moving() -> Result<()> {
    let run = starvation("", "", LONG, true).await?;
    // The slow lane may hold 2 of the 4 servers (slow_share 2/3, rounded down).
    assert_eq!(run.long_started, 2, "{run:?}");
    assert_eq!(run.short_failed, 0, "{run:?}");
    assert!(run.short_worst < Duration::from_millis(1500), "{run:?}");
    assert!(run.short_done > 100, "{run:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tagged_lane_keeps_short_transactions_moving() -> Result<()> {
    let lanes = "[lanes.reports]\ntag = \"controller=export\"\nmax_servers = 1\n";
    let run = starvation(
        "",
        lanes,
        "SELECT count(*), pg_sleep(5) FROM (SELECT 1) AS long_report /*controller='export',route='%2Fexport'*/",
        false,
    )
    .await?;
    assert_eq!(run.long_started, 1, "{run:?}");
    assert_eq!(run.short_failed, 0, "{run:?}");
    assert!(run.short_worst < Duration::from_millis(1500), "{run:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_lane_queue_and_a_lane_wait_timeout_are_explained() -> Result<()> {
    let pg = postgres()?;
    let lanes = "[lanes.reports]\nstatement = \"^select pg_sleep\"\nmax_servers = 1\nmax_queue_length = 1\nquery_wait_timeout = 2\n";
    let s = Sluice::start(
        &pg,
        &format!(
            "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 3\nquery_wait_notify = 0\nadmin_users = \"{}\"",
            SCRAM_USER.0
        ),
        lanes,
    )?;
    let (u, p) = SCRAM_USER;
    let url = s.url(u, p, "app");
    let holder = connect(&url).await?;
    let waiter = connect(&url).await?;
    let third = connect(&url).await?;
    let hold = tokio::spawn(async move { holder.batch_execute("SELECT pg_sleep(4)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let wait = tokio::spawn(async move {
        let r = waiter.batch_execute("SELECT pg_sleep(0.1)").await;
        (r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The lane holds its one server and its queue holds one client: refused at once,
    // and the client keeps its connection.
    let e = third
        .batch_execute("select pg_sleep(0.2)")
        .await
        .expect_err("queue full");
    let (code, msg) = db_error(&e);
    assert_eq!(code, "53300", "{msg}");
    assert!(msg.contains("max_queue_length"), "{msg}");
    let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or_default().to_owned();
    assert!(detail.contains("servers by lane: reports 1 of at most 1"), "{detail}");
    // Other lanes are untouched.
    assert_eq!(third.query_one("SELECT 7", &[]).await?.get::<_, i32>(0), 7);

    // The console says the same while the waiter waits.
    let admin = connect(&s.url(u, p, "pgbouncer")).await?;
    let rows = |messages: Vec<SimpleQueryMessage>| -> Vec<tokio_postgres::SimpleQueryRow> {
        messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .collect()
    };
    let waits = rows(admin.simple_query("SHOW WAITS").await?);
    assert_eq!(waits.len(), 1, "one pool has a waiting client");
    assert_eq!(
        (waits[0].get("database"), waits[0].get("cl_waiting")),
        (Some("app"), Some("1"))
    );
    let why = waits[0].get("explanation").unwrap_or_default();
    assert!(why.contains("by \"select pg_sleep(?)\" (lane reports)"), "{why}");
    let lanes = rows(admin.simple_query("SHOW LANES").await?);
    let reports = lanes
        .iter()
        .find(|r| r.get("lane") == Some("reports"))
        .context("SHOW LANES has the configured lane")?;
    assert_eq!(
        (reports.get("sv_held"), reports.get("cap"), reports.get("cl_waiting")),
        (Some("1"), Some("1"), Some("1"))
    );

    // The waiter times out after the lane's 2 s, with PgBouncer's text and the lane,
    // the holding statement's fingerprint and its place in the queue.
    let (r, _) = wait.await?;
    let e = r.expect_err("lane query_wait_timeout");
    let (code, msg) = db_error(&e);
    assert_eq!((code.as_str(), msg.as_str()), ("08P01", "query_wait_timeout"));
    let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or_default().to_owned();
    assert!(detail.contains("by \"select pg_sleep(?)\" (lane reports)"), "{detail}");
    assert!(
        detail.contains("0 of them ahead of this one in lane reports"),
        "{detail}"
    );
    hold.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_commit_and_known_sets_need_no_server() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 1\nquery_wait_timeout = 30",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let url = s.url(u, p, "app");
    let a = connect(&url).await?;
    a.batch_execute("CREATE TABLE IF NOT EXISTS deferred (v int)").await?;
    // Learned once on a server ...
    a.batch_execute("SET TIME ZONE 'Asia/Tokyo'").await?;
    // ... then, with the only server held, BEGIN/COMMIT and the same SET are answered
    // at once.
    let holder = connect(&url).await?;
    holder.batch_execute("BEGIN; SELECT 1").await?;
    let b = connect(&url).await?;
    let quick = tokio::time::timeout(Duration::from_secs(2), async {
        b.batch_execute("BEGIN").await?;
        b.batch_execute("COMMIT").await?;
        b.batch_execute("START TRANSACTION READ ONLY").await?;
        b.batch_execute("ROLLBACK").await?;
        b.batch_execute("SET TIME ZONE 'Asia/Tokyo'").await
    })
    .await;
    ensure!(matches!(quick, Ok(Ok(()))), "needed a server: {quick:?}");
    holder.batch_execute("COMMIT").await?;
    // The SET reached b's next server.
    let tz: String = b.query_one("SHOW TimeZone", &[]).await?.get(0);
    assert_eq!(tz, "Asia/Tokyo");

    // A deferred BEGIN keeps its meaning: isolation level, READ ONLY, rollback.
    let mut c = connect(&url).await?;
    c.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE").await?;
    let iso: String = c.query_one("SHOW transaction_isolation", &[]).await?.get(0);
    assert_eq!(iso, "serializable");
    c.batch_execute("COMMIT").await?;
    c.batch_execute("BEGIN READ ONLY").await?;
    let e = c
        .batch_execute("INSERT INTO deferred VALUES (1)")
        .await
        .expect_err("read only");
    assert_eq!(db_error(&e).0, "25006");
    c.batch_execute("ROLLBACK").await?;
    {
        let t = c.transaction().await?;
        t.batch_execute("INSERT INTO deferred VALUES (2)").await?;
        t.rollback().await?;
    }
    let n: i64 = c.query_one("SELECT count(*) FROM deferred", &[]).await?.get(0);
    assert_eq!(n, 0, "rolled back");
    // The server sees one transaction: BEGIN ran before the first statement.
    let t = c.transaction().await?;
    let a1: String = t.query_one("SELECT now()::text", &[]).await?.get(0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let a2: String = t.query_one("SELECT now()::text", &[]).await?.get(0);
    assert_eq!(a1, a2, "one transaction");
    t.commit().await?;
    Ok(())
}
