//! Test harness: a real PostgreSQL (throwaway, random port), the real `sluice` binary
//! in front of it with a generated config, and real clients.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use sluice_embedded_pg::{free_port, EmbeddedPg, PgOptions};

/// Users the test PostgreSQL knows, by how PostgreSQL authenticates them.
pub const SCRAM_USER: (&str, &str) = ("scram_user", "scram_pw");
pub const MD5_USER: (&str, &str) = ("md5_user", "md5_pw");
pub const PLAIN_USER: (&str, &str) = ("plain_user", "plain_pw");
pub const TRUST_USER: (&str, &str) = ("trust_user", "trust_pw");

/// A PostgreSQL with the four users, databases `app` and `app2`, and a table `items`.
pub fn postgres() -> Result<EmbeddedPg> {
    postgres_with(PgOptions {
        hba: vec![
            "host all postgres 127.0.0.1/32 trust".into(),
            "host all trust_user 127.0.0.1/32 trust".into(),
            "host all md5_user 127.0.0.1/32 md5".into(),
            "host all plain_user 127.0.0.1/32 password".into(),
            "host all all 127.0.0.1/32 scram-sha-256".into(),
        ],
        conf: vec![],
    })
}

/// [`postgres`] with other pg_hba.conf lines and postgresql.conf settings.
pub fn postgres_with(options: PgOptions) -> Result<EmbeddedPg> {
    let pg = EmbeddedPg::start(options)?;
    pg.psql("postgres", "CREATE ROLE scram_user LOGIN PASSWORD 'scram_pw'")?;
    pg.psql(
        "postgres",
        "SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN PASSWORD 'md5_pw'",
    )?;
    pg.psql("postgres", "CREATE ROLE plain_user LOGIN PASSWORD 'plain_pw'")?;
    pg.psql("postgres", "CREATE ROLE trust_user LOGIN")?;
    for db in ["app", "app2"] {
        pg.psql("postgres", &format!("CREATE DATABASE {db}"))?;
        pg.psql(
            db,
            "GRANT ALL ON SCHEMA public TO PUBLIC;
             CREATE TABLE items (id int PRIMARY KEY, v text);
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g;
             GRANT ALL ON items TO PUBLIC;",
        )?;
    }
    Ok(pg)
}

/// A running `sluice` process.
pub struct Sluice {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
}

/// The binary under test.
pub fn sluice_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

/// A userlist.txt with every test user's plaintext password.
pub fn userlist() -> String {
    [SCRAM_USER, MD5_USER, PLAIN_USER, TRUST_USER]
        .iter()
        .map(|(u, p)| format!("\"{u}\" \"{p}\"\n"))
        .collect()
}

/// Settings every test config shares: loopback TCP on `port`, a private Unix socket
/// directory, the userlist.
pub fn base_settings(dir: &Path, port: u16) -> String {
    format!(
        "listen_addr = \"127.0.0.1\"\nlisten_port = {port}\nunix_socket_dir = \"{}\"\nauth_file = \"{}\"\n",
        dir.display(),
        dir.join("userlist.txt").display()
    )
}

impl Sluice {
    /// Starts Sluice with `settings` (TOML top-level keys) and `[databases.app]` /
    /// `[databases.app2]` pointing at `pg`, plus `extra` TOML appended.
    pub fn start(pg: &EmbeddedPg, settings: &str, extra: &str) -> Result<Sluice> {
        Self::start_with_userlist(pg, settings, extra, &userlist())
    }

