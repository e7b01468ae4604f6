//! Named prepared statements in transaction mode: many clients sharing few servers,
//! with real drivers (tokio-postgres, psycopg 3, pgbench -M prepared).

mod support;

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::{BufMut, BytesMut};
use support::*;
use tokio::io::AsyncWriteExt;

fn settings(pool: usize, extra: &str) -> String {
    format!(
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = {pool}\nadmin_users = \"{}\"\n{extra}",
        SCRAM_USER.0
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_follow_their_client_across_servers() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, &settings(2, ""), "")?;
    let (u, p) = PLAIN_USER;
    let mut tasks = Vec::new();
    for client in 0..10i32 {
        let url = s.url(u, p, "app");
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await?;
            // Prepared once (Parse + Describe + Sync), used in many transactions.
            let by_id = c.prepare("SELECT v FROM items WHERE id = $1").await?;
            let plus = c.prepare(&format!("SELECT $1::int + {client}")).await?;
            for i in 1..=30i32 {
                let row = c.query_one(&by_id, &[&i]).await?;
                assert_eq!(row.get::<_, String>(0), format!("item {i}"));
                let row = c.query_one(&plus, &[&i]).await?;
                assert_eq!(
                    row.get::<_, i32>(0),
                    i + client,
                    "client {client} got another client's statement"
                );
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    assert!(backends(&pg, u, "app")? <= 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_on_one_server_runs_on_a_new_one_also_in_a_pipeline() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, &settings(2, ""), "")?;
    let (u, p) = PLAIN_USER;
    let c = connect(&s.url(u, p, "app")).await?;
    let ok = c.prepare("SELECT v FROM items WHERE id = $1").await?; // Parse + Describe
    let boom = c.prepare("SELECT 1 / $1::int").await?;
    let admin = connect(&s.url(SCRAM_USER.0, SCRAM_USER.1, "pgbouncer")).await?;
    for round in 0..3 {
        // Every server is replaced: the statements must be prepared again, in the
        // middle of a pipeline whose second request fails.
        admin.simple_query("RECONNECT app").await?;
        admin.simple_query("WAIT_CLOSE app").await?;
        let (one, zero) = (1i32, 0i32);
        let (p1, p0): (
            &[&(dyn tokio_postgres::types::ToSql + Sync)],
            &[&(dyn tokio_postgres::types::ToSql + Sync)],
        ) = (&[&one], &[&zero]);
        let (a, b, d) = tokio::join!(c.query_one(&ok, p1), c.query_one(&boom, p0), c.query_one(&boom, p1),);
        assert_eq!(a?.get::<_, String>(0), "item 1", "round {round}");
        let e = refused(b, "division by zero");
        assert_eq!(db_error(&e).0, "22012", "round {round}: {e}");
        assert_eq!(d?.get::<_, i32>(0), 1, "round {round}");
    }
    // Statements survive the session-state reset (RESET ALL, not DISCARD ALL).
    c.batch_execute("SET statement_timeout = '5s'").await?;
    for i in 1..=5i32 {
        assert_eq!(c.query_one(&ok, &[&i]).await?.get::<_, String>(0), format!("item {i}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_and_extended_run_without_errors() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, &settings(4, ""), "")?;
    let (u, p) = SCRAM_USER;
    pg.psql("app", &format!("GRANT CREATE ON SCHEMA public TO {u}"))?;
    let init = std::process::Command::new(pg.bin("pgbench"))
        .args([
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
            "app",
        ])
        .output()?;
    anyhow::ensure!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    pg.psql("app", &format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {u}"))?;
    for mode in ["prepared", "extended"] {
        let out = std::process::Command::new(pg.bin("pgbench"))
            .args([
                "-M",
                mode,
                "-c",
                "16",
                "-j",
                "2",
                "-t",
                "200",
                "-n",
                "-h",
                "127.0.0.1",
                "-p",
            ])
            .arg(s.port.to_string())
            .args(["-U", u, "app"])
            .env("PGPASSWORD", p)
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "-M {mode}: {stdout}\n{stderr}");
        // pgbench can exit 0 and still print errors.
        assert!(
            !stderr.contains("ERROR") && !stderr.contains("error"),
            "-M {mode}: {stderr}"
        );
        assert!(
            stdout.contains("number of transactions actually processed: 3200/3200"),
            "-M {mode}: {stdout}"
        );
        assert!(
            stdout.contains("number of failed transactions: 0"),
            "-M {mode}: {stdout}"
        );
    }
    assert!(backends(&pg, u, "app")? <= 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_clients_sharing_statement_names_always_get_their_own_results() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, &settings(2, ""), "")?;
    let (u, p) = PLAIN_USER;
    // 20 threads on a pool of 2. psycopg names statements _pg3_0, _pg3_1, ... per
    // connection, so every client uses the same names for different SQL.
    let script = format!(
        r#"
import threading, psycopg
URL = "host=127.0.0.1 port={port} user={u} password={p} dbname=app"
errors = []
def run(n, threshold):
    try:
        with psycopg.connect(URL, autocommit=True, prepare_threshold=threshold) as conn:
            for i in range(1, 41):
                # Different SQL per client under the same statement name.
                row = conn.execute("SELECT %s::int * " + str(n + 1) + ", (SELECT v FROM items WHERE id = %s)", (i, i)).fetchone()
                assert row == (i * (n + 1), "item %d" % i), (n, i, row)
                with conn.transaction():
                    row = conn.execute("SELECT count(*) + " + str(n) + " FROM items WHERE id <= %s", (i,)).fetchone()
                    assert row == (i + n,), (n, i, row)
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=run, args=(n, 0 if n % 2 == 0 else 5)) for n in range(20)]
for t in threads: t.start()
for t in threads: t.join()
assert not errors, errors
print("ok")
"#,
        port = s.port
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python_with_psycopg()?)
            .arg("-c")
            .arg(&script)
            .output()
            .context("python")
    })
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "ok");
    assert!(backends(&pg, u, "app")? <= 2);
    // The server side shares statements: far fewer server Parses than client ones.
    let admin = connect(&s.url(SCRAM_USER.0, SCRAM_USER.1, "pgbouncer")).await?;
    let rows = admin.simple_query("SHOW STATS_TOTALS").await?;
    let (client, server) = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get("database") == Some("app") => Some((
                r.get("client_parse_count").unwrap_or("0").parse::<i64>().unwrap_or(0),
                r.get("server_parse_count").unwrap_or("0").parse::<i64>().unwrap_or(0),
            )),
            _ => None,
        })
        .context("stats row")?;
    assert!(client >= 40, "client parses {client}");
    assert!(server < client, "server parses {server} < client parses {client}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_preparing_without_end_gets_a_clear_error_and_others_go_on() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, "auth_type = \"trust\"\npool_mode = \"transaction\"", "")?;
    let bystander = connect(&s.url(TRUST_USER.0, TRUST_USER.1, "app")).await?;
    let mut raw = raw_login(s.port).await?;
    // 10,001 distinct named statements in one pipeline.
    let mut out = BytesMut::new();
    for i in 0..=10_000 {
        let mut body = Vec::new();
        body.extend_from_slice(format!("leak{i}\0SELECT {i}\0").as_bytes());
        body.put_u16(0);
        message(&mut out, b'P', &body);
    }
    message(&mut out, b'S', &[]);
    raw.write_all(&out).await?;
    let mut fatal = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        let Ok(Ok((tag, body))) = tokio::time::timeout(Duration::from_secs(5), read_message(&mut raw)).await else {
            break;
        };
        if tag == b'E' {
            fatal = Some(error_field(&body, b'M'));
            break;
        }
    }
    let fatal = fatal.context("an error")?;
    assert!(fatal.contains("too many prepared statements"), "{fatal}");
    bystander.batch_execute("SELECT 1").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_level_features_keep_their_server_until_the_client_leaves() -> Result<()> {
    use futures_util::StreamExt;
    let pg = postgres()?;
    // Three servers: two clients keep one each below, the third is shared.
    let s = Sluice::start(&pg, &settings(3, "query_wait_timeout = 10"), "")?;
    let (u, p) = PLAIN_USER;
    let url = s.url(u, p, "app");

    // Temporary table and SQL-level PREPARE: right after, another client takes the
    // most recently used server; the first client's next transactions still see both.
    let a = connect(&url).await?;
    let b = connect(&url).await?;
    a.batch_execute("CREATE TEMP TABLE scratch (x int); PREPARE q AS SELECT 42")
        .await?;
    b.batch_execute("BEGIN; SELECT 1").await?;
    for i in 0..5 {
        a.batch_execute(&format!("INSERT INTO scratch VALUES ({i})")).await?;
    }
    let n: i64 = a.query_typed("SELECT count(*) FROM scratch", &[]).await?[0].get(0);
    assert_eq!(n, 5);
    let rows = a.simple_query("EXECUTE q").await?;
    assert!(rows
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("42"))));
    b.batch_execute("COMMIT").await?;

    // Session advisory lock: held until the client disconnects, then released
    // (DISCARD ALL on the way back to the pool).
    let c = connect(&url).await?;
    c.batch_execute("SELECT pg_advisory_lock(7)").await?;
    let got: bool = b.query_typed("SELECT pg_try_advisory_lock(7)", &[]).await?[0].get(0);
    assert!(!got, "the lock is held by c");
    drop(c);
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: bool = b.query_typed("SELECT pg_try_advisory_lock(7)", &[]).await?[0].get(0);
    assert!(got, "released when c left");
    b.batch_execute("SELECT pg_advisory_unlock_all()").await?;
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // LISTEN: notifications reach the listener across later transactions.
    let (listener, mut conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await?;
    let other = connect(&url).await?;
    for i in 0..3 {
        other.batch_execute(&format!("NOTIFY jobs, 'n{i}'")).await?;
        listener.batch_execute("SELECT 1").await?;
        let got = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await?;
        assert_eq!(got, Some(format!("n{i}")));
    }
    assert!(s
        .log()
        .contains("LISTEN in transaction mode: this client keeps its server"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_and_large_parameters_through_named_statements() -> Result<()> {
    use futures_util::{SinkExt, StreamExt};
    let pg = postgres()?;
    let s = Sluice::start(&pg, &settings(2, ""), "")?;
    let (u, p) = PLAIN_USER;
    let c = connect(&s.url(u, p, "app")).await?;
    // COPY through a named statement (Parse/Bind/Execute), in and out.
    let copy_in = c.prepare("COPY items (id, v) FROM STDIN").await?;
    let sink = c.copy_in::<_, bytes::Bytes>(&copy_in).await?;
    futures_util::pin_mut!(sink);
    let rows: String = (5000..5100).map(|i| format!("{i}\tcopied {i}\n")).collect();
    sink.send(bytes::Bytes::from(rows)).await?;
    assert_eq!(sink.finish().await?, 100);
    let copy_out = c
        .prepare("COPY (SELECT v FROM items WHERE id >= 5000 ORDER BY id) TO STDOUT")
        .await?;
    let stream = c.copy_out(&copy_out).await?;
    futures_util::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    assert_eq!(String::from_utf8(out)?.lines().count(), 100);
    // A named Bind far bigger than any buffer (5 MB parameter), on a server that
    // must first prepare the statement again.
    let echo = c.prepare("SELECT length($1::text)").await?;
    let admin = connect(&s.url(SCRAM_USER.0, SCRAM_USER.1, "pgbouncer")).await?;
    admin.simple_query("RECONNECT app").await?;
    // WAIT_CLOSE returns only once every server was released: also after COPY
    // FROM STDIN through the extended protocol, whose early Sync PostgreSQL ignores.
    admin.simple_query("WAIT_CLOSE app").await?;
    let big = "x".repeat(5 * 1024 * 1024);
    let n: i32 = c.query_one(&echo, &[&big]).await?.get(0);
    assert_eq!(n as usize, big.len());
    Ok(())
}

/// Tags of the messages answering one request, up to ReadyForQuery (or until `stop`).
async fn tags_until(s: &mut tokio::net::TcpStream, stop: u8) -> Result<Vec<u8>> {
    let mut tags = Vec::new();
    loop {
        let (tag, _) = tokio::time::timeout(Duration::from_secs(5), read_message(s))
            .await
            .context("the answer stopped")??;
        if tag == b'N' || tag == b'S' {
            continue;
        }
        tags.push(tag);
        if tag == stop {
            return Ok(tags);
        }
    }
}

fn parse(out: &mut BytesMut, name: &str, sql: &str) {
    let mut body = Vec::new();
    body.extend_from_slice(format!("{name}\0{sql}\0").as_bytes());
    body.put_u16(0);
    message(out, b'P', &body);
}

fn bind_execute(out: &mut BytesMut, name: &str, max_rows: i32) {
    let mut body = Vec::new();
    body.extend_from_slice(format!("\0{name}\0").as_bytes());
    body.put_u16(0); // parameter formats
    body.put_u16(0); // parameters
    body.put_u16(0); // result formats
    message(out, b'B', &body);
    let mut exec = b"\0".to_vec();
    exec.put_i32(max_rows);
    message(out, b'E', &exec);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_flush_and_portals_keep_the_exact_response_order() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        &format!(
            "auth_type = \"trust\"\npool_mode = \"transaction\"\ndefault_pool_size = 2\nadmin_users = \"{}\"",
            TRUST_USER.0
        ),
        "",
    )?;
    let mut c = raw_login(s.port).await?;
    // Several named Parses, Binds and Executes before one Sync.
    let mut out = BytesMut::new();
    parse(&mut out, "one", "SELECT 1");
    parse(&mut out, "two", "SELECT 2 UNION ALL SELECT 3");
    bind_execute(&mut out, "one", 0);
    bind_execute(&mut out, "two", 0);
    message(&mut out, b'S', &[]);
    c.write_all(&out).await?;
    assert_eq!(tags_until(&mut c, b'Z').await?, b"112DC2DDCZ".to_vec());

    // Flush without Sync: the ParseComplete comes at once.
    let mut out = BytesMut::new();
    parse(&mut out, "three", "SELECT 4");
    message(&mut out, b'H', &[]);
    c.write_all(&out).await?;
    assert_eq!(tags_until(&mut c, b'1').await?, b"1".to_vec());
    let mut out = BytesMut::new();
    bind_execute(&mut out, "three", 0);
    message(&mut out, b'S', &[]);
    c.write_all(&out).await?;
    assert_eq!(tags_until(&mut c, b'Z').await?, b"2DCZ".to_vec());

    // New servers: every statement is prepared again in the middle of a batch whose
    // middle part fails; the dropped ParseCompletes never show.
    let admin = connect(&s.url(TRUST_USER.0, TRUST_USER.1, "pgbouncer")).await?;
    admin.simple_query("RECONNECT app").await?;
    admin.simple_query("WAIT_CLOSE app").await?;
    let mut out = BytesMut::new();
    bind_execute(&mut out, "one", 0);
    message(&mut out, b'S', &[]);
    parse(&mut out, "bad", "SELECT 1/0");
    bind_execute(&mut out, "bad", 0);
    bind_execute(&mut out, "two", 0); // skipped after the error, with its injected Parse
    message(&mut out, b'S', &[]);
    c.write_all(&out).await?;
    assert_eq!(tags_until(&mut c, b'Z').await?, b"2DCZ".to_vec());
    assert_eq!(tags_until(&mut c, b'Z').await?, b"1EZ".to_vec());
    // The skipped Parse created nothing: "two" is prepared again before its Bind.
    let mut out = BytesMut::new();
    bind_execute(&mut out, "two", 0);
    message(&mut out, b'S', &[]);
    c.write_all(&out).await?;
    assert_eq!(tags_until(&mut c, b'Z').await?, b"2DDCZ".to_vec());

    // A portal read in parts inside a transaction (fetchmany on a cursor).
    let mut out = BytesMut::new();
    let mut q = b"BEGIN\0".to_vec();
    message(&mut out, b'Q', &q);
    c.write_all(&out).await?;
    assert_eq!(tags_until(&mut c, b'Z').await?, b"CZ".to_vec());
    let mut out = BytesMut::new();
    parse(&mut out, "many", "SELECT g FROM generate_series(1, 5) g");
    bind_execute(&mut out, "many", 2);
    message(&mut out, b'S', &[]);
    let mut exec = b"\0".to_vec();
    exec.put_i32(2);
    message(&mut out, b'E', &exec);
    message(&mut out, b'S', &[]);
    c.write_all(&out).await?;
    assert_eq!(tags_until(&mut c, b'Z').await?, b"12DDsZ".to_vec());
    assert_eq!(tags_until(&mut c, b'Z').await?, b"DDsZ".to_vec());
    q = b"COMMIT\0".to_vec();
    let mut out = BytesMut::new();
    message(&mut out, b'Q', &q);
    c.write_all(&out).await?;
    assert_eq!(tags_until(&mut c, b'Z').await?, b"CZ".to_vec());
    Ok(())
}
