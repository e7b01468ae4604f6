//! The wire protocol at the edges: startup negotiation and bad input on raw sockets.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::BytesMut;
use rand::{Rng, SeedableRng};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes; returns everything it sent. Fails after `within`.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Result<Vec<u8>> {
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => bail!("connection still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(all),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_at_once_and_never_disturbs_other_clients() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"trust\"\npool_mode = \"transaction\"\nclient_login_timeout = 2\ndefault_pool_size = 2",
        "",
    )?;
    let (u, p) = SCRAM_USER;

    // A well-behaved client runs queries the whole time.
    let good = connect(&s.url(u, p, "app")).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let bystander = {
        let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n: i32 = good.query_one("SELECT 21 * 2", &[]).await?.get(0);
                assert_eq!(n, 42);
                ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let port = s.port;
    let quick = Duration::from_secs(1);

    // HTTP to the PostgreSQL port: its "length" is absurd; closed at once with an error.
    let mut c = TcpStream::connect(("127.0.0.1", port)).await?;
    c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await?;
    let got = read_until_closed(&mut c, quick).await?;
    assert_eq!(got.first(), Some(&b'E'), "an ErrorResponse before closing");
    assert!(error_field(&got[5..], b'M').contains("invalid length of startup packet"));

    // Startup packet of length 4 (PostgreSQL closes it at once too), and oversized ones.
    for len in [4u32, 7, 10_001, 0x7fff_ffff] {
        let mut c = TcpStream::connect(("127.0.0.1", port)).await?;
        c.write_all(&len.to_be_bytes()).await?;
        let started = Instant::now();
        read_until_closed(&mut c, quick).await?;
        assert!(started.elapsed() < quick, "length {len}");
    }

    // An unknown protocol version: FATAL 0A000.
    let mut c = TcpStream::connect(("127.0.0.1", port)).await?;
    c.write_all(&startup_packet(2 << 16, &[("user", "x")])).await?;
    let got = read_until_closed(&mut c, quick).await?;
    assert_eq!(error_field(&got[5..], b'C'), "0A000");

    // A truncated startup packet, then silence: closed by client_login_timeout (2 s).
    let mut c = TcpStream::connect(("127.0.0.1", port)).await?;
    c.write_all(&[0, 0, 0, 100, 0, 3, 0, 0]).await?;
    read_until_closed(&mut c, Duration::from_secs(4)).await?;

    // Random garbage: every connection ends within a second.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..20 {
        let len = rng.gen_range(1..512);
        let junk: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let mut c = TcpStream::connect(("127.0.0.1", port)).await?;
        let _ = c.write_all(&junk).await;
        let _ = c.shutdown().await;
        read_until_closed(&mut c, Duration::from_secs(3)).await?;
    }

    // After login: an unknown message type gets 08P01 and the connection closes.
    let mut c = raw_login(port).await?;
    c.write_all(b"G\0\0\0\x08abcd").await?;
    let got = read_until_closed(&mut c, quick).await?;
    assert_eq!(error_field(&got[5..], b'C'), "08P01");
    assert!(error_field(&got[5..], b'M').contains("invalid frontend message type"));

    // After login: a message length below 4.
    let mut c = raw_login(port).await?;
    c.write_all(b"Q\0\0\0\x02").await?;
    let got = read_until_closed(&mut c, quick).await?;
    assert_eq!(error_field(&got[5..], b'C'), "08P01");

    // After login: half a query, then the client vanishes.
    let mut c = raw_login(port).await?;
    c.write_all(b"Q\0\0\0\x20SELECT").await?;
    drop(c);

    // A Query message in the middle of a transaction, then garbage: the transaction is
    // rolled back (its server closed), nothing leaks into the pool.
    let mut c = raw_login(port).await?;
    let mut q = BytesMut::new();
    message(&mut q, b'Q', b"BEGIN; INSERT INTO items VALUES (777, 'half')\0");
    c.write_all(&q).await?;
    loop {
        if read_message(&mut c).await?.0 == b'Z' {
            break;
        }
    }
    c.write_all(b"\xff\xff\xff\xff\xff").await?;
    read_until_closed(&mut c, quick).await?;

    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    bystander.await??;
    assert!(ok.load(Ordering::Relaxed) > 20, "the bystander kept working");
    assert_eq!(pg.psql("app", "SELECT count(*) FROM items WHERE id = 777")?, "0");
    let fresh = connect(&s.url(u, p, "app")).await?;
    assert_eq!(
        fresh
            .query_one("SELECT count(*) FROM items", &[])
            .await?
            .get::<_, i64>(0),
        100
    );
    assert!(!s.log().contains("panicked"), "{}", s.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gss_are_declined_and_newer_protocols_negotiated() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, "auth_type = \"trust\"\npool_mode = \"transaction\"", "")?;
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).await?;
    // SSLRequest, then GSSENCRequest: both 'N'.
    c.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    assert_eq!(c.read_u8().await?, b'N');
    c.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await?;
    assert_eq!(c.read_u8().await?, b'N');
    // Protocol 3.2 with a _pq_ option: NegotiateProtocolVersion(3.0, [option]).
    c.write_all(&startup_packet(
        (3 << 16) | 2,
        &[("user", TRUST_USER.0), ("database", "app"), ("_pq_.future", "1")],
    ))
    .await?;
    let (tag, body) = read_message(&mut c).await?;
    assert_eq!(tag, b'v');
    assert_eq!(&body[..8], &[0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(&body[8..], b"_pq_.future\0");
    let mut params = Vec::new();
    let mut got_key = false;
    loop {
        let (tag, body) = read_message(&mut c).await?;
        match tag {
            b'R' => assert_eq!(body, [0, 0, 0, 0], "AuthenticationOk"),
            b'S' => params.push(
                String::from_utf8_lossy(&body)
                    .split('\0')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            b'K' => got_key = true,
            b'Z' => break,
            other => bail!("unexpected message {}", other as char),
        }
    }
    assert!(got_key);
    for p in [
        "server_version",
        "client_encoding",
        "DateStyle",
        "TimeZone",
        "integer_datetimes",
    ] {
        assert!(params.iter().any(|x| x == p), "ParameterStatus {p} missing: {params:?}");
    }

    // psql insisting on TLS gets a clear answer (TLS comes with its own issue).
    let (ok, _, err) = psql(
        &pg,
        &format!("{} sslmode=require", s.url(TRUST_USER.0, "x", "app")),
        &["-c", "SELECT 1"],
        None,
    )?;
    assert!(!ok && err.contains("does not support SSL"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_startup_parameters_are_refused_unless_ignored() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, "auth_type = \"trust\"\npool_mode = \"transaction\"", "")?;
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).await?;
    c.write_all(&startup_packet(
        3 << 16,
        &[("user", TRUST_USER.0), ("database", "app"), ("geqo", "off")],
    ))
    .await?;
    let got = read_until_closed(&mut c, Duration::from_secs(1)).await?;
    assert_eq!(error_field(&got[5..], b'C'), "08P01");
    assert_eq!(error_field(&got[5..], b'M'), "unsupported startup parameter: geqo");
    drop(s);

    let s = Sluice::start(
        &pg,
        "auth_type = \"trust\"\npool_mode = \"transaction\"\nignore_startup_parameters = \"geqo, search_path\"",
        "",
    )?;
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).await?;
    c.write_all(&startup_packet(
        3 << 16,
        &[("user", TRUST_USER.0), ("database", "app"), ("geqo", "off")],
    ))
    .await?;
    let (tag, _) = read_message(&mut c).await?;
    assert_eq!(tag, b'R');
    Ok(())
}

/// One extended-protocol query: Parse (unnamed unless `name`), Bind, Describe, Execute.
fn extended(out: &mut BytesMut, name: &str, sql: &str) {
    message(out, b'P', format!("{name}\0{sql}\0\0\0").as_bytes());
    message(out, b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes());
    message(out, b'D', b"P\0");
    message(out, b'E', b"\0\0\0\0\0");
}

/// One step of a raw request sequence.
#[derive(Clone, Copy)]
enum Step<'a> {
    /// Parse (unnamed), Bind, Describe, Execute of this SQL.
    Extended(&'a str),
    /// A simple Query.
    Query(&'a str),
    Sync,
    Flush,
}

/// The bytes of `steps`, in order.
fn wire(steps: &[Step<'_>]) -> BytesMut {
    let mut out = BytesMut::new();
    for step in steps {
        match *step {
            Step::Extended(sql) => extended(&mut out, "", sql),
            Step::Query(sql) => message(&mut out, b'Q', format!("{sql}\0").as_bytes()),
            Step::Sync => message(&mut out, b'S', b""),
            Step::Flush => message(&mut out, b'H', b""),
        }
    }
    out
}

/// Reads messages until `n` ReadyForQuery have come; returns their status bytes.
async fn ready_for_query(s: &mut TcpStream, n: usize) -> Result<Vec<u8>> {
    let mut statuses = Vec::new();
    while statuses.len() < n {
        let (tag, body) = tokio::time::timeout(Duration::from_secs(5), read_message(s)).await??;
        match tag {
            b'Z' => statuses.push(body[0]),
            b'E' => bail!("error: {}", error_field(&body, b'M')),
            _ => {}
        }
    }
    Ok(statuses)
}

/// PostgreSQL's semantics for every mix of Sync and Flush: the server goes back to
/// the pool at the ReadyForQuery 'I' that answers the client's last outstanding
/// request, whatever Flushes came before or after (psycopg ends each pipeline with
/// Sync, Flush), and a Flush with nothing outstanding takes no server at all. With a
/// pool of one server, another client gets it after each sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mix_of_sync_and_flush_releases_the_server() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        &format!(
            "auth_type = \"trust\"\npool_mode = \"transaction\"\ndefault_pool_size = 1\nquery_wait_timeout = 3\nadmin_users = \"{}\"",
            MD5_USER.0
        ),
        "",
    )?;
    let other = connect(&s.url(TRUST_USER.0, TRUST_USER.1, "app")).await?;
    let the_server_is_free = |what: &'static str| {
        let other = &other;
        async move {
            let r = tokio::time::timeout(Duration::from_secs(2), other.query_one("SELECT 1", &[])).await;
            assert!(matches!(r, Ok(Ok(_))), "{what}: the server was not released");
        }
    };
    let mut c = raw_login(s.port).await?;
    use Step::*;

    // psycopg's pipeline end: Sync, then Flush.
    c.write_all(&wire(&[Extended("SELECT 1"), Extended("SELECT 2"), Sync, Flush]))
        .await?;
    assert_eq!(ready_for_query(&mut c, 1).await?, b"I");
    the_server_is_free("Sync, Flush").await;

    // Flush first (results before the Sync), then Sync on its own.
    c.write_all(&wire(&[Extended("SELECT 3"), Flush])).await?;
    loop {
        if tokio::time::timeout(Duration::from_secs(5), read_message(&mut c))
            .await??
            .0
            == b'C'
        {
            break;
        }
    }
    c.write_all(&wire(&[Sync])).await?;
    assert_eq!(ready_for_query(&mut c, 1).await?, b"I");
    the_server_is_free("Flush, then Sync").await;

    // Two requests in one write, flushes around them.
    let steps = [
        Flush,
        Extended("SELECT 4"),
        Flush,
        Sync,
        Extended("SELECT 5"),
        Sync,
        Flush,
        Flush,
    ];
    c.write_all(&wire(&steps)).await?;
    assert_eq!(ready_for_query(&mut c, 2).await?, b"II");
    the_server_is_free("Flush, request, Flush, Sync, request, Sync, Flush, Flush").await;

    // A Flush alone, with nothing outstanding: no answer, and no server taken.
    c.write_all(&wire(&[Flush])).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    the_server_is_free("a lone Flush").await;

    // A simple Query followed by a Flush.
    c.write_all(&wire(&[Query("SELECT 6"), Flush])).await?;
    assert_eq!(ready_for_query(&mut c, 1).await?, b"I");
    the_server_is_free("Query, Flush").await;

    // Inside a transaction block the server stays, Flush or not, until it ends.
    c.write_all(&wire(&[Query("BEGIN"), Extended("SELECT 7"), Sync, Flush]))
        .await?;
    assert_eq!(ready_for_query(&mut c, 2).await?, b"TT");
    let held = tokio::time::timeout(Duration::from_millis(500), other.query_one("SELECT 1", &[])).await;
    assert!(held.is_err(), "the transaction's server was given away");
    c.write_all(&wire(&[Query("COMMIT"), Flush])).await?;
    assert_eq!(ready_for_query(&mut c, 1).await?, b"I");
    the_server_is_free("COMMIT, Flush").await;

    // The client reads its ReadyForQuery just before the server is given back: SHOW
    // POOLS says sv_active = 0 a moment later.
    let admin = connect(&s.url(MD5_USER.0, MD5_USER.1, "pgbouncer")).await?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let active: Vec<String> = admin
            .simple_query("SHOW POOLS")
            .await?
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) if r.get("database") == Some("app") => {
                    r.get("sv_active").map(str::to_owned)
                }
                _ => None,
            })
            .collect();
        if active.iter().all(|a| a == "0") {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "SHOW POOLS after the sequences: sv_active {active:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A request whose first message is a named Parse waits for a server before it is
/// rewritten. When no server can be had (PostgreSQL is down), the whole request is
/// answered with the error and ReadyForQuery, like any other: the client is told,
/// never left waiting (psycopg prepares statements after 5 executions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_statement_request_gets_its_error_when_no_server_can_log_in() -> Result<()> {
    let mut pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"trust\"\npool_mode = \"transaction\"\ndefault_pool_size = 2",
        "",
    )?;
    let mut c = raw_login(s.port).await?;
    pg.stop();
    for round in 0..3 {
        let mut out = BytesMut::new();
        extended(&mut out, &format!("s{round}"), "SELECT 1");
        // A second request in the same pipeline is answered too.
        out.extend_from_slice(&wire(&[Step::Sync, Step::Extended("SELECT 2"), Step::Sync]));
        c.write_all(&out).await?;
        let mut errors = Vec::new();
        let mut statuses = Vec::new();
        while statuses.len() < 2 {
            let (tag, body) = tokio::time::timeout(Duration::from_secs(5), read_message(&mut c))
                .await
                .map_err(|_| anyhow::anyhow!("round {round}: no answer; errors so far {errors:?}\n{}", s.log()))??;
            match tag {
                b'E' => errors.push(error_field(&body, b'C')),
                b'Z' => statuses.push(body[0]),
                _ => {}
            }
        }
        assert_eq!(errors.len(), 2, "round {round}: {errors:?}");
        assert!(errors.iter().all(|c| c.starts_with("08")), "round {round}: {errors:?}");
    }
    Ok(())
}

