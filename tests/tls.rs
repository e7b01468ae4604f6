//! TLS (docs/configuration.md, client_tls_* and server_tls_*): certificates generated
//! here, a real psql verifying Sluice's, PgBouncer's refusal of plaintext under
//! `require`, and a real PostgreSQL with `ssl = on` that only takes TLS logins with a
//! client certificate.

mod support;

use std::path::Path;

use anyhow::Result;
use support::*;

fn tls_settings(dir: &Path, mode: &str) -> String {
    format!(
        "auth_type = \"scram-sha-256\"\npool_mode = \"transaction\"\nadmin_users = \"scram_user\"\nclient_tls_sslmode = \"{mode}\"\nclient_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"",
        dir.join("server.pem").display(),
        dir.join("server.key").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_serves_tls_clients_and_refuses_plaintext_with_pgbouncers_error() -> Result<()> {
    let pg = postgres()?;
    let certs = tempfile::tempdir()?;
    certificates(certs.path(), "Sluice test CA")?;
    let s = Sluice::start(&pg, &tls_settings(certs.path(), "require"), "")?;
    let (u, p) = SCRAM_USER;

    // psql checks the chain and the host name: this only succeeds over TLS with the
    // configured certificate.
    let url = verify_full(&s.url(u, p, "app"), certs.path(), None);
    let (ok, out, err) = psql(&pg, &url, &["-Atc", "SELECT 6 * 7"], None)?;
    assert!(ok && out.trim() == "42", "psql over TLS: {out} {err}\n{}", s.log());
    // SHOW CLIENTS' tls column, as PgBouncer fills it (the console's own client).
    let console = url.replace("dbname=app", "dbname=pgbouncer");
    let (ok, out, err) = psql(&pg, &console, &["-Atc", "SHOW CLIENTS"], None)?;
    assert!(ok && out.contains("|TLSv1.3/TLS_AES_"), "{out}{err}");
    assert!(out.contains("/ECDH="), "{out}");

    // Plaintext is refused with PgBouncer's text; the login never reaches a password.
    let (ok, _, err) = psql(
        &pg,
        &format!("{} sslmode=disable", s.url(u, p, "app")),
        &["-c", "SELECT 1"],
        None,
    )?;
    assert!(!ok && err.contains("SSL required"), "{err}");
    let e = refused(connect(&s.url(u, p, "app")).await, "plaintext under require");
    assert_eq!(db_error(&e), ("08P01".into(), "SSL required".into()));

    // A certificate the client does not trust fails the handshake on the client side.
    let other = tempfile::tempdir()?;
    certificates(other.path(), "Some other CA")?;
    let url = format!(
        "{} sslmode=verify-ca sslrootcert={}",
        s.url(u, p, "app"),
        other.path().join("ca.pem").display()
    );
    let (ok, _, err) = psql(&pg, &url, &["-c", "SELECT 1"], None)?;
    assert!(!ok && err.contains("certificate verify failed"), "{err}");

    // A wrong password over TLS is PostgreSQL's error, as without TLS, for a database
    // and for the admin console alike.
    for db in ["app", "pgbouncer"] {
        let wrong = format!("{} sslmode=require", s.url(u, "wrong", db));
        let (ok, _, err) = psql(&pg, &wrong, &["-c", "SELECT 1"], None)?;
        assert!(
            !ok && err.contains("password authentication failed for user"),
            "{db}: {err}"
        );
    }

    // Other clients are unaffected by the failures above.
    let (ok, out, _) = psql(
        &pg,
        &format!("{} sslmode=require", s.url(u, p, "app")),
        &["-Atc", "SELECT 1"],
        None,
    )?;
    assert!(ok && out.trim() == "1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_serves_both_and_disable_declines_tls() -> Result<()> {
    let pg = postgres()?;
    let certs = tempfile::tempdir()?;
    certificates(certs.path(), "Sluice test CA")?;
    let s = Sluice::start(&pg, &tls_settings(certs.path(), "prefer"), "")?;
    let (u, p) = SCRAM_USER;
    let verify = verify_full(&s.url(u, p, "app"), certs.path(), None);
    let (ok, out, err) = psql(&pg, &verify, &["-Atc", "SELECT 1"], None)?;
    assert!(ok && out.trim() == "1", "{err}");
    connect(&s.url(u, p, "app")).await?.batch_execute("SELECT 1").await?;
    drop(s);

    let s = Sluice::start(&pg, &tls_settings(certs.path(), "disable"), "")?;
    let (ok, _, err) = psql(
        &pg,
        &format!("{} sslmode=require", s.url(u, p, "app")),
        &["-c", "SELECT 1"],
        None,
    )?;
    assert!(!ok && err.contains("server does not support SSL"), "{err}");
    Ok(())
}

#[test]
fn a_missing_key_file_is_a_config_error_naming_it() -> Result<()> {
    let pg = postgres()?;
    let certs = tempfile::tempdir()?;
    certificates(certs.path(), "Sluice test CA")?;
    std::fs::remove_file(certs.path().join("server.key"))?;
    let started = Sluice::start(&pg, &tls_settings(certs.path(), "require"), "");
    let Err(e) = started else {
        anyhow::bail!("Sluice started without its key file");
    };
    let text = format!("{e:#}");
    assert!(
        text.contains("client_tls_key_file") && text.contains("server.key"),
        "{text}"
    );
    Ok(())
}

/// RELOAD re-reads the certificate and key: new logins get the new certificate, and a
/// TLS session opened before goes on untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rereads_certificates_without_dropping_tls_sessions() -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let pg = postgres()?;
    let certs = tempfile::tempdir()?;
    certificates(certs.path(), "First CA")?;
    let first_ca = certs.path().join("first-ca.pem");
    std::fs::copy(certs.path().join("ca.pem"), &first_ca)?;
    let s = Sluice::start(&pg, &tls_settings(certs.path(), "require"), "")?;
    let (u, p) = SCRAM_USER;
    let verified_by = |ca: &Path| {
        format!(
            "{} sslmode=verify-full sslrootcert={}",
            s.url(u, p, "app"),
            ca.display()
        )
    };

    // A session that stays open across the reload: psql reading from a pipe.
    let mut open = Command::new(pg.bin("psql"))
        .args(["-X", "-At", &verified_by(&first_ca)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut to_psql = open.stdin.take().ok_or_else(|| anyhow::anyhow!("psql stdin"))?;
    let mut from_psql = BufReader::new(open.stdout.take().ok_or_else(|| anyhow::anyhow!("psql stdout"))?);
    writeln!(to_psql, "SELECT 'before';")?;
    let mut line = String::new();
    from_psql.read_line(&mut line)?;
    assert_eq!(line.trim(), "before");

    // New certificate files under the same names, then SIGHUP.
    certificates(certs.path(), "Second CA")?;
    s.signal("HUP")?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (ok, out, err) = psql(
        &pg,
        &verified_by(&certs.path().join("ca.pem")),
        &["-Atc", "SELECT 1"],
        None,
    )?;
    assert!(
        ok && out.trim() == "1",
        "a new login sees the new certificate: {err}\n{}",
        s.log()
    );
    let (ok, _, _) = psql(&pg, &verified_by(&first_ca), &["-Atc", "SELECT 1"], None)?;
    assert!(!ok, "the old certificate is no longer served");

    writeln!(to_psql, "SELECT 'after';")?;
    line.clear();
    from_psql.read_line(&mut line)?;
    assert_eq!(line.trim(), "after", "the TLS session opened before the reload goes on");
    drop(to_psql);
    assert!(open.wait()?.success());
    Ok(())
}

/// verify-ca: a client must show a certificate signed by client_tls_ca_file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_asks_for_a_client_certificate_from_the_ca() -> Result<()> {
    let pg = postgres()?;
    let certs = tempfile::tempdir()?;
    certificates(certs.path(), "Sluice test CA")?;
    let other = tempfile::tempdir()?;
    certificates(other.path(), "Some other CA")?;
    let settings = format!(
        "{}\nclient_tls_ca_file = \"{}\"",
        tls_settings(certs.path(), "verify-ca"),
        certs.path().join("ca.pem").display()
    );
    let s = Sluice::start(&pg, &settings, "")?;
    let (u, p) = SCRAM_USER;
    let with_cert = |dir: &Path| verify_full(&s.url(u, p, "app"), certs.path(), Some(dir));
    let (ok, out, err) = psql(&pg, &with_cert(certs.path()), &["-Atc", "SELECT 1"], None)?;
    assert!(ok && out.trim() == "1", "{err}\n{}", s.log());
    let (ok, _, err) = psql(&pg, &with_cert(other.path()), &["-Atc", "SELECT 1"], None)?;
    assert!(!ok, "a client certificate from another CA is refused: {err}");
    // The client is told why by the TLS alert (no ErrorResponse without a session).
    assert!(err.contains("alert unknown ca"), "{err}");
    assert!(logged(&s, "UnknownIssuer"), "the log names the cause:\n{}", s.log());
    let expired = with_cert(certs.path()).replace("client.pem", "expired.pem");
    let (ok, _, err) = psql(&pg, &expired, &["-Atc", "SELECT 1"], None)?;
    assert!(!ok, "an expired client certificate is refused: {err}");
    assert!(err.contains("alert certificate expired"), "{err}");
    assert!(
        logged(&s, "certificate expired"),
        "the log names the cause:\n{}",
        s.log()
    );
    let no_cert = verify_full(&s.url(u, p, "app"), certs.path(), None);
    let (ok, _, err) = psql(&pg, &no_cert, &["-Atc", "SELECT 1"], None)?;
    assert!(!ok, "no client certificate is refused: {err}");
    assert!(err.contains("alert certificate required"), "{err}");
    assert!(logged(&s, "TLS handshake failed"), "{}", s.log());
    Ok(())
}

/// A PostgreSQL that takes scram_user only over TLS and with a client certificate
/// from the test CA (`clientcert=verify-full`); its own certificate is for 127.0.0.1.
fn postgres_with_tls(certs: &Path) -> Result<sluice_embedded_pg::EmbeddedPg> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(certs, std::fs::Permissions::from_mode(0o755))?;
    let key = certs.join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    sluice_embedded_pg::give_to_server_account(&key)?;
    postgres_with(sluice_embedded_pg::PgOptions {
        hba: vec![
            "host all postgres 127.0.0.1/32 trust".into(),
            "hostssl all scram_user 127.0.0.1/32 scram-sha-256 clientcert=verify-full".into(),
        ],
        conf: vec![
            "ssl = on".into(),
            format!("ssl_cert_file = '{}'", certs.join("server.pem").display()),
            format!("ssl_key_file = '{}'", key.display()),
            format!("ssl_ca_file = '{}'", certs.join("ca.pem").display()),
        ],
    })
}

fn server_tls_settings(certs: &Path, mode: &str, client_cert: bool) -> String {
    let mut s = format!(
        "auth_type = \"scram-sha-256\"\npool_mode = \"transaction\"\nserver_tls_sslmode = \"{mode}\"\nserver_tls_ca_file = \"{}\"",
        certs.join("ca.pem").display()
    );
    if client_cert {
        s += &format!(
            "\nserver_tls_cert_file = \"{}\"\nserver_tls_key_file = \"{}\"",
            certs.join("client.pem").display(),
            certs.join("client.key").display()
        );
    }
    s
}

/// Waits up to 3 s for `needle` in Sluice's log: a client can see a failed handshake
/// before Sluice has written its line about it.
fn logged(s: &Sluice, needle: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !s.log().contains(needle) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// Logs in and runs one query: Sluice takes a server for the first query, not at login.
async fn first_query(url: &str) -> Result<(), tokio_postgres::Error> {
    connect(url).await?.batch_execute("SELECT 1").await
}

/// The server by name: its certificate is for 127.0.0.1 only.
fn by_name(pg: &sluice_embedded_pg::EmbeddedPg) -> String {
    format!(
        "[databases.byname]\nhost = \"localhost\"\nport = {}\ndbname = \"app\"\n",
        pg.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_verifies_postgres_and_shows_a_client_certificate() -> Result<()> {
    let certs = tempfile::tempdir()?;
    certificates_for(certs.path(), "Sluice test CA", &["127.0.0.1"])?;
    let pg = postgres_with_tls(certs.path())?;
    let (u, p) = SCRAM_USER;
    let on_tls = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

    // verify-full: chain and host name checked, client certificate shown.
    let s = Sluice::start(
        &pg,
        &server_tls_settings(certs.path(), "verify-full", true),
        &by_name(&pg),
    )?;
    let c = connect(&s.url(u, p, "app")).await?;
    assert!(
        c.query_one(on_tls, &[]).await?.get::<_, bool>(0),
        "the server link is TLS"
    );
    // The certificate names 127.0.0.1, not localhost: refused, and the client is told.
    let e = refused(
        first_query(&s.url(u, p, "byname")).await,
        "verify-full with the wrong host name",
    );
    let (_, msg) = db_error(&e);
    assert!(
        msg.contains("TLS handshake failed") && msg.contains("not valid for name"),
        "{msg}"
    );
    drop(s);

    // verify-ca checks the chain only: the same server by name is fine.
    let s = Sluice::start(
        &pg,
        &server_tls_settings(certs.path(), "verify-ca", true),
        &by_name(&pg),
    )?;
    let c = connect(&s.url(u, p, "byname")).await?;
    assert!(c.query_one(on_tls, &[]).await?.get::<_, bool>(0));
    drop(s);

    // Without the client certificate PostgreSQL refuses the login (clientcert).
    let s = Sluice::start(&pg, &server_tls_settings(certs.path(), "require", false), "")?;
    let e = refused(
        first_query(&s.url(u, p, "app")).await,
        "no client certificate for the server",
    );
    let (_, msg) = db_error(&e);
    assert!(msg.contains("certificate"), "{msg}");
    drop(s);

    // Plaintext is refused by this server's pg_hba (hostssl only).
    let s = Sluice::start(&pg, &server_tls_settings(certs.path(), "disable", true), "")?;
    refused(
        first_query(&s.url(u, p, "app")).await,
        "plaintext to a hostssl-only server",
    );

    // A CA that did not sign the server's certificate fails verify-ca.
    let other = tempfile::tempdir()?;
    certificates(other.path(), "Some other CA")?;
    let settings = server_tls_settings(certs.path(), "verify-ca", true).replace(
        &certs.path().join("ca.pem").display().to_string(),
        &other.path().join("ca.pem").display().to_string(),
    );
    let s = Sluice::start(&pg, &settings, "")?;
    let e = refused(first_query(&s.url(u, p, "app")).await, "an unknown CA");
    let (_, msg) = db_error(&e);
    assert!(msg.contains("TLS handshake failed"), "{msg}");
    Ok(())
}

/// PostgreSQL 17's direct TLS (`sslnegotiation=direct`): the client starts with a TLS
/// ClientHello instead of an SSLRequest and must agree on ALPN "postgresql".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_is_accepted_with_alpn_postgresql() -> Result<()> {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pg = postgres()?;
    let certs = tempfile::tempdir()?;
    certificates(certs.path(), "Sluice test CA")?;
    let s = Sluice::start(&pg, &tls_settings(certs.path(), "require"), "")?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(
        certs.path().join("ca.pem"),
    )?)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    // The first message after a handshake with (or without) ALPN.
    let first_message = |alpn: Vec<Vec<u8>>| {
        let (roots, provider) = (roots.clone(), provider.clone());
        async move {
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = alpn;
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.port)).await?;
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
            let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                .connect(name, tcp)
                .await?;
            let (u, _) = SCRAM_USER;
            tls.write_all(&startup_packet(196608, &[("user", u), ("database", "app")]))
                .await?;
            let mut header = [0u8; 5];
            tls.read_exact(&mut header).await?;
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            let mut body = vec![0u8; len.saturating_sub(4)];
            tls.read_exact(&mut body).await?;
            anyhow::Ok((header[0], body))
        }
    };
    let (tag, _) = first_message(vec![b"postgresql".to_vec()]).await?;
    assert_eq!(tag, b'R', "an authentication request: the login goes on over TLS");
    let (tag, body) = first_message(vec![]).await?;
    assert_eq!(tag, b'E');
    assert!(
        error_field(&body, b'M').contains("without ALPN"),
        "{}",
        error_field(&body, b'M')
    );
    Ok(())
}

/// A TLS server that PostgreSQL closed while it sat idle is noticed before it is lent
/// (the peer-closed bit of a duplicate descriptor), so the next client gets a fresh
/// one instead of an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_server_closed_by_postgres_is_replaced_unseen() -> Result<()> {
    let certs = tempfile::tempdir()?;
    certificates_for(certs.path(), "Sluice test CA", &["127.0.0.1"])?;
    let pg = postgres_with_tls(certs.path())?;
    let (u, p) = SCRAM_USER;
    let s = Sluice::start(&pg, &server_tls_settings(certs.path(), "verify-full", true), "")?;
    let c = connect(&s.url(u, p, "app")).await?;
    let pid = |row: tokio_postgres::Row| row.get::<_, i32>(0);
    let first = pid(c.query_one("SELECT pg_backend_pid()", &[]).await?);
    pg.psql("postgres", &format!("SELECT pg_terminate_backend({first})"))?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let second = pid(c.query_one("SELECT pg_backend_pid()", &[]).await?);
    assert_ne!(first, second, "a new server");
    Ok(())
}

