//! Authentication without plaintext passwords (docs/authentication.md): SCRAM
//! pass-through, auth_query, auth_type = hba and cert, against a real PostgreSQL.

mod support;

use anyhow::Result;
use support::*;

/// The SCRAM secret PostgreSQL stores for `role`.
fn stored_secret(pg: &sluice_embedded_pg::EmbeddedPg, role: &str) -> Result<String> {
    pg.psql(
        "postgres",
        &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"),
    )
}

/// Only PostgreSQL's SCRAM secret is stored: the client's proof logs Sluice in to
/// PostgreSQL, and the learned keys keep opening servers after the login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_pass_through_needs_no_plaintext_password() -> Result<()> {
    let pg = postgres()?;
    let (u, p) = SCRAM_USER;
    let secret = stored_secret(&pg, u)?;
    assert!(secret.starts_with("SCRAM-SHA-256$"), "{secret}");
    let settings = "auth_type = \"scram-sha-256\"\npool_mode = \"transaction\"";
    let s = Sluice::start_with_userlist(&pg, settings, "", &format!("\"{u}\" \"{secret}\"\n"))?;

    let c = connect(&s.url(u, p, "app")).await?;
    let who: String = c.query_one("SELECT current_user::text", &[]).await?.get(0);
    assert_eq!(who, u);

    // PostgreSQL closes the server; the next query needs a new server login, which the
    // keys learned at the client's login make without the client logging in again.
    pg.psql(
        "postgres",
        &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{u}'"),
    )?;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let n: i64 = c.query_one("SELECT count(*) FROM items", &[]).await?.get(0);
    assert_eq!(n, 100);

    // A wrong password proves nothing, and teaches nothing.
    let e = refused(connect(&s.url(u, "wrong", "app")).await, "wrong password");
    assert_eq!(
        db_error(&e),
        (
            "28P01".into(),
            format!("password authentication failed for user \"{u}\"")
        )
    );
    // RELOAD keeps what was learned: a second pool (app2) logs in after it.
    s.signal("HUP")?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let c2 = connect(&s.url(u, p, "app2")).await?;
    c2.batch_execute("SELECT 1").await?;
    Ok(())
}

/// A SCRAM secret for the right password but with another salt than the server's:
/// the client's login to Sluice works, the server login cannot, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_pass_through_with_another_salt_says_what_to_copy() -> Result<()> {
    let pg = postgres()?;
    let (u, p) = SCRAM_USER;
    pg.psql("postgres", &format!("CREATE ROLE twin LOGIN PASSWORD '{p}'"))?;
    let twin_secret = stored_secret(&pg, "twin")?;
    let settings = "auth_type = \"scram-sha-256\"\npool_mode = \"transaction\"";
    let s = Sluice::start_with_userlist(&pg, settings, "", &format!("\"{u}\" \"{twin_secret}\"\n"))?;
    let e = refused(
        async { connect(&s.url(u, p, "app")).await?.batch_execute("SELECT 1").await }.await,
        "a secret with another salt",
    );
    let (_, msg) = db_error(&e);
    assert!(msg.contains("copy rolpassword from pg_authid"), "{msg}");
    Ok(())
}

/// An auth_user with a SECURITY DEFINER lookup function in database `postgres` that
/// also counts its calls in `auth_calls` (PgBouncer's recommended setup, counted).
fn auth_lookup_setup(pg: &sluice_embedded_pg::EmbeddedPg) -> Result<()> {
    pg.psql("postgres", "CREATE ROLE auth_lookup LOGIN PASSWORD 'lookup_pw'")?;
    pg.psql(
        "postgres",
        "CREATE TABLE auth_calls (usename text);
         CREATE FUNCTION lookup(u text) RETURNS TABLE (usename name, passwd text)
         LANGUAGE plpgsql SECURITY DEFINER AS $$
         BEGIN
           INSERT INTO auth_calls VALUES (u);
           RETURN QUERY SELECT s.usename, s.passwd FROM pg_shadow s WHERE s.usename = u;
         END $$;
         REVOKE ALL ON FUNCTION lookup(text) FROM PUBLIC;
         GRANT EXECUTE ON FUNCTION lookup(text) TO auth_lookup;",
    )?;
    Ok(())
}

