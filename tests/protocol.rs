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