/// client_tls_protocols / client_tls_ciphers narrow what is offered; SHOW CLIENTS
/// names the result as PgBouncer does (OpenSSL names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_protocols_and_ciphers_follow_the_settings() -> Result<()> {
    let pg = postgres()?;
    let certs = tempfile::tempdir()?;
    certificates(certs.path(), "Sluice test CA")?;
    let (u, p) = SCRAM_USER;
    let settings = format!(
        "{}\nclient_tls_protocols = \"tlsv1.2\"\nclient_tls_ciphers = \"ECDHE-ECDSA-AES128-GCM-SHA256\"",
        tls_settings(certs.path(), "require")
    );
    let s = Sluice::start(&pg, &settings, "")?;
    let console = format!("{} sslmode=require", s.url(u, p, "pgbouncer"));
    let (ok, out, err) = psql(&pg, &console, &["-Atc", "SHOW CLIENTS"], None)?;
    assert!(
        ok && out.contains("|TLSv1.2/ECDHE-ECDSA-AES128-GCM-SHA256/ECDH="),
        "{out}{err}"
    );
    // A client that insists on TLS 1.3 finds nothing to agree on.
    let (ok, _, err) = psql(
        &pg,
        &format!(
            "{} sslmode=require ssl_min_protocol_version=TLSv1.3",
            s.url(u, p, "app")
        ),
        &["-c", "SELECT 1"],
        None,
    )?;
    assert!(!ok, "TLS 1.3 only against a TLS 1.2 only pooler: {err}");
    drop(s);

    let settings = format!(
        "{}\nclient_tls_protocols = \"tlsv1.3\"",
        tls_settings(certs.path(), "require")
    );
    let s = Sluice::start(&pg, &settings, "")?;
    let (ok, _, err) = psql(
        &pg,
        &format!(
            "{} sslmode=require ssl_max_protocol_version=TLSv1.2",
            s.url(u, p, "app")
        ),
        &["-c", "SELECT 1"],
        None,
    )?;
    assert!(!ok, "TLS 1.2 only against a TLS 1.3 only pooler: {err}");
    drop(s);

    // A cipher nobody knows stops the start, naming the setting.
    let settings = format!(
        "{}\nclient_tls_ciphers = \"ECDHE-RSA-AES128-SHA999\"",
        tls_settings(certs.path(), "require")
    );
    let Err(e) = Sluice::start(&pg, &settings, "") else {
        anyhow::bail!("Sluice started with an unknown cipher");
    };
    assert!(format!("{e:#}").contains("client_tls_ciphers"), "{e:#}");
    Ok(())
}