fn auth_calls(pg: &sluice_embedded_pg::EmbeddedPg, user: &str) -> Result<usize> {
    Ok(pg
        .psql(
            "postgres",
            &format!("SELECT count(*) FROM auth_calls WHERE usename = '{user}'"),
        )?
        .parse()?)
}

const AUTH_QUERY_SETTINGS: &str = "auth_type = \"md5\"\npool_mode = \"transaction\"\nauth_user = \"auth_lookup\"\nauth_query = \"SELECT * FROM lookup($1)\"\nauth_dbname = \"postgres\"";

/// Users not in auth_file log in with the secret PostgreSQL has for them, SCRAM
/// (then passed through) or md5; answers are cached, shared by concurrent logins,
/// and forgotten when a login with them fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_looks_up_users_and_caches_the_answers() -> Result<()> {
    let pg = postgres()?;
    auth_lookup_setup(&pg)?;
    let only_auth_user = "\"auth_lookup\" \"lookup_pw\"\n";
    let extra = format!("[databases.postgres]\nhost = \"127.0.0.1\"\nport = {}\n", pg.port());
    let s = Sluice::start_with_userlist(&pg, AUTH_QUERY_SETTINGS, &extra, only_auth_user)?;
    let (u, p) = SCRAM_USER;

    for _ in 0..5 {
        let c = connect(&s.url(u, p, "app")).await?;
        let who: String = c.query_one("SELECT current_user::text", &[]).await?.get(0);
        assert_eq!(who, u);
    }
    assert_eq!(auth_calls(&pg, u)?, 1, "five logins, one lookup");
    let (m, mp) = MD5_USER;
    connect(&s.url(m, mp, "app")).await?.batch_execute("SELECT 1").await?;

    // Unknown users fail like a wrong password.
    let e = refused(connect(&s.url("ghost", "x", "app")).await, "unknown user");
    assert_eq!(
        db_error(&e),
        (
            "28P01".into(),
            "password authentication failed for user \"ghost\"".into()
        )
    );

    // A failed login forgets the answer: the next login asks again.
    refused(connect(&s.url(u, "wrong", "app")).await, "wrong password");
    connect(&s.url(u, p, "app")).await?.batch_execute("SELECT 1").await?;
    assert_eq!(auth_calls(&pg, u)?, 2);

    // A changed password: the cached secret fails once, then the new one is used for
    // the client and for new server logins alike.
    pg.psql("postgres", &format!("ALTER ROLE {u} PASSWORD 'changed_pw'"))?;
    pg.psql(
        "postgres",
        &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{u}'"),
    )?;
    refused(connect(&s.url(u, "changed_pw", "app")).await, "the stale secret");
    let c = connect(&s.url(u, "changed_pw", "app")).await?;
    let n: i64 = c.query_one("SELECT count(*) FROM items", &[]).await?.get(0);
    assert_eq!(n, 100);

    // A storm of logins for a user nobody has looked up yet: one query.
    pg.psql("postgres", "CREATE ROLE storm_user LOGIN PASSWORD 'storm_pw'")?;
    let url = s.url("storm_user", "storm_pw", "app");
    let logins: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { connect(&url).await.map(|_| ()) })
        })
        .collect();
    for l in logins {
        l.await??;
    }
    assert_eq!(auth_calls(&pg, "storm_user")?, 1, "20 concurrent logins, one lookup");
    drop(s);

    // auth_query_cache_ttl = 0: PgBouncer's behaviour, a lookup per login.
    let settings = format!("{AUTH_QUERY_SETTINGS}\nauth_query_cache_ttl = 0");
    let s = Sluice::start_with_userlist(&pg, &settings, &extra, only_auth_user)?;
    for _ in 0..3 {
        connect(&s.url(m, mp, "app")).await?;
    }
    assert_eq!(auth_calls(&pg, m)?, 1 + 3);
    Ok(())
}

