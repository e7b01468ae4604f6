//! Lifecycle: cancel requests (and, as they land, timeouts, failures, reload, shutdown).

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use support::*;
use tokio_postgres::NoTls;

const CANCELED: &str = "57014";

/// Runs `sql` on `c` in the background; resolves to (SQLSTATE or "ok", elapsed).
fn run_bg(
    c: tokio_postgres::Client,
    sql: &'static str,
) -> tokio::task::JoinHandle<(String, Duration, tokio_postgres::Client)> {
    tokio::spawn(async move {
        let started = Instant::now();
        let r = c.batch_execute(sql).await;
        let code = match r {
            Ok(()) => "ok".to_owned(),
            Err(e) => db_error(&e).0,
        };
        (code, started.elapsed(), c)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_only_that_clients_query_even_with_the_pool_saturated() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 2",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let a = connect(&s.url(u, p, "app")).await?;
    let b = connect(&s.url(u, p, "app")).await?;
    let c = connect(&s.url(u, p, "app")).await?;
    let a_cancel = a.cancel_token();
    // A and B hold both servers; C waits in the queue: the pool is saturated.
    let a_run = run_bg(a, "SELECT pg_sleep(10)");
    let b_run = run_bg(b, "SELECT pg_sleep(2)");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c_run = run_bg(c, "SELECT 1");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    a_cancel.cancel_query(NoTls).await?;
    let (code, _, a) = a_run.await?;
    assert_eq!(code, CANCELED);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "cancel took {:?}",
        started.elapsed()
    );
    // The queued client got A's server; B's query was not touched.
    let (code, _, _) = c_run.await?;
    assert_eq!(code, "ok");
    let (code, took, _) = b_run.await?;
    assert_eq!(code, "ok", "B's query must not be cancelled");
    assert!(took >= Duration::from_secs(2));
    // A's session goes on.
    assert_eq!(a.query_one("SELECT 9", &[]).await?.get::<_, i32>(0), 9);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_takes_a_waiting_client_out_of_the_queue() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 1\nquery_wait_timeout = 30",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let holder = connect(&s.url(u, p, "app")).await?;
    holder.batch_execute("BEGIN; SELECT 1").await?;
    let waiter = connect(&s.url(u, p, "app")).await?;
    let token = waiter.cancel_token();
    let waiting = run_bg(waiter, "SELECT 1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    token.cancel_query(NoTls).await?;
    let (code, _, waiter) = waiting.await?;
    assert_eq!(code, CANCELED);
    assert!(started.elapsed() < Duration::from_secs(1));
    // Still connected: once the holder commits, the same client is served.
    holder.batch_execute("COMMIT").await?;
    assert_eq!(waiter.query_one("SELECT 2", &[]).await?.get::<_, i32>(0), 2);
    // Extended protocol while waiting: the whole batch is dropped up to its Sync.
    holder.batch_execute("BEGIN; SELECT 1").await?;
    let token = waiter.cancel_token();
    let q = tokio::spawn(async move {
        let r = waiter
            .query_typed("SELECT $1::int", &[(&5i32, tokio_postgres::types::Type::INT4)])
            .await;
        (
            r.map(|rows| rows.len()).map_err(|e| {
                let (c, m) = db_error(&e);
                if c.is_empty() {
                    m
                } else {
                    c
                }
            }),
            waiter,
        )
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(NoTls).await?;
    let (r, waiter) = q.await?;
    assert_eq!(r, Err(CANCELED.to_owned()));
    holder.batch_execute("COMMIT").await?;
    let rows = waiter
        .query_typed("SELECT $1::int", &[(&6i32, tokio_postgres::types::Type::INT4)])
        .await?;
    assert_eq!(rows[0].get::<_, i32>(0), 6);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_for_an_idle_client_or_unknown_key_touches_nobody() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 1",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let idle = connect(&s.url(u, p, "app")).await?;
    let busy = connect(&s.url(u, p, "app")).await?;
    // busy runs on the pool's only server; cancelling the idle client must not hit it.
    let run = run_bg(busy, "SELECT pg_sleep(1)");
    tokio::time::sleep(Duration::from_millis(200)).await;
    idle.cancel_token().cancel_query(NoTls).await?;
    // A made-up key, straight on the wire.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", s.port)).await?;
        raw.write_all(&[0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2])
            .await?;
        let mut buf = [0u8; 8];
        assert_eq!(raw.read(&mut buf).await?, 0, "closed without an answer");
    }
    let (code, took, _) = run.await?;
    assert_eq!(code, "ok");
    assert!(took >= Duration::from_secs(1));
    assert_eq!(idle.query_one("SELECT 3", &[]).await?.get::<_, i32>(0), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_cancel_answers_every_pipelined_request_in_order() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"trust\"\npool_mode = \"transaction\"\ndefault_pool_size = 1",
        "",
    )?;
    let holder = connect(&s.url(TRUST_USER.0, "any", "app")).await?;
    holder.batch_execute("BEGIN; SELECT 1").await?;

    // Two requests, as drivers pipeline them: a Close + Sync (tokio-postgres sends one
    // when a statement is dropped), then Parse/Bind/Execute + Sync.
    let (mut c, (pid, key)) = raw_login_keyed(s.port).await?;
    let mut out = bytes::BytesMut::new();
    message(&mut out, b'C', b"Snope\0");
    message(&mut out, b'S', b"");
    message(&mut out, b'P', b"\0SELECT 1\0\0\0");
    message(&mut out, b'B', b"\0\0\0\0\0\0\0\0");
    message(&mut out, b'E', b"\0\0\0\0\0");
    message(&mut out, b'S', b"");
    c.write_all(&out).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut cancel = tokio::net::TcpStream::connect(("127.0.0.1", s.port)).await?;
    let mut req = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    req.extend(pid.to_be_bytes());
    req.extend(key.to_be_bytes());
    cancel.write_all(&req).await?;

    let mut seen = Vec::new();
    for _ in 0..4 {
        let (tag, body) = tokio::time::timeout(Duration::from_secs(2), read_message(&mut c)).await??;
        seen.push(match tag {
            b'E' => format!("E{}", error_field(&body, b'C')),
            t => (t as char).to_string(),
        });
    }
    assert_eq!(seen, ["E57014", "Z", "E57014", "Z"]);

    // The connection goes on once a server is free.
    holder.batch_execute("COMMIT").await?;
    let mut out = bytes::BytesMut::new();
    message(&mut out, b'Q', b"SELECT 42\0");
    c.write_all(&out).await?;
    let mut tags = Vec::new();
    loop {
        let (tag, body) = read_message(&mut c).await?;
        tags.push(tag);
        if tag == b'D' {
            assert!(body.ends_with(b"42"));
        }
        if tag == b'Z' {
            break;
        }
    }
    assert_eq!(tags, b"TDCZ");
    Ok(())
}

/// True when nothing accepts connections on the port any more.
async fn refuses_connections(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_lets_open_transactions_commit_then_exits() -> Result<()> {
    let pg = postgres()?;
    let mut s = Sluice::start(&pg, "auth_type = \"md5\"\npool_mode = \"transaction\"", "")?;
    let (u, p) = SCRAM_USER;
    let in_tx = connect(&s.url(u, p, "app")).await?;
    let idle = connect(&s.url(u, p, "app")).await?;
    in_tx
        .batch_execute("BEGIN; INSERT INTO items VALUES (901, 'before SIGINT')")
        .await?;

    s.signal("INT")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        s.wait_exit(Duration::ZERO)?.is_none(),
        "still running: a transaction is open"
    );
    assert!(refuses_connections(s.port).await, "no new connections during shutdown");
    // A client that wants a new transaction is told why it cannot have one.
    let e = refused(
        idle.batch_execute("SELECT 1").await,
        "no new transactions during SIGINT shutdown",
    );
    assert_eq!(db_error(&e), ("57P01".to_owned(), "pooler is shutting down".to_owned()));
    // The open transaction finishes normally.
    in_tx
        .batch_execute("INSERT INTO items VALUES (902, 'during SIGINT'); COMMIT")
        .await?;
    let status = s
        .wait_exit(Duration::from_secs(3))?
        .expect("exits once no server is linked");
    assert!(status.success(), "{status}");
    assert_eq!(
        pg.psql("app", "SELECT count(*) FROM items WHERE id IN (901, 902)")?,
        "2"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_clients_to_leave() -> Result<()> {
    let pg = postgres()?;
    let mut s = Sluice::start(&pg, "auth_type = \"md5\"\npool_mode = \"transaction\"", "")?;
    let (u, p) = SCRAM_USER;
    let c = connect(&s.url(u, p, "app")).await?;
    s.signal("TERM")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(refuses_connections(s.port).await);
    // Connected clients keep working until they leave.
    assert_eq!(c.query_one("SELECT 1", &[]).await?.get::<_, i32>(0), 1);
    assert!(s.wait_exit(Duration::from_millis(300))?.is_none());
    drop(c);
    let status = s
        .wait_exit(Duration::from_secs(3))?
        .expect("exits when the last client leaves");
    assert!(status.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_exits_at_once_and_postgres_rolls_back() -> Result<()> {
    let pg = postgres()?;
    let mut s = Sluice::start(&pg, "auth_type = \"md5\"\npool_mode = \"transaction\"", "")?;
    let (u, p) = SCRAM_USER;
    let c = connect(&s.url(u, p, "app")).await?;
    c.batch_execute("BEGIN; INSERT INTO items VALUES (903, 'never committed')")
        .await?;
    s.signal("QUIT")?;
    assert!(s.wait_exit(Duration::from_secs(1))?.is_some(), "SIGQUIT exits at once");
    let deadline = Instant::now() + Duration::from_secs(5);
    while backends(&pg, u, "app")? > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(pg.psql("app", "SELECT count(*) FROM items WHERE id = 903")?, "0");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_shortens_the_wait() -> Result<()> {
    let pg = postgres()?;
    let mut s = Sluice::start(&pg, "auth_type = \"md5\"\npool_mode = \"transaction\"", "")?;
    let (u, p) = SCRAM_USER;
    let _stays = connect(&s.url(u, p, "app")).await?;
    let in_tx = connect(&s.url(u, p, "app")).await?;
    in_tx.batch_execute("BEGIN; SELECT 1").await?;
    s.signal("TERM")?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        s.wait_exit(Duration::ZERO)?.is_none(),
        "TERM waits for the connected clients"
    );
    // TERM again: now only transactions in flight are waited for.
    s.signal("TERM")?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s.wait_exit(Duration::ZERO)?.is_none(), "a transaction is still open");
    in_tx.batch_execute("COMMIT").await?;
    assert!(
        s.wait_exit(Duration::from_secs(3))?.is_some(),
        "exits although a client is still connected"
    );
    Ok(())
}

async fn show(c: &tokio_postgres::Client, setting: &str) -> Result<String> {
    let msgs = c.simple_query(&format!("SHOW {setting}")).await?;
    Ok(msgs
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_sets_never_leak_and_follow_their_client() -> Result<()> {
    let pg = postgres()?;
    // One server shared by two clients: anything left on it would reach the other.
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 1",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let a = connect(&s.url(u, p, "app")).await?;
    let b = connect(&s.url(u, p, "app")).await?;
    a.batch_execute("SET statement_timeout = '700ms'").await?;
    a.batch_execute("SET search_path = nowhere").await?;

    // B shares the server and sees the defaults.
    assert_eq!(show(&b, "statement_timeout").await?, "0");
    assert_eq!(show(&b, "search_path").await?, "\"$user\", public");
    assert_eq!(
        b.query_one("SELECT count(*) FROM items", &[]).await?.get::<_, i64>(0),
        100
    );
    let took = Instant::now();
    b.batch_execute("SELECT pg_sleep(1)").await?;
    // pg_sleep runs on PostgreSQL's wall clock, which this VM slews by about 1 %
    // against the monotonic one: 1 s there can be 0.99 s here. A's 700 ms
    // statement_timeout would have cut it (and failed the statement) much earlier.
    assert!(took.elapsed() >= Duration::from_millis(900));

    // A's settings keep applying to A's later transactions.
    assert_eq!(show(&a, "statement_timeout").await?, "700ms");
    let e = refused(
        a.batch_execute("SELECT pg_sleep(2)").await,
        "A's statement_timeout applies",
    );
    assert_eq!(db_error(&e).0, "57014");
    assert_eq!(
        db_error(&refused(a.batch_execute("SELECT * FROM items").await, "search_path")).0,
        "42P01"
    );
    a.batch_execute("RESET search_path").await?;
    assert_eq!(
        a.query_one("SELECT count(*) FROM items", &[]).await?.get::<_, i64>(0),
        100
    );

    // A SET in a rolled-back transaction is gone, as in PostgreSQL; a committed one stays.
    a.batch_execute("BEGIN; SET work_mem = '1MB'; ROLLBACK").await?;
    assert_eq!(show(&a, "work_mem").await?, "4MB");
    a.batch_execute("BEGIN; SET work_mem = '2MB'; COMMIT").await?;
    assert_eq!(show(&a, "work_mem").await?, "2MB");
    assert_eq!(show(&b, "work_mem").await?, "4MB");
    a.batch_execute("RESET ALL").await?;
    assert_eq!(show(&a, "statement_timeout").await?, "0");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_settings_and_application_name_follow_each_client() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 1",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let a = connect(&format!("{} application_name=alpha", s.url(u, p, "app"))).await?;
    let b = connect(&format!("{} application_name=beta", s.url(u, p, "app"))).await?;
    let own_name = "SELECT application_name::text FROM pg_stat_activity WHERE pid = pg_backend_pid()";
    for _ in 0..3 {
        assert_eq!(a.query_one(own_name, &[]).await?.get::<_, String>(0), "alpha");
        assert_eq!(b.query_one(own_name, &[]).await?.get::<_, String>(0), "beta");
    }
    let default_tz = show(&b, "TimeZone").await?;
    a.batch_execute("SET TIME ZONE 'Asia/Tokyo'").await?;
    assert_eq!(show(&b, "TimeZone").await?, default_tz);
    assert_eq!(show(&a, "TimeZone").await?, "Asia/Tokyo");
    // Django's way: set_config on a reported setting, seen through ParameterStatus.
    b.batch_execute("SELECT set_config('TimeZone', 'America/Lima', false)")
        .await?;
    assert_eq!(show(&a, "TimeZone").await?, "Asia/Tokyo");
    assert_eq!(show(&b, "TimeZone").await?, "America/Lima");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_apply_and_prepared_statements_survive_the_reset() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 1",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let a = connect(&format!("{} options='-c statement_timeout=1234'", s.url(u, p, "app"))).await?;
    let b = connect(&s.url(u, p, "app")).await?;
    assert_eq!(show(&a, "statement_timeout").await?, "1234ms");
    assert_eq!(show(&b, "statement_timeout").await?, "0");
    // A named statement prepared on the (only) server outlives the RESET ALL that
    // follows every transaction of a client with session settings.
    let st = a.prepare("SELECT $1::int + 1").await?;
    for i in 0..3 {
        assert_eq!(a.query_one(&st, &[&i]).await?.get::<_, i32>(0), i + 1);
        assert_eq!(show(&b, "statement_timeout").await?, "0");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_load_keeps_idle_clients_and_recovers_within_2s() -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 5\nmin_pool_size = 2",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    // Idle clients: they used a server before the restart, then sit quietly through it.
    let mut idle = Vec::new();
    for _ in 0..10 {
        let c = connect(&s.url(u, p, "app")).await?;
        c.query_typed("SELECT 1", &[]).await?;
        idle.push(c);
    }
    // Busy clients: query in a loop; a client whose connection dies reconnects.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, errors) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut busy = Vec::new();
    for _ in 0..20 {
        let (url, stop, ok, errors) = (
            s.url(u, p, "app"),
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&errors),
        );
        busy.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(c) = connect(&url).await else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                while !stop.load(Ordering::Relaxed) && !c.is_closed() {
                    match c.query_typed("SELECT pg_sleep(0.02)", &[]).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(ok.load(Ordering::Relaxed) > 0);

    // pg_ctl restart -m fast: backends are terminated, the server comes back.
    let pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.restart().map(|_| pg)
    })
    .await??;
    let back = Instant::now();

    // Idle clients kept their connections; their next query succeeds within 2 s.
    for c in &idle {
        loop {
            match c.query_typed("SELECT 1", &[]).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(!c.is_closed(), "an idle client lost its connection: {e}");
                    assert!(back.elapsed() < Duration::from_secs(2), "not recovered within 2 s: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    assert!(
        back.elapsed() < Duration::from_secs(2),
        "recovered in {:?}",
        back.elapsed()
    );
    // From 2 s after the restart on, the busy clients see no errors at all.
    tokio::time::sleep_until(tokio::time::Instant::from_std(back + Duration::from_secs(2))).await;
    let (ok_before, errors_before) = (ok.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for b in busy {
        b.await?;
    }
    assert!(ok.load(Ordering::Relaxed) > ok_before + 20, "busy clients work again");
    assert_eq!(
        errors.load(Ordering::Relaxed),
        errors_before,
        "no errors once PostgreSQL is back"
    );
    drop(pg);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_died_idle_in_the_pool_are_never_handed_out() -> Result<()> {
    let pg = postgres()?;
    // Five transaction blocks open at once on five servers: overload protection
    // would keep two servers for autocommit work, so it is off here.
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 5\noverload_protection = \"off\"",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(connect(&s.url(u, p, "app")).await?);
    }
    // Five servers in the pool: five clients hold a transaction open at once.
    for c in &clients {
        c.batch_execute("BEGIN; SELECT 1").await?;
    }
    for c in &clients {
        c.batch_execute("COMMIT").await?;
    }
    assert_eq!(backends(&pg, u, "app")?, 5);
    // PostgreSQL kills every idle backend (as a restart or an idle timeout would).
    pg.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'scram_user'",
    )?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for c in &clients {
        let n: i32 = c.query_typed("SELECT 7", &[]).await?[0].get(0);
        assert_eq!(n, 7, "each client's next query runs on a live server");
        assert!(!c.is_closed());
    }
    Ok(())
}

/// Waits until `c` reports its connection closed (the server side hung up).
async fn closed_within(c: &tokio_postgres::Client, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if c.is_closed() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.is_closed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_timeouts_disconnect_with_pgbouncers_texts() -> Result<()> {
    let pg = postgres()?;
    let (u, p) = SCRAM_USER;
    let base = "auth_type = \"md5\"\npool_mode = \"transaction\"\n";

    // query_timeout: the client is told, and the query is cancelled on the server.
    let s = Sluice::start(&pg, &format!("{base}query_timeout = 1"), "")?;
    let c = connect(&s.url(u, p, "app")).await?;
    let started = Instant::now();
    let e = refused(c.batch_execute("SELECT pg_sleep(30)").await, "query_timeout");
    assert_eq!(db_error(&e), ("08P01".to_owned(), "query timeout".to_owned()));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(2);
    while pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'",
    )? != "0"
    {
        assert!(
            Instant::now() < deadline,
            "the abandoned pg_sleep still runs on the server"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let other = connect(&s.url(u, p, "app")).await?;
    other.batch_execute("SELECT pg_sleep(0.2)").await?;
    drop(s);

    // idle_transaction_timeout: the open transaction is rolled back.
    let s = Sluice::start(&pg, &format!("{base}idle_transaction_timeout = 1"), "")?;
    let c = connect(&s.url(u, p, "app")).await?;
    c.batch_execute("BEGIN; INSERT INTO items VALUES (950, 'left open')")
        .await?;
    assert!(
        closed_within(&c, Duration::from_secs(3)).await,
        "idle in transaction past the limit"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pg.psql("app", "SELECT count(*) FROM items WHERE id = 950")?, "0");
    // A client that is just idle (outside a transaction) is not affected.
    let idle = connect(&s.url(u, p, "app")).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(idle.query_typed("SELECT 1", &[]).await?.len(), 1);
    drop(s);

    // client_idle_timeout and transaction_timeout.
    let s = Sluice::start(
        &pg,
        &format!("{base}client_idle_timeout = 1\ntransaction_timeout = 1.5"),
        "",
    )?;
    let idle = connect(&s.url(u, p, "app")).await?;
    assert!(
        closed_within(&idle, Duration::from_secs(3)).await,
        "client_idle_timeout"
    );
    let c = connect(&s.url(u, p, "app")).await?;
    c.batch_execute("BEGIN").await?;
    let started = Instant::now();
    let mut failed = None;
    for _ in 0..20 {
        if let Err(e) = c.batch_execute("SELECT pg_sleep(0.2)").await {
            failed = Some(e);
            break;
        }
    }
    let e = failed.expect("transaction_timeout ends a long transaction of short statements");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(c.is_closed() || db_error(&e).1 == "transaction timeout", "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_resets_servers_with_server_reset_query() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"session\"\ndefault_pool_size = 1",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let a = connect(&s.url(u, p, "app")).await?;
    a.batch_execute("SET work_mem = '1MB'; PREPARE gone AS SELECT 1")
        .await?;
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The same (only) server, after DISCARD ALL.
    let b = connect(&s.url(u, p, "app")).await?;
    assert_eq!(show(&b, "work_mem").await?, "4MB");
    assert!(
        b.batch_execute("EXECUTE gone").await.is_err(),
        "prepared statements are discarded too"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_client_is_told_why_it_waits() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 1\nquery_wait_notify = 0.5\nquery_wait_timeout = 10",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let holder = connect(&s.url(u, p, "app")).await?;
    holder.batch_execute("BEGIN; SELECT 1").await?;
    let url = s.url(u, p, "app");
    let pg_bin = pg.bin("psql");
    let waiter = tokio::task::spawn_blocking(move || {
        std::process::Command::new(pg_bin)
            .arg("-X")
            .arg(url)
            .args(["-Atc", "SELECT 'served'"])
            .output()
    });
    // A driver that stops at the first ErrorResponse must see a notice, not an error.
    let driver = connect(&s.url(u, p, "app")).await?;
    let driver_wait = tokio::spawn(async move { driver.batch_execute("SELECT 'served'").await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    holder.batch_execute("COMMIT").await?;
    driver_wait.await?.context("the NOTICE did not fail the query")?;
    let out = waiter.await??;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(stdout.trim(), "served");
    assert!(
        stderr.contains("NOTICE:  waiting for a server connection: pool app/scram_user has all 1 servers busy"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("NOTICE").count(), 1, "one notice per wait: {stderr}");
    // It says what holds the pool, as the query_wait_timeout error would.
    assert!(
        stderr.contains("DETAIL:  pool app/scram_user had 1 of 1 servers busy (1 held by clients inside a transaction block, 0 running autocommit requests); the longest held for "),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_pool_sizes_and_passwords_without_dropping_clients() -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 1",
        "",
    )?;
    let config = s.dir.path().join("pooler.toml");
    let (u, p) = SCRAM_USER;
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..6 {
        let (url, stop, errors) = (s.url(u, p, "app"), Arc::clone(&stop), Arc::clone(&errors));
        load.push(tokio::spawn(async move {
            let c = connect(&url).await?;
            while !stop.load(Ordering::Relaxed) {
                if c.batch_execute("SELECT pg_sleep(0.1)").await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(backends(&pg, u, "app")?, 1);

    // A broken file changes nothing and says where it is broken.
    let good = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        good.replace("default_pool_size = 1", "default_pool_size = \"many\""),
    )?;
    s.signal("HUP")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.log().contains("reload failed"), "{}", s.log());
    assert!(s.log().contains("pooler.toml:"), "the error names the file and line");
    assert_eq!(backends(&pg, u, "app")?, 1);

    // Pool size 3, and trust_user's password rotated in the userlist.
    std::fs::write(&config, good.replace("default_pool_size = 1", "default_pool_size = 3"))?;
    let userlist = s.dir.path().join("userlist.txt");
    std::fs::write(
        &userlist,
        std::fs::read_to_string(&userlist)?.replace("\"trust_pw\"", "\"rotated\""),
    )?;
    s.signal("HUP")?;
    let deadline = Instant::now() + Duration::from_secs(3);
    while backends(&pg, u, "app")? < 3 {
        assert!(Instant::now() < deadline, "the pool grew to 3 after the reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await??;
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0, "no client noticed the reloads");
    assert!(backends(&pg, u, "app")? <= 3);
    assert!(connect(&s.url("trust_user", "rotated", "app")).await.is_ok());
    assert!(connect(&s.url("trust_user", "trust_pw", "app")).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_server_gives_a_fast_cached_error_and_service_resumes_once_it_is_back() -> Result<()> {
    let mut pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\nserver_login_retry = 15",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let c = connect(&s.url(u, p, "app")).await?;
    c.batch_execute("SELECT 1").await?;
    tokio::task::block_in_place(|| pg.stop());
    // The idle server died with PostgreSQL: the first query tries a login, which fails.
    let e = refused(c.batch_execute("SELECT 1").await, "postgres is down");
    assert!(!c.is_closed(), "the client keeps its connection: {e}");
    // From then on: PgBouncer's cached error, at once, without waiting for a login.
    for _ in 0..3 {
        let started = Instant::now();
        let e = refused(c.batch_execute("SELECT 1").await, "still down");
        let (code, message) = db_error(&e);
        assert!(
            message.starts_with("server login has been failing, cached error:"),
            "{code} {message}"
        );
        assert!(message.ends_with("(server_login_retry)"), "{message}");
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "fast: {:?}",
            started.elapsed()
        );
    }
    let log = s.log();
    assert!(log.contains("server login failed"), "{log}");
    // Not refused for server_login_retry (15 s) after PostgreSQL is back: the
    // background retry logs in within a second.
    tokio::task::block_in_place(|| pg.spawn())?;
    let back = Instant::now();
    loop {
        match c.batch_execute("SELECT 1").await {
            Ok(()) => break,
            Err(e) => {
                assert!(back.elapsed() < Duration::from_secs(2), "not back within 2 s: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(s.log().contains("server login works again"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connect_timeout_fires_on_a_server_that_never_answers() -> Result<()> {
    let pg = postgres()?;
    // Accepts TCP (the kernel completes the handshake) but never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let silent_port = silent.local_addr()?.port();
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\nserver_connect_timeout = 1\nserver_login_retry = 0",
        &format!("[databases.silent]\nhost = \"127.0.0.1\"\nport = {silent_port}\ndbname = \"app\"\n"),
    )?;
    let (u, p) = SCRAM_USER;
    let started = Instant::now();
    let e = refused(connect(&s.url(u, p, "silent")).await, "the server never answers");
    let took = started.elapsed();
    let (code, message) = db_error(&e);
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("server_connect_timeout"), "{message}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Other databases are unaffected.
    connect(&s.url(u, p, "app")).await?.batch_execute("SELECT 1").await?;
    drop(silent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_old_servers_are_closed_and_idle_ones_are_checked() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\nserver_idle_timeout = 1\nlog_stats = true\nstats_period = 1",
        "[databases.old]\nhost = \"127.0.0.1\"\nport = PGPORT\ndbname = \"app2\"\nserver_lifetime = 1\n"
            .replace("PGPORT", &pg.port().to_string())
            .as_str(),
    )?;
    let (u, p) = SCRAM_USER;
    let c = connect(&s.url(u, p, "app")).await?;
    c.batch_execute("SELECT 1").await?;
    assert_eq!(backends(&pg, u, "app")?, 1);
    // server_idle_timeout = 1: gone within a couple of housekeeping ticks.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(backends(&pg, u, "app")?, 0, "the idle server was closed");
    c.batch_execute("SELECT 1").await?;

    // server_lifetime = 1 on database "old": a server used past its lifetime is
    // replaced when released.
    let old = connect(&s.url(u, p, "old")).await?;
    let pid = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> String {
        rows.into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .unwrap_or_default()
    };
    let first = pid(old.simple_query("SELECT pg_backend_pid()").await?);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    old.simple_query("SELECT 1").await?; // released past its lifetime: closed
    let second = pid(old.simple_query("SELECT pg_backend_pid()").await?);
    assert_ne!(first, second, "the old server was replaced");

    // log_stats: one line per stats_period.
    assert!(s.log().contains("stats: "), "{}", s.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_check_query_runs_on_idle_servers_and_failing_ones_are_closed() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\nserver_check_delay = 0.3\nserver_check_query = \"select 'sluice-check'\"",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    let c = connect(&s.url(u, p, "app")).await?;
    c.batch_execute("SELECT 1").await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let last = pg.psql(
        "postgres",
        &format!("SELECT query FROM pg_stat_activity WHERE usename = '{u}' AND datname = 'app'"),
    )?;
    assert_eq!(last, "select 'sluice-check'", "the idle server was checked");
    c.batch_execute("SELECT 1").await?;

    // A server that fails its check is closed, and clients get a fresh one.
    let config = s.dir.path().join("pooler.toml");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&config, text.replace("select 'sluice-check'", "select 1/0"))?;
    s.signal("HUP")?;
    let before = pg.psql(
        "postgres",
        &format!("SELECT pid FROM pg_stat_activity WHERE usename = '{u}' AND datname = 'app'"),
    )?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(backends(&pg, u, "app")?, 0, "the server failing its check was closed");
    let after = c.simple_query("SELECT pg_backend_pid()").await?;
    let after = after
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default();
    assert_ne!(before, after);
    Ok(())
}

/// Logs in as trust_user with extra startup parameters; returns the socket at
/// ReadyForQuery, or the login error's message.
async fn raw_login_with(port: u16, params: &[(&str, &str)]) -> Result<Result<tokio::net::TcpStream, String>> {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut all = vec![("user", TRUST_USER.0), ("database", "app")];
    all.extend_from_slice(params);
    s.write_all(&startup_packet(3 << 16, &all)).await?;
    loop {
        let (tag, body) = read_message(&mut s).await?;
        match tag {
            b'Z' => return Ok(Ok(s)),
            b'E' => return Ok(Err(error_field(&body, b'M'))),
            _ => {}
        }
    }
}

/// Runs one simple query; returns the error message, if any.
async fn raw_query(s: &mut tokio::net::TcpStream, sql: &str) -> Result<Option<String>> {
    use tokio::io::AsyncWriteExt;
    let mut out = bytes::BytesMut::new();
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(&mut out, b'Q', &body);
    s.write_all(&out).await?;
    let mut error = None;
    loop {
        let (tag, body) = read_message(s).await?;
        match tag {
            b'E' => error = Some(error_field(&body, b'M')),
            b'Z' => return Ok(error),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_extra_parameters_follow_their_client_across_a_shared_server() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"trust\"\npool_mode = \"transaction\"\ndefault_pool_size = 1\ntrack_extra_parameters = \"IntervalStyle, default_transaction_read_only\"",
        "",
    )?;
    // Tracked, so accepted in the startup packet (else: unsupported startup parameter).
    let mut reader = raw_login_with(s.port, &[("default_transaction_read_only", "on")])
        .await?
        .map_err(anyhow::Error::msg)?;
    let mut writer = raw_login_with(s.port, &[]).await?.map_err(anyhow::Error::msg)?;
    for round in 0..3 {
        // One server, shared: each client's value is restored before its transaction.
        let e = raw_query(
            &mut reader,
            &format!("INSERT INTO items VALUES ({}, 'ro')", 3000 + round),
        )
        .await?;
        assert!(
            e.as_deref().unwrap_or("").contains("read-only transaction"),
            "round {round}: {e:?}"
        );
        let e = raw_query(
            &mut writer,
            &format!("INSERT INTO items VALUES ({}, 'rw')", 3100 + round),
        )
        .await?;
        assert_eq!(e, None, "round {round}: the read-only setting leaked");
    }
    assert_eq!(backends(&pg, TRUST_USER.0, "app")?, 1);
    // Untracked parameters are still refused.
    let refused = raw_login_with(s.port, &[("work_mem", "64MB")]).await?;
    assert_eq!(
        refused.err().as_deref(),
        Some("unsupported startup parameter: work_mem")
    );
    Ok(())
}

/// Abandoned work: a client that disconnects while its query runs, or inside an open
/// transaction. PostgreSQL would run the query on for nobody (it notices a closed
/// socket only when it writes); Sluice cancels it, rolls back, and the same server
/// serves the next client instead of being closed and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_work_is_cancelled_rolled_back_and_the_server_reused() -> Result<()> {
    let pg = postgres()?;
    // trust: the raw protocol client below logs in as the same user, to the same pool.
    let metrics = format!("127.0.0.1:{}", sluice_embedded_pg::free_port()?);
    let s = Sluice::start(
        &pg,
        &format!(
            "auth_type = \"trust\"\npool_mode = \"transaction\"\ndefault_pool_size = 1\nmetrics_addr = \"{metrics}\""
        ),
        "",
    )?;
    let url = s.url(TRUST_USER.0, "any", "app");
    let server_pid = |rows: Vec<tokio_postgres::Row>| -> i32 { rows.first().map(|r| r.get(0)).unwrap_or_default() };
    // The client's connection task is aborted to disconnect it: its socket closes
    // with the query still running, as when a web worker is killed.
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await?;
    let conn = tokio::spawn(conn);
    let pid = server_pid(client.query("SELECT pg_backend_pid()", &[]).await?);
    let sleeping = tokio::spawn(async move { client.batch_execute("SELECT pg_sleep(60)").await });
    let running = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state = 'active'");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pg.psql("postgres", &running)? != "1" {
        assert!(Instant::now() < deadline, "pg_sleep never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    conn.abort();
    sleeping.abort();
    let left = Instant::now();
    while pg.psql("postgres", &running)? != "0" {
        assert!(
            // The bound: cancelled within 1 s (typically 20 ms).
            left.elapsed() < Duration::from_secs(1),
            "the abandoned pg_sleep(60) still runs 1 s after its client left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("abandoned query stopped {:?} after the client left", left.elapsed());
    let (_, body) = http_get(&metrics, "/metrics").await?;
    let abandoned = format!(
        "sluice_lane_abandoned_total{{database=\"app\",user=\"{}\",lane=\"fast\"}}",
        TRUST_USER.0
    );
    assert_eq!(
        parse_exposition(&body).get(&abandoned).copied(),
        Some(1.0),
        "the autocommit pg_sleep is counted in its lane:\n{body}"
    );
    let next = connect(&url).await?;
    assert_eq!(
        server_pid(next.query("SELECT pg_backend_pid()", &[]).await?),
        pid,
        "the same server serves the next client (pool of 1):\n{}",
        s.log()
    );

    // Inside a transaction: its writes are rolled back and the server is reused.
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await?;
    let conn = tokio::spawn(conn);
    client
        .batch_execute("BEGIN; INSERT INTO items VALUES (951, 'abandoned')")
        .await?;
    conn.abort();
    let rows = next
        .query(
            "SELECT pg_backend_pid(), (SELECT count(*) FROM items WHERE id = 951)::int4, \
             txid_current_if_assigned() IS NULL",
            &[],
        )
        .await?;
    assert_eq!(server_pid(rows.clone()), pid, "the same server again");
    assert_eq!(rows[0].get::<_, i32>(1), 0, "the abandoned insert was rolled back");
    assert!(rows[0].get::<_, bool>(2), "no transaction is left open");

    // Mid-batch of the extended protocol (no Sync yet): Sluice sends the Sync, the
    // server comes back idle.
    let mut raw = raw_login(s.port).await?;
    let mut out = bytes::BytesMut::new();
    sluice_wire_frontend_parse(&mut out);
    tokio::io::AsyncWriteExt::write_all(&mut raw, &out).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(raw);
    assert_eq!(server_pid(next.query("SELECT pg_backend_pid()", &[]).await?), pid);
    Ok(())
}

/// Parse + Bind + Execute of `SELECT pg_sleep(30)` without a Sync.
fn sluice_wire_frontend_parse(out: &mut bytes::BytesMut) {
    message(out, b'P', b"\0SELECT pg_sleep(30)\0\0\0");
    message(out, b'B', b"\0\0\0\0\0\0\0\0");
    message(out, b'E', b"\0\0\0\0\0");
}