/// A named Parse followed by a message whose length field is 0, while the client
/// has no server: refused with 08P01 (the headers behind a stopped Parse are checked
/// like every other), never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impossible_length_behind_a_named_parse_is_a_protocol_error() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, "auth_type = \"trust\"\npool_mode = \"transaction\"", "")?;
    let mut c = raw_login(s.port).await?;
    let mut out = BytesMut::new();
    message(&mut out, b'P', b"stmt\0SELECT 1\0\0\0");
    out.extend_from_slice(b"P\0\0\0\0");
    c.write_all(&out).await?;
    let got = read_until_closed(&mut c, Duration::from_secs(2)).await?;
    assert_eq!(got.first(), Some(&b'E'), "an ErrorResponse before closing");
    assert_eq!(error_field(&got[5..], b'C'), "08P01");
    assert!(!s.log().contains("panicked"), "{}", s.log());
    Ok(())
}

/// Not PostgreSQL: something behind the database's port that logs anyone in and then
/// answers a query that mentions `bad_frame`, and a plain `BEGIN`, with a
/// ReadyForQuery whose length field is 0. Everything else gets CommandComplete and
/// ReadyForQuery. (No PostgreSQL sends that; a broken proxy in between, or another
/// program on a misconfigured port, can.)
async fn broken_server() -> Result<u16> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(len) = sock.read_u32().await else { return };
                let mut startup = vec![0; len.saturating_sub(4) as usize];
                if sock.read_exact(&mut startup).await.is_err() {
                    return;
                }
                let mut out = BytesMut::new();
                message(&mut out, b'R', &0u32.to_be_bytes());
                message(&mut out, b'K', &[0, 0, 0, 42, 0, 0, 0, 7]);
                message(&mut out, b'Z', b"I");
                if sock.write_all(&out).await.is_err() {
                    return;
                }
                while let Ok((tag, body)) = read_message(&mut sock).await {
                    let mut out = BytesMut::new();
                    match tag {
                        b'Q' => {
                            let sql = String::from_utf8_lossy(&body);
                            if sql.contains("bad_frame") || sql.trim_end_matches('\0') == "BEGIN" {
                                out.extend_from_slice(b"Z\0\0\0\0");
                            } else {
                                message(&mut out, b'C', b"SELECT 1\0");
                                message(&mut out, b'Z', b"I");
                            }
                        }
                        b'X' => return,
                        _ => {}
                    }
                    if sock.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// A server message whose length field is below 4, on both paths that read server
/// bytes: while linked (the byte pump) and while Sluice runs its own query (the
/// deferred BEGIN). The session does not panic: the client gets 08P01, the server
/// connection is closed with a logged protocol error, and its pool slot comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_frame_with_an_impossible_length_is_a_protocol_error_not_a_panic() -> Result<()> {
    let pg = postgres()?;
    let broken = broken_server().await?;
    let s = Sluice::start(
        &pg,
        &format!(
            "auth_type = \"trust\"\npool_mode = \"transaction\"\ndefault_pool_size = 1\nquery_wait_timeout = 3\nadmin_users = \"{}\"",
            MD5_USER.0
        ),
        &format!("[databases.broken]\nhost = \"127.0.0.1\"\nport = {broken}\n"),
    )?;
    let query = |sql: &str| wire(&[Step::Query(sql)]);

    // Linked: the byte pump refuses the frame; the client hears 08P01 and is closed.
    let (mut c, _) = raw_login_to(s.port, "broken").await?;
    c.write_all(&query("SELECT bad_frame")).await?;
    let got = read_until_closed(&mut c, Duration::from_secs(2)).await?;
    assert_eq!(got.first(), Some(&b'E'), "an ErrorResponse before closing");
    assert_eq!(error_field(&got[5..], b'C'), "08P01");
    assert!(
        error_field(&got[5..], b'M').contains("invalid message length 0"),
        "{}",
        error_field(&got[5..], b'M')
    );

    // Sluice's own query (the deferred BEGIN of a transaction block): the request
    // fails with 08P01, the client stays and can go on.
    let (mut c, _) = raw_login_to(s.port, "broken").await?;
    c.write_all(&query("BEGIN")).await?;
    assert_eq!(ready_for_query(&mut c, 1).await?, b"T");
    c.write_all(&query("SELECT 1")).await?;
    let mut codes = Vec::new();
    loop {
        let (tag, body) = tokio::time::timeout(Duration::from_secs(2), read_message(&mut c)).await??;
        match tag {
            b'E' => codes.push(error_field(&body, b'C')),
            b'Z' => break,
            _ => {}
        }
    }
    assert_eq!(codes, ["08P01"]);
    c.write_all(&query("ROLLBACK")).await?;
    assert_eq!(ready_for_query(&mut c, 1).await?, b"I");
    // The one slot of the pool came back both times: a new server serves this client.
    c.write_all(&query("SELECT 1")).await?;
    assert_eq!(ready_for_query(&mut c, 1).await?, b"I");

    let admin = connect(&s.url(MD5_USER.0, MD5_USER.1, "pgbouncer")).await?;
    for m in admin.simple_query("SHOW POOLS").await? {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            if row.get("database") == Some("broken") {
                assert_eq!(row.get("sv_active"), Some("0"));
            }
        }
    }
    let log = s.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("malformed message"), "the protocol error is logged: {log}");
    Ok(())
}