/// PgBouncer's default query reads pg_authid, which only superusers may: an
/// auth_user without the right gets PostgreSQL's reason, and so does the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_auth_query_tells_the_client_why() -> Result<()> {
    let pg = postgres()?;
    auth_lookup_setup(&pg)?;
    let settings = "auth_type = \"md5\"\nauth_user = \"auth_lookup\"";
    // A database entry with its own auth_query (the SECURITY DEFINER function).
    let extra = format!(
        "[databases.postgres]\nhost = \"127.0.0.1\"\nport = {port}\n\
         [databases.viafunction]\nhost = \"127.0.0.1\"\nport = {port}\ndbname = \"app\"\n\
         auth_dbname = \"postgres\"\nauth_query = \"SELECT * FROM lookup($1)\"\n",
        port = pg.port()
    );
    let s = Sluice::start_with_userlist(&pg, settings, &extra, "\"auth_lookup\" \"lookup_pw\"\n")?;
    let (u, p) = SCRAM_USER;
    let e = refused(connect(&s.url(u, p, "app")).await, "auth_query without rights");
    let (code, msg) = db_error(&e);
    assert_eq!(code, "28000");
    assert!(
        msg.contains("auth_query failed") && msg.contains("permission denied for table pg_authid"),
        "{msg}"
    );
    connect(&s.url(u, p, "viafunction"))
        .await?
        .batch_execute("SELECT 1")
        .await?;
    assert_eq!(auth_calls(&pg, u)?, 1, "the entry's own auth_query ran");
    // Other clients are unaffected: a user in auth_file needs no lookup.
    let (t, tp) = TRUST_USER;
    std::fs::write(
        s.dir.path().join("userlist.txt"),
        format!("\"auth_lookup\" \"lookup_pw\"\n\"{t}\" \"{tp}\"\n"),
    )?;
    s.signal("HUP")?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    connect(&s.url(t, tp, "app")).await?.batch_execute("SELECT 1").await?;
    Ok(())
}

const HBA: &str = "\
# type    database  user        address        method
local     all       all                        trust
hostssl   app       scram_user  127.0.0.1/32   cert
hostssl   app2      md5_user    127.0.0.1/32   cert
host      app       md5_user    127.0.0.1/32   md5
host      app2      all         127.0.0.1/32   reject
hostnossl all       plain_user  127.0.0.1/32   password
host      all       scram_user  127.0.0.1/32   scram-sha-256
";

/// auth_type = hba with a client_tls_sslmode; the certificates in `certs`.
fn hba_settings(certs: &std::path::Path, hba: &std::path::Path, tls_mode: &str) -> String {
    format!(
        "auth_type = \"hba\"\nauth_hba_file = \"{}\"\npool_mode = \"transaction\"\nclient_tls_sslmode = \"{tls_mode}\"\nclient_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"\nclient_tls_ca_file = \"{}\"",
        hba.display(),
        certs.join("server.pem").display(),
        certs.join("server.key").display(),
        certs.join("ca.pem").display()
    )
}