    /// [`Sluice::start`] with another userlist.txt (auth_file).
    pub fn start_with_userlist(pg: &EmbeddedPg, settings: &str, extra: &str, users: &str) -> Result<Sluice> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        std::fs::write(dir.path().join("userlist.txt"), users)?;
        let text = format!(
            "{}{settings}\n[databases.app]\nhost = \"127.0.0.1\"\nport = {pgport}\n[databases.app2]\nhost = \"127.0.0.1\"\nport = {pgport}\n{extra}\n",
            base_settings(dir.path(), port),
            pgport = pg.port()
        );
        let config = dir.path().join("pooler.toml");
        std::fs::write(&config, text)?;
        Self::spawn(dir, port, &[config.to_string_lossy().as_ref()])
    }

    /// Starts the binary with `args` (config path etc.) and waits for its port.
    pub fn spawn(dir: tempfile::TempDir, port: u16, args: &[&str]) -> Result<Sluice> {
        let log = std::fs::File::create(dir.path().join("sluice.log"))?;
        let child = Command::new(sluice_bin())
            .args(args)
            .env("SLUICE_LOG", "info,sluice_pooler=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start sluice")?;
        let mut s = Sluice {
            port,
            dir,
            child: Some(child),
        };
        s.wait_listening()?;
        Ok(s)
    }

    fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait()? {
                    bail!("sluice exited ({status}):\n{}", self.log());
                }
            }
            if Instant::now() > deadline {
                bail!("sluice did not listen on {} in time:\n{}", self.port, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sluice.log")).unwrap_or_default()
    }

    /// Sends a signal (`"INT"`, `"TERM"`, `"QUIT"`, `"HUP"`) to the process.
    pub fn signal(&self, sig: &str) -> Result<()> {
        let pid = self.child.as_ref().context("not running")?.id();
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()?
            .success();
        anyhow::ensure!(ok, "kill -{sig} {pid} failed");
        Ok(())
    }

    /// Waits up to `within` for the process to exit; returns its status if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().context("not running")?;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db}",
            self.port
        )
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- sluice log ---\n{}", self.log());
        }
    }
}

/// Connects with tokio-postgres and drives the connection in the background.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The SQLSTATE and message of a tokio-postgres error.
pub fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
        None => (String::new(), e.to_string()),
    }
}

/// Runs psql against Sluice; returns (success, stdout, stderr).
pub fn psql(pg: &EmbeddedPg, url: &str, args: &[&str], stdin: Option<&str>) -> Result<(bool, String, String)> {
    let mut child = Command::new(pg.bin("psql"))
        .arg("-X")
        .arg(url)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Counts server connections PostgreSQL has for (user, db), not counting ourselves.
pub fn backends(pg: &EmbeddedPg, user: &str, db: &str) -> Result<usize> {
    let n = pg.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}' AND datname = '{db}'"),
    )?;
    Ok(n.parse()?)
}

/// The error of a result that must have failed (tokio-postgres's Client is not Debug,
/// so `expect_err` is not available).
#[track_caller]
pub fn refused<T, E>(r: Result<T, E>, what: &str) -> E {
    match r {
        Ok(_) => panic!("expected an error: {what}"),
        Err(e) => e,
    }
}

// --- Raw protocol helpers, for what no driver will send ---

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream as AsyncTcpStream;

pub fn startup_packet(version: u32, params: &[(&str, &str)]) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_u32(version);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = BytesMut::new();
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(&body);
    out
}

/// Reads one tagged message: (tag, body).
pub async fn read_message(s: &mut AsyncTcpStream) -> Result<(u8, Vec<u8>)> {
    let tag = s.read_u8().await?;
    let len = s.read_u32().await? as usize;
    let mut body = vec![0; len.saturating_sub(4)];
    s.read_exact(&mut body).await?;
    Ok((tag, body))
}

