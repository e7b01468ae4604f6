//! Drop-in for the PgBouncer container images: configuration from environment variables
//! alone (edoburu/pgbouncer and bitnami/pgbouncer names, `_FILE` secrets), the same
//! effective settings three ways, and `sluice convert`; against a real PostgreSQL.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use support::*;

/// Runs `sluice` as the container entrypoint would: no arguments, in `dir` (no
/// pooler.toml there), with only `vars` (plus PATH) in its environment.
fn sluice_cmd(dir: &Path, args: &[&str], vars: &[(&str, String)]) -> Command {
    let mut c = Command::new(sluice_bin());
    c.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SLUICE_LOG", "info");
    for (k, v) in vars {
        c.env(k, v);
    }
    c
}

struct Running {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- sluice log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn start(dir: &Path, port: u16, vars: &[(&str, String)]) -> Result<Running> {
    let log = dir.join("sluice.log");
    let f = std::fs::File::create(&log)?;
    let child = sluice_cmd(dir, &[], vars)
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()?;
    let mut r = Running { child, log };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = r.child.try_wait()? {
            bail!("sluice exited ({status}): {}", std::fs::read_to_string(&r.log)?);
        }
        if Instant::now() > deadline {
            bail!("sluice did not listen: {}", std::fs::read_to_string(&r.log)?);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(r)
}

/// Listening on loopback and a private socket directory (the container's 0.0.0.0 and
/// /tmp would collide between tests).
fn local(dir: &Path, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("LISTEN_ADDR", "127.0.0.1".into()),
        ("LISTEN_PORT", port.to_string()),
        ("UNIX_SOCKET_DIR", dir.display().to_string()),
    ]
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_incidents_variables_alone_serve_queries() -> Result<()> {
    let pg = postgres()?;
    let password = r#"p@ss:w/rd%#?'" x"#;
    pg.psql(
        "postgres",
        &format!("CREATE ROLE incident LOGIN PASSWORD $pw${password}$pw$; GRANT ALL ON DATABASE app TO incident"),
    )?;
    pg.psql("app", "GRANT SELECT ON items TO incident")?;
    let dir = tempfile::tempdir()?;
    let port = sluice_embedded_pg::free_port()?;
    let mut vars = local(dir.path(), port);
    vars.extend([
        (
            "DATABASE_URL",
            format!("postgres://incident:{}@127.0.0.1:{}/app", pct(password), pg.port()),
        ),
        ("POOL_MODE", "transaction".into()),
        ("DEFAULT_POOL_SIZE", "25".into()),
        ("RESERVE_POOL_SIZE", "5".into()),
        ("QUERY_WAIT_TIMEOUT", "5".into()),
        ("SERVER_IDLE_TIMEOUT", "600".into()),
        ("SERVER_LIFETIME", "3600".into()),
        ("ADMIN_USERS", "incident".into()),
        ("AUTH_TYPE", "scram-sha-256".into()),
    ]);
    let _s = start(dir.path(), port, &vars)?;
    let url = format!(
        "host=127.0.0.1 port={port} user=incident dbname=app password='{}'",
        password.replace('\'', "\\'")
    );
    let c = connect(&url)
        .await
        .context("the DATABASE_URL user logs in with its password")?;
    let n: i64 = c.query_typed("SELECT count(*) FROM items", &[]).await?[0].get(0);
    assert_eq!(n, 100);
    // The settings took: seen on the console.
    let admin = connect(&url.replace("dbname=app", "dbname=pgbouncer")).await?;
    let rows = admin.simple_query("SHOW CONFIG").await?;
    let value = |key: &str| {
        rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some(key) => r.get(1).map(str::to_owned),
            _ => None,
        })
    };
    assert_eq!(value("default_pool_size").as_deref(), Some("25"));
    assert_eq!(value("reserve_pool_size").as_deref(), Some("5"));
    assert_eq!(value("query_wait_timeout").as_deref(), Some("5"));
    assert_eq!(value("pool_mode").as_deref(), Some("transaction"));
    // The image's healthcheck: same directory, same environment, no arguments.
    let ok = sluice_cmd(dir.path(), &["healthcheck"], &vars)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success();
    assert!(ok, "sluice healthcheck passes");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_secrets_and_bitnami_names_work_and_typos_are_warned_about() -> Result<()> {
    let pg = postgres()?;
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("db_password");
    std::fs::write(&secret, format!("{}\n", SCRAM_USER.1))?;
    let port = sluice_embedded_pg::free_port()?;
    let mut vars = local(dir.path(), port);
    vars.extend([
        ("POSTGRESQL_HOST", "127.0.0.1".into()),
        ("POSTGRESQL_PORT", pg.port().to_string()),
        ("POSTGRESQL_USERNAME", SCRAM_USER.0.into()),
        ("POSTGRESQL_PASSWORD_FILE", secret.display().to_string()),
        ("POSTGRESQL_DATABASE", "app".into()),
        ("PGBOUNCER_DATABASE", "appdb".into()),
        ("PGBOUNCER_POOL_MODE", "transaction".into()),
        ("PGBOUNCER_DEFAULT_POOL_SIZ", "3".into()),
    ]);
    let s = start(dir.path(), port, &vars)?;
    let c = connect(&format!(
        "host=127.0.0.1 port={port} user={} password={} dbname=appdb",
        SCRAM_USER.0, SCRAM_USER.1
    ))
    .await?;
    let db: String = c.query_typed("SELECT current_database()::text", &[]).await?[0].get(0);
    assert_eq!(db, "app", "alias appdb leads to POSTGRESQL_DATABASE");
    let log = std::fs::read_to_string(&s.log)?;
    assert!(
        log.contains("PGBOUNCER_DEFAULT_POOL_SIZ is not a setting Sluice knows"),
        "{log}"
    );
    // A missing secret file is an error naming the variable.
    let out = sluice_cmd(
        dir.path(),
        &["--check"],
        &[
            ("DB_HOST", "db".into()),
            ("DB_PASSWORD_FILE", "/nonexistent/secret".into()),
        ],
    )
    .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DB_PASSWORD_FILE"));
    Ok(())
}

/// `--check` output without the "where it came from" comments and file names.
fn effective(out: &std::process::Output) -> Result<Vec<String>> {
    anyhow::ensure!(
        out.status.success(),
        "--check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("auth_file"))
        .map(|l| l.split("  #").next().unwrap_or(l).to_owned())
        .collect())
}

#[test]
fn environment_ini_toml_and_converted_toml_give_the_same_settings() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("userlist.txt"), "\"app\" \"s3cret\"\n")?;
    let env_out = sluice_cmd(
        d,
        &["--check"],
        &[
            ("DATABASE_URL", "postgres://app:s3cret@db.internal:5433/app".into()),
            ("POOL_MODE", "transaction".into()),
            ("DEFAULT_POOL_SIZE", "25".into()),
            ("RESERVE_POOL_SIZE", "5".into()),
            ("QUERY_WAIT_TIMEOUT", "5".into()),
            ("SERVER_IDLE_TIMEOUT", "60".into()),
            ("SERVER_LIFETIME", "300".into()),
            ("ADMIN_USERS", "app".into()),
            ("LOG_CONNECTIONS", "0".into()),
        ],
    )
    .output()?;
    let ini = format!(
        "; the incident's sidecar, as a PgBouncer ini\n[databases]\napp = host=db.internal port=5433 dbname=app user=app password=s3cret\n\n[pgbouncer]\nlisten_addr = 0.0.0.0\nlisten_port = 5432\nauth_file = {}/userlist.txt\npool_mode = transaction\ndefault_pool_size = 25\nreserve_pool_size = 5\nquery_wait_timeout = 5\nserver_idle_timeout = 60\nserver_lifetime = 300\nadmin_users = app\nlog_connections = 0\n",
        d.display()
    );
    std::fs::write(d.join("pgbouncer.ini"), &ini)?;
    let ini_out = sluice_cmd(d, &["--check", "pgbouncer.ini"], &[]).output()?;
    let toml = format!(
        "listen_addr = \"0.0.0.0\"\nlisten_port = 5432\nauth_file = \"{}/userlist.txt\"\npool_mode = \"transaction\"\ndefault_pool_size = 25\nreserve_pool_size = 5\nquery_wait_timeout = 5\nserver_idle_timeout = 60\nserver_lifetime = 300\nadmin_users = \"app\"\nlog_connections = false\n[databases.app]\nhost = \"db.internal\"\nport = 5433\ndbname = \"app\"\nuser = \"app\"\npassword = \"s3cret\"\n",
        d.display()
    );
    std::fs::write(d.join("sluice.toml"), toml)?;
    let toml_out = sluice_cmd(d, &["--check", "sluice.toml"], &[]).output()?;
    let converted = sluice_cmd(d, &["convert", "pgbouncer.ini"], &[]).output()?;
    anyhow::ensure!(
        converted.status.success(),
        "{}",
        String::from_utf8_lossy(&converted.stderr)
    );
    let converted_text = String::from_utf8(converted.stdout)?;
    assert!(
        converted_text.contains("# the incident's sidecar"),
        "comments carried: {converted_text}"
    );
    std::fs::write(d.join("converted.toml"), &converted_text)?;
    let converted_out = sluice_cmd(d, &["--check", "converted.toml"], &[]).output()?;

    let env = effective(&env_out)?;
    assert!(env.iter().any(|l| l == "default_pool_size = 25"), "{env:?}");
    assert_eq!(env, effective(&ini_out)?, "environment vs ini");
    assert_eq!(env, effective(&toml_out)?, "environment vs TOML");
    assert_eq!(env, effective(&converted_out)?, "environment vs converted ini");
    // --check says where values came from.
    let text = String::from_utf8_lossy(&env_out.stdout);
    assert!(
        text.contains("default_pool_size = 25  # env DEFAULT_POOL_SIZE"),
        "{text}"
    );
    assert!(text.contains("[databases.app]  # env DATABASE_URL"), "{text}");
    assert!(text.contains("password = \"***\""), "passwords masked: {text}");
    let text = String::from_utf8_lossy(&ini_out.stdout);
    assert!(text.contains("pgbouncer.ini:9"), "file and line: {text}");
    Ok(())
}
