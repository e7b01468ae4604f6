//! Core proxy behaviour with real clients against a real PostgreSQL.

mod support;

use std::time::Duration;

use anyhow::Result;
use support::*;
use tokio_postgres::types::Type;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_auth_type_accepts_right_and_rejects_wrong_passwords() -> Result<()> {
    let pg = postgres()?;
    for auth_type in ["scram-sha-256", "md5", "plain", "trust"] {
        let s = Sluice::start(
            &pg,
            &format!("auth_type = \"{auth_type}\"\npool_mode = \"transaction\""),
            "",
        )?;
        let (user, pw) = SCRAM_USER;
        let c = connect(&s.url(user, pw, "app")).await?;
        let row = c.query_one("SELECT current_user::text", &[]).await?;
        assert_eq!(row.get::<_, String>(0), user, "{auth_type}");

        let bad = connect(&s.url(user, "wrong", "app")).await;
        let ghost = connect(&s.url("ghost", "whatever", "app")).await;
        if auth_type == "trust" {
            // trust takes any password, but the user must be in auth_file (PgBouncer).
            assert!(bad.is_ok(), "trust accepts any password");
            let (code, msg) = db_error(&refused(ghost, "unknown user refused under trust"));
            assert_eq!(
                (code.as_str(), msg.as_str()),
                ("28P01", "password authentication failed for user \"ghost\"")
            );
        } else {
            // A wrong password and an unknown user are indistinguishable.
            let (code, msg) = db_error(&refused(bad, "wrong password refused"));
            assert_eq!(
                (code.as_str(), msg.as_str()),
                ("28P01", "password authentication failed for user \"scram_user\""),
                "{auth_type}"
            );
            let (code, msg) = db_error(&refused(ghost, "unknown user refused"));
            assert_eq!(
                (code.as_str(), msg.as_str()),
                ("28P01", "password authentication failed for user \"ghost\""),
                "{auth_type}"
            );
        }
        let e = refused(connect(&s.url(user, pw, "nosuchdb")).await, "unknown database refused");
        let (code, msg) = db_error(&e);
        assert_eq!(code, "3D000", "{auth_type}");
        assert!(msg.contains("nosuchdb"), "{msg}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_to_postgres_with_scram_md5_cleartext_and_trust() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, "auth_type = \"scram-sha-256\"\npool_mode = \"transaction\"", "")?;
    for (user, pw) in [SCRAM_USER, MD5_USER, PLAIN_USER, TRUST_USER] {
        let c = connect(&s.url(user, pw, "app")).await?;
        let row = c.query_one("SELECT current_user::text", &[]).await?;
        assert_eq!(row.get::<_, String>(0), user);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_file_md5_and_scram_secrets_work() -> Result<()> {
    let pg = postgres()?;
    let dir = tempfile::tempdir()?;
    let port = sluice_embedded_pg::free_port()?;
    let md5 = sluice_wire_md5(MD5_USER.0, MD5_USER.1);
    let scram = pg.psql(
        "postgres",
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'scram_user'",
    )?;
    std::fs::write(
        dir.path().join("userlist.txt"),
        format!("\"md5_user\" \"{md5}\"\n\"scram_user\" \"{scram}\"\n"),
    )?;
    // A SCRAM secret cannot log in to PostgreSQL by itself: the database entry forces
    // the server user and password, as PgBouncer deployments without auth_query do.
    let config = format!(
        "{}auth_type = \"md5\"\npool_mode = \"transaction\"\n[databases.app]\nhost = \"127.0.0.1\"\nport = {p}\n[databases.forced]\nhost = \"127.0.0.1\"\nport = {p}\ndbname = \"app\"\nuser = \"plain_user\"\npassword = \"plain_pw\"\n",
        base_settings(dir.path(), port),
        p = pg.port()
    );
    let path = dir.path().join("pooler.toml");
    std::fs::write(&path, config)?;
    let s = Sluice::spawn(dir, port, &[path.to_str().unwrap_or_default()])?;
    // md5 secret: client md5 auth and server md5 login from the same secret.
    let c = connect(&s.url("md5_user", "md5_pw", "app")).await?;
    assert_eq!(
        c.query_one("SELECT current_user::text", &[]).await?.get::<_, String>(0),
        "md5_user"
    );
    assert!(connect(&s.url("md5_user", "nope", "app")).await.is_err());
    // SCRAM secret: auth_type md5 still does SCRAM for it (PgBouncer's behaviour).
    let c = connect(&s.url("scram_user", "scram_pw", "forced")).await?;
    assert_eq!(
        c.query_one("SELECT current_user::text", &[]).await?.get::<_, String>(0),
        "plain_user"
    );
    assert!(connect(&s.url("scram_user", "nope", "forced")).await.is_err());
    Ok(())
}

fn sluice_wire_md5(user: &str, password: &str) -> String {
    // md5(password || user), as PostgreSQL and PgBouncer store it.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("printf '%s' '{password}{user}' | md5sum | cut -d' ' -f1"))
        .output()
        .expect("md5sum");
    format!("md5{}", String::from_utf8_lossy(&out.stdout).trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_errors_and_rollback() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, "auth_type = \"scram-sha-256\"\npool_mode = \"transaction\"", "")?;
    let (u, p) = SCRAM_USER;
    let c = connect(&s.url(u, p, "app")).await?;

    // Simple protocol.
    let msgs = c.simple_query("SELECT 1; SELECT 'two'").await?;
    let values: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["1", "two"]);
    // Extended protocol, unnamed statement, parameters.
    let rows = c
        .query_typed("SELECT v FROM items WHERE id = $1", &[(&42i32, Type::INT4)])
        .await?;
    assert_eq!(rows[0].get::<_, String>(0), "item 42");

    // An error inside a transaction, then ROLLBACK, then the session goes on.
    c.batch_execute("BEGIN").await?;
    c.batch_execute("UPDATE items SET v = 'changed' WHERE id = 1").await?;
    let e = refused(c.batch_execute("SELECT 1/0").await, "division by zero");
    assert_eq!(db_error(&e).0, "22012");
    let e = refused(c.batch_execute("SELECT 1").await, "aborted transaction");
    assert_eq!(db_error(&e).0, "25P02");
    c.batch_execute("ROLLBACK").await?;
    let v: String = c.query_typed("SELECT v FROM items WHERE id = 1", &[]).await?[0].get(0);
    assert_eq!(v, "item 1", "the rolled-back update is gone");

    // An error in autocommit does not disturb the next statement.
    assert!(c.batch_execute("SELECT * FROM no_such_table").await.is_err());
    assert_eq!(c.query_typed("SELECT 7", &[]).await?[0].get::<_, i32>(0), 7);

    // extra_float_digits and options=-c ... (JDBC, lib/pq, psycopg send them).
    let c2 = connect(&format!("{} options='-c statement_timeout=5000'", s.url(u, p, "app"))).await?;
    assert_eq!(c2.query_typed("SELECT 1", &[]).await?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_and_copy_pass_through_intact() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, "auth_type = \"scram-sha-256\"\npool_mode = \"transaction\"", "")?;
    let (u, p) = SCRAM_USER;
    let c = connect(&s.url(u, p, "app")).await?;

    // 100k rows of ~110 bytes: far more than any buffer.
    let rows = c
        .query_typed("SELECT g, repeat('x', 100) || g FROM generate_series(1, 100000) g", &[])
        .await?;
    assert_eq!(rows.len(), 100_000);
    let sum: i64 = rows.iter().map(|r| r.get::<_, i32>(0) as i64).sum();
    assert_eq!(sum, 100_000 * 100_001 / 2);
    assert_eq!(rows[99_999].get::<_, String>(1), format!("{}100000", "x".repeat(100)));
    // One value larger than the 256 KiB forwarding buffer.
    let big: String = c.query_typed("SELECT repeat('y', 5000000)", &[]).await?[0].get(0);
    assert_eq!(big.len(), 5_000_000);

    // COPY FROM STDIN and TO STDOUT through psql.
    let url = s.url(u, p, "app");
    let (ok, _, err) = psql(&pg, &url, &["-c", "CREATE TABLE copied (id int, body text)"], None)?;
    assert!(ok, "{err}");
    let input: String = (1..=50_000).map(|i| format!("{i}\tline {i}\n")).collect();
    let (ok, out, err) = psql(&pg, &url, &["-c", "\\copy copied FROM STDIN"], Some(&input))?;
    assert!(ok, "{err}");
    assert!(out.contains("COPY 50000"), "{out}");
    let (ok, out, err) = psql(
        &pg,
        &url,
        &["-c", "COPY (SELECT * FROM copied ORDER BY id) TO STDOUT"],
        None,
    )?;
    assert!(ok, "{err}");
    assert_eq!(out, input);
    // A failing COPY (bad data) reports PostgreSQL's error and leaves the pool usable.
    let (ok, _, err) = psql(
        &pg,
        &url,
        &["-c", "\\copy copied FROM STDIN"],
        Some("1\tok\nnot-a-number\tbad\n"),
    )?;
    assert!(!ok && err.contains("invalid input syntax"), "{err}");
    assert_eq!(
        c.query_typed("SELECT count(*) FROM copied", &[]).await?[0].get::<_, i64>(0),
        50_000
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_pgbench_through_tcp_and_unix_socket() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 4",
        "",
    )?;
    let (u, p) = SCRAM_USER;
    // Unix socket, as `psql -h /dir -p port` finds it.
    let unix_url = format!(
        "host={} port={} user={u} password={p} dbname=app",
        s.dir.path().display(),
        s.port
    );
    let (ok, out, err) = psql(&pg, &unix_url, &["-Atc", "SELECT 40 + 2"], None)?;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "42");

    let (ok, _, err) = psql(&pg, &s.url(u, p, "app"), &["-c", "SELECT 1"], None)?;
    assert!(ok, "{err}");
    // pgbench: init through the pooler, then simple and extended protocol loads.
    let pgbench = |args: &[&str]| {
        std::process::Command::new(pg.bin("pgbench"))
            .args(args)
            .args(["-h", "127.0.0.1", "-p", &s.port.to_string(), "-U", u, "app"])
            .env("PGPASSWORD", p)
            .output()
    };
    let out = pgbench(&["-i", "-q", "-s", "1"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for mode in ["simple", "extended"] {
        let out = pgbench(&["-c", "10", "-j", "2", "-t", "50", "-M", mode])?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("number of transactions actually processed: 500/500"),
            "{text}"
        );
        // pgbench can exit 0 while printing errors.
        assert!(!text.to_lowercase().contains("error"), "{text}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_ini_and_userlist_started_with_daemon_flag() -> Result<()> {
    let pg = postgres()?;
    let dir = tempfile::tempdir()?;
    let port = sluice_embedded_pg::free_port()?;
    let d = dir.path().display();
    std::fs::write(dir.path().join("userlist.txt"), userlist())?;
    std::fs::write(dir.path().join("pools.ini"), "default_pool_size = 3\n")?;
    std::fs::write(
        dir.path().join("pgbouncer.ini"),
        format!(
            "[databases]\napp = host=127.0.0.1 port={pgport} dbname=app\n* = host=127.0.0.1 port={pgport}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir = {d}\nauth_type = md5\n\
             auth_file = {d}/userlist.txt\npool_mode = transaction\nlogfile = {d}/sluice.log\npidfile = {d}/sluice.pid\n\
             ignore_startup_parameters = extra_float_digits\nserver_round_robin = 1\n%include {d}/pools.ini\n",
            pgport = pg.port()
        ),
    )?;
    let ini = dir.path().join("pgbouncer.ini");
    let status = std::process::Command::new(sluice_bin()).arg("-d").arg(&ini).status()?;
    assert!(status.success(), "sluice -d returns once daemonized");
    // The daemon writes its pidfile and logs to logfile.
    let pidfile = dir.path().join("sluice.pid");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !pidfile.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill").arg(self.0.to_string()).status();
        }
    }
    let _kill = Kill(pid);
    let mut connected = None;
    while connected.is_none() && std::time::Instant::now() < deadline {
        connected = connect(&format!(
            "host=127.0.0.1 port={port} user=scram_user password=scram_pw dbname=app"
        ))
        .await
        .ok();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = connected.expect("daemon accepts connections");
    assert_eq!(
        c.query_typed("SELECT count(*) FROM items", &[]).await?[0].get::<_, i64>(0),
        100
    );
    // The fallback entry routes any database name.
    let c = connect(&format!(
        "host=127.0.0.1 port={port} user=scram_user password=scram_pw dbname=app2"
    ))
    .await?;
    assert_eq!(
        c.query_typed("SELECT current_database()::text", &[]).await?[0].get::<_, String>(0),
        "app2"
    );
    let log = std::fs::read_to_string(dir.path().join("sluice.log"))?;
    assert!(
        log.contains("server_round_robin") && log.contains("no effect yet"),
        "{log}"
    );
    // --check validates the same file and prints the %include'd value.
    let out = std::process::Command::new(sluice_bin())
        .arg("--check")
        .arg(&ini)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("default_pool_size = 3"), "{text}");
    // A second instance refuses to start over a live pidfile.
    let out = std::process::Command::new(sluice_bin()).arg("-d").arg(&ini).output()?;
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already running"));
    Ok(())
}

/// `-d` when the listen port is taken: the launcher exits non-zero (it waits until
/// the background process listens), the logfile says why, and no process or
/// pidfile stays behind. (PgBouncer: `cannot listen on ...`, exit 1.)
#[test]
fn daemon_that_cannot_listen_says_so_and_exits_non_zero() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let dir = tempfile::tempdir()?;
    let d = dir.path().display();
    std::fs::write(dir.path().join("userlist.txt"), userlist())?;
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\napp = host=127.0.0.1 port=1\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir = {d}\nauth_type = md5\nauth_file = {d}/userlist.txt\n\
             logfile = {d}/sluice.log\npidfile = {d}/sluice.pid\n"
        ),
    )?;
    let started = std::time::Instant::now();
    let out = std::process::Command::new(sluice_bin()).arg("-d").arg(&ini).output()?;
    assert!(!out.status.success(), "the launcher must fail: {out:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("logfile"), "{out:?}");
    let log = std::fs::read_to_string(dir.path().join("sluice.log"))?;
    assert!(log.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{log}");
    assert!(!dir.path().join("sluice.pid").exists(), "no pidfile stays behind");
    drop(taken);
    Ok(())
}

#[test]
fn unknown_config_keys_fail_with_file_and_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ini = dir.path().join("bad.ini");
    std::fs::write(&ini, "[pgbouncer]\nlisten_port = 1\nlisten_prot = 2\n")?;
    let out = std::process::Command::new(sluice_bin())
        .arg("--check")
        .arg(&ini)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bad.ini:3: unknown setting 'listen_prot'"), "{err}");
    Ok(())
}