/// The first matching line of auth_hba_file decides, by connection type (Unix socket,
/// TLS or not), database, user and address; refusals use PostgreSQL's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hba_chooses_the_method_per_connection() -> Result<()> {
    let pg = postgres()?;
    let certs = tempfile::tempdir()?;
    certificates(certs.path(), "Sluice test CA")?;
    let hba = certs.path().join("hba.conf");
    std::fs::write(&hba, HBA)?;
    let s = Sluice::start(&pg, &hba_settings(certs.path(), &hba, "prefer"), "")?;
    let tls = |url: String| format!("{url} sslmode=require");

    // hostnossl ... password: a plaintext client sends its password in clear.
    let (u, p) = PLAIN_USER;
    connect(&s.url(u, p, "app")).await?.batch_execute("SELECT 1").await?;
    // Over TLS no line matches plain_user.
    let (ok, _, err) = psql(&pg, &tls(s.url(u, p, "app")), &["-c", "SELECT 1"], None)?;
    assert!(
        !ok && err.contains(&format!(
            "no pg_hba.conf entry for host \"127.0.0.1\", user \"{u}\", database \"app\", SSL encryption"
        )),
        "{err}"
    );
    // md5 for md5_user on app; reject on app2, PostgreSQL's text.
    let (m, mp) = MD5_USER;
    connect(&s.url(m, mp, "app")).await?.batch_execute("SELECT 1").await?;
    let e = refused(connect(&s.url(m, mp, "app2")).await, "reject");
    assert_eq!(
        db_error(&e),
        (
            "28000".into(),
            format!(
                "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"{m}\", database \"app2\", no encryption"
            )
        )
    );
    // hostssl ... cert without a client certificate.
    let (su, sp) = SCRAM_USER;
    let (ok, _, err) = psql(&pg, &tls(s.url(su, sp, "app")), &["-c", "SELECT 1"], None)?;
    assert!(!ok && err.contains("TLS client certificate required"), "{err}");
    // Plaintext, scram_user falls through to its scram-sha-256 line.
    let e = refused(connect(&s.url(su, "wrong", "app")).await, "wrong SCRAM password");
    assert_eq!(db_error(&e).0, "28P01");
    connect(&s.url(su, sp, "app")).await?.batch_execute("SELECT 1").await?;
    // local ... trust: the Unix socket needs no password.
    let (t, _) = TRUST_USER;
    let local = format!("host={} port={} user={t} dbname=app", s.dir.path().display(), s.port);
    let (ok, out, err) = psql(&pg, &local, &["-Atc", "SELECT current_user"], None)?;
    assert!(ok && out.trim() == t, "{err}");

    // RELOAD re-reads the file: app2 opens for md5_user.
    std::fs::write(
        &hba,
        HBA.replace(
            "app2      all         127.0.0.1/32   reject",
            "app2      all         127.0.0.1/32   md5",
        ),
    )?;
    s.signal("HUP")?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    connect(&s.url(m, mp, "app2")).await?.batch_execute("SELECT 1").await?;
    Ok(())
}

/// cert: a TLS client certificate signed by client_tls_ca_file whose common name is
/// the user name is the whole proof; another user with that certificate is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_authentication_takes_the_user_from_the_certificate() -> Result<()> {
    let pg = postgres()?;
    let certs = tempfile::tempdir()?;
    certificates(certs.path(), "Sluice test CA")?;
    let hba = certs.path().join("hba.conf");
    std::fs::write(&hba, HBA)?;
    let s = Sluice::start(&pg, &hba_settings(certs.path(), &hba, "verify-ca"), "")?;
    let with_cert = |user: &str, password: &str, db: &str| {
        verify_full(&s.url(user, password, db), certs.path(), Some(certs.path()))
    };
    // The certificate says scram_user: no password needed (a wrong one is not asked).
    let (su, _) = SCRAM_USER;
    let (ok, out, err) = psql(
        &pg,
        &with_cert(su, "not-asked", "app"),
        &["-Atc", "SELECT current_user"],
        None,
    )?;
    assert!(ok && out.trim() == su, "{err}\n{}", s.log());
    // md5_user showing scram_user's certificate.
    let (m, mp) = MD5_USER;
    let (ok, _, err) = psql(&pg, &with_cert(m, mp, "app2"), &["-c", "SELECT 1"], None)?;
    assert!(
        !ok && err.contains(&format!("certificate authentication failed for user \"{m}\"")),
        "{err}"
    );
    // The same user on a md5 line still needs its password, certificate or not.
    let (ok, _, err) = psql(&pg, &with_cert(m, "wrong", "app"), &["-c", "SELECT 1"], None)?;
    assert!(!ok && err.contains("password authentication failed"), "{err}");
    let (ok, _, err) = psql(&pg, &with_cert(m, mp, "app"), &["-Atc", "SELECT 1"], None)?;
    assert!(ok, "{err}");
    Ok(())
}

/// A line Sluice cannot honour stops the start (and a reload), naming the line.
#[test]
fn an_hba_line_sluice_cannot_honour_is_a_config_error() -> Result<()> {
    let pg = postgres()?;
    let certs = tempfile::tempdir()?;
    certificates(certs.path(), "Sluice test CA")?;
    let hba = certs.path().join("hba.conf");
    std::fs::write(
        &hba,
        "host all all 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n",
    )?;
    let Err(e) = Sluice::start(&pg, &hba_settings(certs.path(), &hba, "prefer"), "") else {
        anyhow::bail!("Sluice started with an option it cannot honour");
    };
    let text = format!("{e:#}");
    assert!(text.contains("hba.conf: line 2: options after the method"), "{text}");
    Ok(())
}