/// Field `code` ('C', 'M', ...) of an ErrorResponse body.
pub fn error_field(body: &[u8], code: u8) -> String {
    let mut rest = body;
    while let Some((&t, tail)) = rest.split_first() {
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        if t == code {
            return String::from_utf8_lossy(&tail[..end]).into_owned();
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    String::new()
}

/// Logs in as trust_user on a raw socket and reads up to ReadyForQuery.
pub async fn raw_login(port: u16) -> Result<AsyncTcpStream> {
    Ok(raw_login_keyed(port).await?.0)
}

/// Like [`raw_login`], also returning the cancel key (pid, key) Sluice gave.
pub async fn raw_login_keyed(port: u16) -> Result<(AsyncTcpStream, (i32, i32))> {
    raw_login_to(port, "app").await
}

/// Logs in as trust_user to database `db` on a raw socket; returns the socket and
/// the cancel key (pid, key) Sluice gave.
pub async fn raw_login_to(port: u16, db: &str) -> Result<(AsyncTcpStream, (i32, i32))> {
    let mut s = AsyncTcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(&startup_packet(3 << 16, &[("user", TRUST_USER.0), ("database", db)]))
        .await?;
    let mut key = (0, 0);
    loop {
        let (tag, body) = read_message(&mut s).await?;
        match tag {
            b'K' if body.len() == 8 => {
                key = (
                    i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                )
            }
            b'Z' => return Ok((s, key)),
            b'E' => anyhow::bail!("login failed: {}", error_field(&body, b'M')),
            _ => {}
        }
    }
}

/// Appends one tagged message.
pub fn message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(body);
}

/// The system Python (where Debian's python3-psycopg lives) or whichever python3
/// comes first on PATH and has psycopg 3.
pub fn python_with_psycopg() -> Result<&'static str> {
    for python in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(python)
            .args(["-c", "import psycopg"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(python);
        }
    }
    bail!("no python3 with psycopg 3: apt-get install python3-psycopg (.ci/run does)")
}

/// GET `path` on `addr`; (status, body).
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Parses the Prometheus text format strictly enough to catch malformed output:
/// returns series (name{labels}) → value.
pub fn parse_exposition(text: &str) -> std::collections::HashMap<String, f64> {
    let mut series = std::collections::HashMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(
                ["gauge", "counter", "histogram", "summary", "untyped"].contains(&kind),
                "bad TYPE line: {line}"
            );
            assert!(typed.insert(name.to_owned()), "TYPE declared twice: {line}");
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP "), "bad comment: {line}");
            continue;
        }
        let (series_name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series_name.split('{').next().unwrap_or("");
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        if let Some(labels) = series_name.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels: {line}"
            );
        }
        series.insert(series_name.to_owned(), value);
    }
    series
}

/// A CA named `ca_name`, a server certificate it signed for 127.0.0.1 / localhost and
/// a client certificate for scram_user, as PEM files in `dir`: ca.pem, server.pem,
/// server.key, client.pem, client.key.
pub fn certificates(dir: &Path, ca_name: &str) -> Result<()> {
    certificates_for(dir, ca_name, &["127.0.0.1", "localhost"])
}

/// [`certificates`] with the server certificate valid for `names` only.
pub fn certificates_for(dir: &Path, ca_name: &str, names: &[&str]) -> Result<()> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let mut server = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    server.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let server = server.signed_by(&key, &ca)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("server.pem"), server.pem())?;
    std::fs::write(dir.join("server.key"), key.serialize_pem())?;
    // A client certificate from the same CA (libpq wants its key private).
    let client_key = KeyPair::generate()?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client.distinguished_name.push(DnType::CommonName, SCRAM_USER.0);
    let client = client.signed_by(&client_key, &ca)?;
    std::fs::write(dir.join("client.pem"), client.pem())?;
    std::fs::write(dir.join("client.key"), client_key.serialize_pem())?;
    std::fs::set_permissions(
        dir.join("client.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    // The same client, with a certificate that expired in 2021.
    let mut expired = CertificateParams::new(Vec::<String>::new())?;
    expired.distinguished_name.push(DnType::CommonName, SCRAM_USER.0);
    expired.not_before = rcgen::date_time_ymd(2020, 1, 1);
    expired.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = expired.signed_by(&client_key, &ca)?;
    std::fs::write(dir.join("expired.pem"), expired.pem())?;
    Ok(())
}

/// `url` for libpq clients with `sslmode=verify-full` against the CA in `ca_dir`
/// (ca.pem), showing the client certificate in `client_dir` (client.pem / client.key)
/// if given.
pub fn verify_full(url: &str, ca_dir: &Path, client_dir: Option<&Path>) -> String {
    let mut out = format!(
        "{url} sslmode=verify-full sslrootcert={}",
        ca_dir.join("ca.pem").display()
    );
    if let Some(dir) = client_dir {
        out += &format!(
            " sslcert={} sslkey={}",
            dir.join("client.pem").display(),
            dir.join("client.key").display()
        );
    }
    out
}
