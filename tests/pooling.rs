//! Pool limits, queueing and isolation, observed from PostgreSQL's own pg_stat_activity.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use support::*;

/// Samples every 5 ms how many backends match `filter` in PostgreSQL's own
/// pg_stat_activity, seen over a direct connection, until finished.
struct Watch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Duration, usize)>>,
}

impl Watch {
    async fn start(pg: &sluice_embedded_pg::EmbeddedPg, filter: &str) -> Result<Watch> {
        let direct = connect(&format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            pg.port()
        ))
        .await?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE {filter}");
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Ok(row) = direct.query_one(&sql, &[]).await {
                    samples.push((started.elapsed(), row.get::<_, i64>(0) as usize));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            samples
        });
        Ok(Watch { stop, task })
    }

    /// Stops sampling; returns the samples and their maximum.
    async fn finish(self) -> (Vec<(Duration, usize)>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.task.await.unwrap_or_default();
        let max = samples.iter().map(|(_, n)| *n).max().unwrap_or(0);
        (samples, max)
    }
}

/// One client per URL, each running `sql` `times` times; fails if any statement fails.
async fn run_clients(urls: Vec<String>, times: usize, sql: &'static str) -> Result<()> {
    let tasks: Vec<_> = urls
        .into_iter()
        .map(|url| {
            tokio::spawn(async move {
                let c = connect(&url).await?;
                for _ in 0..times {
                    c.batch_execute(sql).await?;
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_of_two_serves_twenty_clients_and_never_exceeds_it() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 2\nreserve_pool_size = 0",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let watch = Watch::start(&pg, "usename = 'scram_user' AND datname = 'app'").await?;
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client in 0..20 {
        let url = s.url(u, p, "app");
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await?;
            for i in 0..50 {
                let id = client * 50 + i + 1000;
                c.batch_execute(&format!(
                    "BEGIN; INSERT INTO items VALUES ({id}, 'client {client}'); UPDATE items SET v = v || '!' WHERE id = {id}; COMMIT"
                ))
                .await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let (samples, max) = watch.finish().await;
    assert_eq!(done.load(Ordering::Relaxed), 1000);
    assert!(max <= 2, "pool size 2 but PostgreSQL saw {max} backends");
    assert!(
        max >= 1 && samples.len() > 10,
        "the watch saw the pool at work ({} samples)",
        samples.len()
    );
    let rows = pg.psql("app", "SELECT count(*) FROM items WHERE id >= 1000 AND v LIKE '%!'")?;
    assert_eq!(rows, "1000", "every transaction committed whole");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_pool_opens_only_after_reserve_pool_timeout() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 2\nreserve_pool_size = 2\nreserve_pool_timeout = 1.0",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let watch = Watch::start(&pg, "usename = 'scram_user' AND datname = 'app'").await?;
    // 16 clients on 2 servers with 0.3 s transactions: each waits about 2 s, past the
    // 1 s reserve_pool_timeout. (With 8 they would wait 0.9 s and, rightly, never get it.)
    run_clients(vec![s.url(u, p, "app"); 16], 2, "SELECT pg_sleep(0.3)").await?;
    let (samples, max) = watch.finish().await;
    let early = samples
        .iter()
        .filter(|(t, _)| *t < Duration::from_millis(800))
        .map(|(_, n)| *n)
        .max();
    let first_over_2 = samples.iter().find(|(_, n)| *n > 2).map(|(t, _)| *t);
    let summary = format!("max early {early:?}, max {max}, first above 2 at {first_over_2:?}");
    assert!(
        early.is_some_and(|n| n <= 2),
        "reserve used before reserve_pool_timeout: {summary}"
    );
    assert!(
        max > 2,
        "the reserve opened for clients waiting past reserve_pool_timeout: {summary}"
    );
    assert!(max <= 4, "never more than pool + reserve: {summary}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_timeout_has_pgbouncers_text_and_code_and_others_keep_working() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 1\nquery_wait_timeout = 1",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let holder = connect(&s.url(u, p, "app")).await?;
    holder.batch_execute("BEGIN; SELECT 1").await?;

    let waiter = connect(&s.url(u, p, "app")).await?;
    let started = Instant::now();
    let e = refused(
        waiter.batch_execute("SELECT 1").await,
        "the pool is held: the waiter times out",
    );
    let waited = started.elapsed();
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "08P01");
    assert_eq!(db.message(), "query_wait_timeout");
    assert_eq!(db.severity(), "FATAL");
    // The exact text stays (applications match on it); DETAIL says what held the pool.
    let detail = db.detail().unwrap_or_default();
    assert!(
        detail.starts_with("pool app/scram_user had 1 of 1 servers busy (1 held by clients inside a transaction block, 0 running autocommit requests); the longest held for ")
            && detail.contains(" s by \"begin; select ?\" (lane slow); servers by lane: slow 1 of at most 1;")
            && detail.ends_with("; 0 other clients were waiting, 0 of them ahead of this one in lane fast."),
        "{detail}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(
        waiter.is_closed() || waiter.batch_execute("SELECT 1").await.is_err(),
        "the waiter is disconnected"
    );

    // The holder and everyone after it are unaffected.
    holder.batch_execute("COMMIT").await?;
    let next = connect(&s.url(u, p, "app")).await?;
    assert_eq!(next.query_one("SELECT 5", &[]).await?.get::<_, i32>(0), 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_refuses_extra_clients_with_pgbouncers_error() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\nmax_client_conn = 3",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&s.url(u, p, "app")).await?);
    }
    let e = refused(connect(&s.url(u, p, "app")).await, "a fourth client is refused");
    let (code, msg) = db_error(&e);
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("08P01", "no more connections allowed (max_client_conn)")
    );
    held.pop();
    // The slot frees when the client's connection closes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match connect(&s.url(u, p, "app")).await {
            Ok(c) => {
                assert_eq!(c.query_one("SELECT 1", &[]).await?.get::<_, i32>(0), 1);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert_eq!(db_error(&e).0, "08P01");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_database_never_delays_another() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 1\nquery_wait_timeout = 3",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let holder = connect(&s.url(u, p, "app")).await?;
    holder.batch_execute("BEGIN; SELECT 1").await?;
    // A second client of `app` queues behind the holder ...
    let queued_url = s.url(u, p, "app");
    let queued = tokio::spawn(async move {
        let c = connect(&queued_url).await?;
        c.query_one("SELECT 2", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
            .map_err(anyhow::Error::from)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ... while `app2` answers at once.
    let other = connect(&s.url(u, p, "app2")).await?;
    let started = Instant::now();
    assert_eq!(
        other
            .query_one("SELECT current_database()::text", &[])
            .await?
            .get::<_, String>(0),
        "app2"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "app2 waited {:?}",
        started.elapsed()
    );
    assert!(!queued.is_finished(), "app's second client still waits");
    holder.batch_execute("COMMIT").await?;
    assert_eq!(queued.await??, 2, "and is served as soon as the holder commits");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_transaction_leaves_no_lock_behind() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 2",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    // psql holds a row lock inside an open transaction, then dies with SIGKILL.
    let mut victim = std::process::Command::new(pg.bin("psql"))
        .arg("-X")
        .arg(s.url(u, p, "app"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    {
        use std::io::Write;
        let stdin = victim.stdin.as_mut().expect("piped stdin");
        stdin.write_all(b"BEGIN;\nSELECT id FROM items WHERE id = 1 FOR UPDATE;\n")?;
        stdin.flush()?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.psql("app", "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.state = 'idle in transaction' AND l.locktype = 'transactionid'")? != "1" {
        assert!(Instant::now() < deadline, "psql never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    victim.kill()?;
    victim.wait()?;

    let other = connect(&s.url(u, p, "app")).await?;
    let started = Instant::now();
    other
        .batch_execute("BEGIN; SET LOCAL lock_timeout = '1s'; SELECT id FROM items WHERE id = 1 FOR UPDATE; COMMIT")
        .await?;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the lock was released at once"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_client_that_disconnects_leaves_the_queue_at_once() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 1\nquery_wait_timeout = 30",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let holder = connect(&s.url(u, p, "app")).await?;
    holder.batch_execute("BEGIN; SELECT 1").await?;
    // A psql that waits in the queue, then is killed.
    let mut waiter = std::process::Command::new(pg.bin("psql"))
        .arg("-X")
        .arg(s.url(u, p, "app"))
        .args(["-c", "SELECT 'waited'"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.log().matches("login attempt").nth(1).is_none() {
        assert!(Instant::now() < deadline, "psql never logged in");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    waiter.kill()?;
    waiter.wait()?;
    let deadline = Instant::now() + Duration::from_secs(1);
    while !s.log().contains("closing because: client unexpected eof") {
        assert!(
            Instant::now() < deadline,
            "the waiter's departure was not noticed within 1 s:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The server goes to the next real client, not to the departed one.
    holder.batch_execute("COMMIT").await?;
    let next = connect(&s.url(u, p, "app")).await?;
    let started = Instant::now();
    assert_eq!(next.query_one("SELECT 3", &[]).await?.get::<_, i32>(0), 3);
    assert!(started.elapsed() < Duration::from_secs(1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_db_connections_bounds_all_pools_of_a_database() -> Result<()> {
    let pg = postgres()?;
    // Two users, two pools of 5 each, one database capped at 3 server connections.
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 5\nmax_db_connections = 3",
        "",
    )?;
    let watch = Watch::start(&pg, "datname = 'app' AND usename IN ('scram_user', 'md5_user')").await?;
    let mut urls = vec![s.url(SCRAM_USER.0, SCRAM_USER.1, "app"); 6];
    urls.extend(vec![s.url(MD5_USER.0, MD5_USER.1, "app"); 6]);
    run_clients(urls, 15, "BEGIN; SELECT pg_sleep(0.01); COMMIT").await?;
    let (_, max) = watch.finish().await;
    assert!(
        max <= 3,
        "max_db_connections = 3 but PostgreSQL saw {max} backends for app"
    );
    assert!(max >= 2, "both users were served ({max})");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_user_connections_bounds_a_users_pools_across_databases() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 5\nmax_user_connections = 2",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let watch = Watch::start(&pg, "usename = 'scram_user'").await?;
    let mut urls = vec![s.url(u, p, "app"); 3];
    urls.extend(vec![s.url(u, p, "app2"); 3]);
    run_clients(urls, 15, "BEGIN; SELECT pg_sleep(0.01); COMMIT").await?;
    let (_, max) = watch.finish().await;
    assert!(
        max <= 2,
        "max_user_connections = 2 but PostgreSQL saw {max} backends for scram_user"
    );
    assert!(max >= 1);
    Ok(())
}