/// Real TLS clients besides psql: tokio-postgres with rustls (verifying the chain and
/// host name, and showing a client certificate) and psycopg with sslmode=verify-full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_rustls_and_psycopg_verify_full() -> Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pg = postgres()?;
    let certs = tempfile::tempdir()?;
    certificates(certs.path(), "Sluice test CA")?;
    let settings = format!(
        "{}\nclient_tls_ca_file = \"{}\"",
        tls_settings(certs.path(), "verify-full"),
        certs.path().join("ca.pem").display()
    );
    let s = Sluice::start(&pg, &settings, "")?;
    let (u, p) = SCRAM_USER;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(certs.path().join("ca.pem"))?)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_file(certs.path().join("client.pem"))?],
            PrivateKeyDer::from_pem_file(certs.path().join("client.key"))?,
        )?;
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
    let (client, conn) = tokio_postgres::connect(&format!("{} sslmode=require", s.url(u, p, "app")), tls).await?;
    tokio::spawn(conn);
    let n: i64 = client.query_one("SELECT count(*) FROM items", &[]).await?.get(0);
    assert_eq!(n, 100);

    let python = python_with_psycopg()?;
    let script = format!(
        "import psycopg\n\
         with psycopg.connect('{}') as c:\n\
         \x20   print(c.execute('SELECT 6 * 7').fetchone()[0], c.pgconn.ssl_in_use)\n",
        verify_full(&s.url(u, p, "app"), certs.path(), Some(certs.path()))
    );
    let out = std::process::Command::new(python).args(["-c", &script]).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "42 True",
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// server_tls_protocols / server_tls_ciphers: what PostgreSQL itself reports for the
/// server connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_protocols_and_ciphers_reach_postgres() -> Result<()> {
    let certs = tempfile::tempdir()?;
    certificates_for(certs.path(), "Sluice test CA", &["127.0.0.1"])?;
    let pg = postgres_with_tls(certs.path())?;
    let (u, p) = SCRAM_USER;
    let settings = format!(
        "{}\nserver_tls_protocols = \"tlsv1.2\"\nserver_tls_ciphers = \"ECDHE-ECDSA-AES256-GCM-SHA384\"",
        server_tls_settings(certs.path(), "verify-full", true)
    );
    let s = Sluice::start(&pg, &settings, "")?;
    let c = connect(&s.url(u, p, "app")).await?;
    let row = c
        .query_one(
            "SELECT version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("TLSv1.2".into(), "ECDHE-ECDSA-AES256-GCM-SHA384".into())
    );
    Ok(())
}
