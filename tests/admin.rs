//! The admin console (`psql ... pgbouncer`), Prometheus metrics and health checks,
//! against a real PostgreSQL with real clients (tokio-postgres, psql, psycopg).

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use support::*;
use tokio_postgres::SimpleQueryMessage;

/// scram_user runs everything; md5_user may only look.
const ADMIN: (&str, &str) = SCRAM_USER;
const STATS: (&str, &str) = MD5_USER;

fn console_settings(extra: &str) -> String {
    format!(
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 3\nadmin_users = \"{}\"\nstats_users = \"{}\"\nstats_period = 1\n{extra}",
        ADMIN.0, STATS.0
    )
}

/// A console result: column names, and rows as name → value (None = NULL).
struct Table {
    columns: Vec<String>,
    rows: Vec<HashMap<String, Option<String>>>,
}

impl Table {
    fn rows_where(&self, column: &str, value: &str) -> Vec<&HashMap<String, Option<String>>> {
        self.rows
            .iter()
            .filter(|r| r.get(column).and_then(|v| v.as_deref()) == Some(value))
            .collect()
    }
}

fn int(row: &HashMap<String, Option<String>>, column: &str) -> i64 {
    row.get(column)
        .and_then(|v| v.as_deref())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("column {column} is not a number: {:?}", row.get(column)))
}

async fn show(c: &tokio_postgres::Client, what: &str) -> Result<Table> {
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for m in c.simple_query(&format!("SHOW {what};")).await? {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                columns = cols.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(r) => {
                columns = r.columns().iter().map(|c| c.name().to_owned()).collect();
                rows.push(
                    columns
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (n.clone(), r.get(i).map(str::to_owned)))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    Ok(Table { columns, rows })
}

fn names(list: &str) -> Vec<String> {
    list.split(',').map(|s| s.trim().to_owned()).collect()
}

const POOLS: &str = "database, user, cl_active, cl_waiting, cl_active_cancel_req, cl_waiting_cancel_req, sv_active, sv_active_cancel, sv_being_canceled, sv_idle, sv_used, sv_tested, sv_login, maxwait, maxwait_us, pool_mode, load_balance_hosts";
const STATS_COLUMNS: &str = "database, total_server_assignment_count, total_xact_count, total_query_count, total_received, total_sent, total_xact_time, total_query_time, total_wait_time, total_client_parse_count, total_server_parse_count, total_bind_count, avg_server_assignment_count, avg_xact_count, avg_query_count, avg_recv, avg_sent, avg_xact_time, avg_query_time, avg_wait_time, avg_client_parse_count, avg_server_parse_count, avg_bind_count";
const SOCKET_COLUMNS: &str = "type, user, database, replication, state, addr, port, local_addr, local_port, connect_time, request_time, wait, wait_us, close_needed, ptr, link, remote_pid, tls, application_name, prepared_statements, id";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_show_has_pgbouncers_columns_and_true_figures_under_load() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, &console_settings(""), "")?;
    let (u, p) = PLAIN_USER;
    // Load: 4 clients running short transactions, one holding a transaction open.
    let holder = connect(&format!("{} application_name=holder", s.url(u, p, "app"))).await?;
    holder.batch_execute("BEGIN; SELECT count(*) FROM items").await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (url, stop) = (s.url(u, p, "app"), stop.clone());
        load.push(tokio::spawn(async move {
            let c = connect(&url).await?;
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.batch_execute("SELECT v FROM items WHERE id = 7").await?;
                n += 1;
            }
            Ok::<_, anyhow::Error>(n)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let admin = connect(&s.url(ADMIN.0, ADMIN.1, "pgbouncer")).await?;

    let pools = show(&admin, "POOLS").await?;
    assert_eq!(pools.columns, names(POOLS));
    let app = pools.rows_where("database", "app");
    assert_eq!(app.len(), 1, "one pool for (app, plain_user)");
    let app = app[0];
    assert_eq!(app["user"].as_deref(), Some(u));
    assert_eq!(
        int(app, "cl_active") + int(app, "cl_waiting"),
        5,
        "five clients are logged in"
    );
    let servers = int(app, "sv_active") + int(app, "sv_idle") + int(app, "sv_used") + int(app, "sv_login");
    assert!((1..=3).contains(&servers), "pool size 3, got {servers}");
    assert!(int(app, "sv_active") >= 1, "the holder's server is active");
    assert_eq!(app["pool_mode"].as_deref(), Some("transaction"));

    let stats = show(&admin, "STATS").await?;
    assert_eq!(stats.columns, names(STATS_COLUMNS));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut done = 0;
    for l in load {
        done += l.await??;
    }
    let stats = show(&admin, "STATS").await?;
    let app_stats = stats.rows_where("database", "app")[0];
    let xacts = int(app_stats, "total_xact_count");
    assert!(xacts >= done as i64, "{xacts} transactions counted, {done} done");
    assert!(xacts <= done as i64 + 10, "{xacts} transactions counted, {done} done");
    assert!(int(app_stats, "total_query_count") >= xacts);
    assert!(int(app_stats, "total_received") > 0 && int(app_stats, "total_sent") > 0);
    let avg_query_us = int(app_stats, "total_query_time") / int(app_stats, "total_query_count");
    assert!(
        (1..1_000_000).contains(&avg_query_us),
        "a point query takes microseconds, not {avg_query_us}"
    );
    // stats_period = 1: averages exist after a period.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let averages = show(&admin, "STATS_AVERAGES").await?;
    assert_eq!(
        averages.columns[..4],
        names("database, server_assignment_count, xact_count, query_count")[..]
    );
    let totals = show(&admin, "STATS_TOTALS").await?;
    assert_eq!(int(totals.rows_where("database", "app")[0], "xact_count"), xacts);
    let t = show(&admin, "TOTALS").await?;
    assert_eq!(t.columns, names("name, value"));
    assert!(t.rows_where("name", "total_xact_count").len() == 1);

    let clients = show(&admin, "CLIENTS").await?;
    assert_eq!(clients.columns, names(SOCKET_COLUMNS));
    let holder_row = clients.rows_where("application_name", "holder");
    assert_eq!(holder_row.len(), 1);
    assert_eq!(
        holder_row[0]["state"].as_deref(),
        Some("active"),
        "linked mid-transaction"
    );
    assert_eq!(holder_row[0]["addr"].as_deref(), Some("127.0.0.1"));
    let servers = show(&admin, "SERVERS").await?;
    assert_eq!(servers.columns, names(SOCKET_COLUMNS));
    let linked: Vec<_> = servers.rows_where("link", holder_row[0]["ptr"].as_deref().unwrap_or("?"));
    assert_eq!(linked.len(), 1, "the holder's server links back to it");
    assert_eq!(linked[0]["application_name"].as_deref(), Some("holder"));
    let pid = int(linked[0], "remote_pid");
    let in_pg = pg.psql(
        "postgres",
        &format!("SELECT application_name FROM pg_stat_activity WHERE pid = {pid}"),
    )?;
    assert_eq!(in_pg, "holder", "remote_pid is the PostgreSQL backend");

    let databases = show(&admin, "DATABASES").await?;
    assert_eq!(
        databases.columns,
        names("name, host, port, database, force_user, pool_size, min_pool_size, reserve_pool_size, server_lifetime, pool_mode, load_balance_hosts, max_connections, current_connections, max_client_connections, current_client_connections, paused, disabled")
    );
    let db = databases.rows_where("name", "app")[0];
    assert_eq!(int(db, "port"), i64::from(pg.port()));
    assert_eq!(int(db, "current_client_connections"), 1, "only the holder is left");
    assert_eq!(databases.rows_where("name", "pgbouncer").len(), 1);
    let users = show(&admin, "USERS").await?;
    assert_eq!(
        users.columns,
        names("name, pool_size, reserve_pool_size, pool_mode, max_user_connections, current_connections, max_user_client_connections, current_client_connections")
    );
    assert_eq!(users.rows_where("name", u).len(), 1);
    let lists = show(&admin, "LISTS").await?;
    assert_eq!(lists.columns, names("list, items"));
    assert_eq!(int(lists.rows_where("list", "pools")[0], "items"), 1);
    let config = show(&admin, "CONFIG").await?;
    assert_eq!(config.columns, names("key, value, default, changeable"));
    let size = config.rows_where("key", "default_pool_size")[0];
    assert_eq!(
        (size["value"].as_deref(), size["default"].as_deref()),
        (Some("3"), Some("20"))
    );
    assert_eq!(
        config.rows_where("key", "listen_port")[0]["changeable"].as_deref(),
        Some("no")
    );
    let version = show(&admin, "VERSION").await?;
    assert!(version.rows[0]["version"]
        .as_deref()
        .unwrap_or("")
        .starts_with("PgBouncer 1.25.0"));
    let state = show(&admin, "STATE").await?;
    assert_eq!(state.rows_where("key", "active")[0]["value"].as_deref(), Some("yes"));
    for (what, columns) in [
        ("MEM", "name, size, used, free, memtotal"),
        ("DNS_HOSTS", "hostname, ttl, addrs"),
        ("DNS_ZONES", "zonename, serial, count"),
        ("PEERS", "peer_id, host, port, pool_size"),
        (
            "PEER_POOLS",
            "peer_id, cl_active_cancel_req, cl_waiting_cancel_req, sv_active_cancel, sv_login",
        ),
    ] {
        let t = show(&admin, what).await?;
        if !t.rows.is_empty() || what == "MEM" {
            assert_eq!(t.columns, names(columns), "SHOW {what}");
        }
    }
    for what in ["SOCKETS", "ACTIVE_SOCKETS"] {
        let t = show(&admin, what).await?;
        assert_eq!(t.columns.len(), 28, "SHOW {what}");
    }
    // HELP is a NOTICE; case and the semicolon do not matter.
    admin.simple_query("show help").await?;
    admin.simple_query("Show Pools").await?;

    // psql reads the same tables.
    let (ok, out, err) = psql(
        &pg,
        &s.url(ADMIN.0, ADMIN.1, "pgbouncer"),
        &["-A", "-F", "|", "-c", "SHOW POOLS;"],
        None,
    )?;
    assert!(ok, "{err}");
    assert!(out.starts_with(&POOLS.replace(", ", "|")), "{out}");
    holder.batch_execute("COMMIT").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_and_stats_users_get_in_and_stats_users_only_look() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, &console_settings("max_client_conn = 1"), "")?;
    // max_client_conn does not lock admins out. (The harness's port probe counts as a
    // client until Sluice sees it close: wait for that, as a reconnecting app would.)
    let deadline = Instant::now() + Duration::from_secs(3);
    let app_client = loop {
        match connect(&s.url(PLAIN_USER.0, PLAIN_USER.1, "app")).await {
            Err(e) if db_error(&e).1.contains("max_client_conn") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => break other?,
        }
    };
    let admin = connect(&s.url(ADMIN.0, ADMIN.1, "pgbouncer")).await?;

    let e = refused(
        connect(&s.url(PLAIN_USER.0, PLAIN_USER.1, "pgbouncer")).await,
        "not listed",
    );
    assert_eq!(db_error(&e), ("08P01".into(), "not allowed".into()));
    let e = refused(connect(&s.url(ADMIN.0, "wrong", "pgbouncer")).await, "wrong password");
    assert_eq!(db_error(&e).0, "28P01");

    let stats = connect(&s.url(STATS.0, STATS.1, "pgbouncer")).await?;
    assert!(!show(&stats, "POOLS").await?.rows.is_empty());
    for cmd in [
        "PAUSE",
        "RELOAD",
        "KILL_CLIENT 1",
        "SET default_pool_size = 5",
        "SHUTDOWN",
    ] {
        let e = refused(stats.simple_query(cmd).await, cmd);
        assert_eq!(db_error(&e), ("08P01".into(), "admin access needed".into()), "{cmd}");
    }
    let e = refused(admin.simple_query("SELECT 1").await, "not a command");
    assert_eq!(db_error(&e).1, "invalid command 'SELECT 1', use SHOW HELP;");
    let e = refused(admin.simple_query("SHOW NOTHING").await, "unknown show");
    assert_eq!(db_error(&e).1, "invalid command 'SHOW NOTHING', use SHOW HELP;");
    // The extended protocol is refused with a clear error, and the session goes on.
    let e = refused(admin.query("SHOW POOLS", &[]).await, "extended protocol");
    assert!(db_error(&e).1.contains("simple query protocol"), "{e}");
    assert!(!show(&admin, "LISTS").await?.rows.is_empty());
    app_client.batch_execute("SELECT 1").await?;
    // The console is on the Unix socket too.
    let (ok, out, err) = psql(
        &pg,
        &format!(
            "host={} port={} user={} password={} dbname=pgbouncer",
            s.dir.path().display(),
            s.port,
            ADMIN.0,
            ADMIN.1
        ),
        &["-A", "-t", "-c", "SHOW VERSION"],
        None,
    )?;
    assert!(ok && out.starts_with("PgBouncer 1.25.0"), "{out}{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_transactions_and_holds_new_ones_until_resume() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, &console_settings(""), "")?;
    let (u, p) = PLAIN_USER;
    let busy = connect(&s.url(u, p, "app")).await?;
    busy.batch_execute("BEGIN; INSERT INTO items VALUES (1001, 'paused')")
        .await?;
    let admin = connect(&s.url(ADMIN.0, ADMIN.1, "pgbouncer")).await?;

    let pause = tokio::spawn(async move {
        let started = Instant::now();
        admin
            .simple_query("PAUSE app")
            .await
            .map(|_| (started.elapsed(), admin))
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pause.is_finished(), "PAUSE waits for the open transaction");
    // A new transaction waits while paused.
    let waiter = connect(&s.url(u, p, "app")).await?;
    let blocked = tokio::spawn(async move { waiter.query_one("SELECT count(*) FROM items", &[]).await });
    busy.batch_execute("COMMIT").await?;
    let (took, admin) = pause.await??;
    assert!(took >= Duration::from_millis(400), "PAUSE returned after the commit");
    assert_eq!(backends(&pg, u, "app")?, 0, "paused: no server connections left");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!blocked.is_finished(), "queries wait while paused");
    let pools = show(&admin, "POOLS").await?;
    assert_eq!(int(pools.rows_where("database", "app")[0], "cl_waiting"), 1);
    assert_eq!(
        int(show(&admin, "DATABASES").await?.rows_where("name", "app")[0], "paused"),
        1
    );

    admin.simple_query("RESUME app").await?;
    let row = tokio::time::timeout(Duration::from_secs(5), blocked).await???;
    assert_eq!(row.get::<_, i64>(0), 101);
    let e = refused(admin.simple_query("RESUME app").await, "not paused");
    assert_eq!(db_error(&e).1, "database app is not paused");

    // DISABLE refuses new clients; ENABLE lets them in again.
    admin.simple_query("DISABLE app").await?;
    let e = refused(connect(&s.url(u, p, "app")).await, "disabled");
    assert_eq!(db_error(&e).1, "database does not allow connections: app");
    admin.simple_query("ENABLE app").await?;
    connect(&s.url(u, p, "app")).await?.batch_execute("SELECT 1").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_set_reconnect_and_kill_client_from_the_console() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, &console_settings(""), "")?;
    let (u, p) = PLAIN_USER;
    let admin = connect(&s.url(ADMIN.0, ADMIN.1, "pgbouncer")).await?;

    // RELOAD applies a changed pool size.
    let config = s.dir.path().join("pooler.toml");
    let good = std::fs::read_to_string(&config)?;
    std::fs::write(&config, good.replace("default_pool_size = 3", "default_pool_size = 7"))?;
    admin.simple_query("RELOAD").await?;
    let size = show(&admin, "CONFIG").await?;
    assert_eq!(
        size.rows_where("key", "default_pool_size")[0]["value"].as_deref(),
        Some("7")
    );
    // ... and the pool really grows: 7 concurrent sleepers get 7 servers.
    let mut sleepers = Vec::new();
    for _ in 0..7 {
        let c = connect(&s.url(u, p, "app")).await?;
        sleepers.push(tokio::spawn(async move { c.batch_execute("SELECT pg_sleep(2)").await }));
    }
    let deadline = Instant::now() + Duration::from_millis(1800);
    while backends(&pg, u, "app")? < 7 {
        assert!(Instant::now() < deadline, "RELOAD applied the new pool size");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(backends(&pg, u, "app")?, 7, "and no more");
    for t in sleepers {
        t.await??;
    }
    // A broken file: F0000, and the old configuration stays.
    std::fs::write(
        &config,
        good.replace("default_pool_size = 3", "default_pool_size = \"x\""),
    )?;
    let e = refused(admin.simple_query("RELOAD").await, "broken config");
    assert_eq!(
        db_error(&e),
        ("F0000".into(), "RELOAD failed, see logs for additional details".into())
    );
    assert!(s.log().contains("pooler.toml:"), "the log names file and line");
    std::fs::write(&config, &good)?;

    // SET changes a changeable setting now, and refuses the others.
    admin.simple_query("SET default_pool_size = 2").await?;
    let c = show(&admin, "CONFIG").await?;
    assert_eq!(
        c.rows_where("key", "default_pool_size")[0]["value"].as_deref(),
        Some("2")
    );
    let e = refused(admin.simple_query("SET listen_port = 1").await, "restart only");
    assert!(db_error(&e).1.contains("cannot be changed while running"));
    let e = refused(admin.simple_query("SET no_such_thing = 1").await, "unknown");
    assert!(db_error(&e).1.contains("unknown configuration parameter"));

    // KILL_CLIENT closes exactly that client, mid-transaction, and its server with it.
    let victim = connect(&format!("{} application_name=victim", s.url(u, p, "app"))).await?;
    let bystander = connect(&format!("{} application_name=bystander", s.url(u, p, "app"))).await?;
    victim
        .batch_execute("BEGIN; INSERT INTO items VALUES (2001, 'never')")
        .await?;
    let clients = show(&admin, "CLIENTS").await?;
    let id = clients.rows_where("application_name", "victim")[0]["id"]
        .clone()
        .context("id")?;
    admin.simple_query(&format!("KILL_CLIENT {id}")).await?;
    let e = refused(victim.batch_execute("COMMIT").await, "killed");
    assert!(
        victim.is_closed() || db_error(&e).1.contains("admin forced disconnect"),
        "{e}"
    );
    bystander.batch_execute("SELECT 1").await?;
    assert_eq!(
        pg.psql("app", "SELECT count(*) FROM items WHERE id = 2001")?,
        "0",
        "rolled back"
    );
    let e = refused(admin.simple_query(&format!("KILL_CLIENT {id}")).await, "gone");
    assert_eq!(db_error(&e).1, "client not found");
    let clients = show(&admin, "CLIENTS").await?;
    assert!(clients.rows_where("application_name", "victim").is_empty());
    assert_eq!(clients.rows_where("application_name", "bystander").len(), 1);

    // RECONNECT: servers are replaced after release; WAIT_CLOSE returns once done.
    let before: Vec<i64> = show(&admin, "SERVERS")
        .await?
        .rows
        .iter()
        .map(|r| int(r, "remote_pid"))
        .collect();
    assert!(!before.is_empty());
    admin.simple_query("RECONNECT app").await?;
    admin.simple_query("WAIT_CLOSE app").await?;
    bystander.batch_execute("SELECT 1").await?;
    let after: Vec<i64> = show(&admin, "SERVERS")
        .await?
        .rows
        .iter()
        .map(|r| int(r, "remote_pid"))
        .collect();
    assert!(after.iter().all(|p| !before.contains(p)), "{before:?} -> {after:?}");

    // KILL app: everyone out, paused until RESUME.
    admin.simple_query("KILL app").await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(bystander.batch_execute("SELECT 1").await.is_err());
    admin.simple_query("RESUME app").await?;
    connect(&s.url(u, p, "app")).await?.batch_execute("SELECT 1").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_agree_with_show_pools_and_stats() -> Result<()> {
    let pg = postgres()?;
    let metrics_port = sluice_embedded_pg::free_port()?;
    let addr = format!("127.0.0.1:{metrics_port}");
    let s = Sluice::start(&pg, &console_settings(&format!("metrics_addr = \"{addr}\"")), "")?;
    let (u, p) = PLAIN_USER;
    // A steady state: two open transactions, one idle client.
    let a = connect(&s.url(u, p, "app")).await?;
    let b = connect(&s.url(u, p, "app")).await?;
    let idle = connect(&s.url(u, p, "app")).await?;
    for c in [&a, &b, &idle] {
        c.batch_execute("SELECT 1").await?;
    }
    a.batch_execute("BEGIN; SELECT 1").await?;
    b.batch_execute("BEGIN; SELECT 1").await?;
    let admin = connect(&s.url(ADMIN.0, ADMIN.1, "pgbouncer")).await?;

    let pools = show(&admin, "POOLS").await?;
    let stats = show(&admin, "STATS").await?;
    let (status, body) = http_get(&addr, "/metrics").await?;
    assert_eq!(status, 200);
    let m = parse_exposition(&body);
    let pool = pools.rows_where("database", "app")[0];
    let labels = format!("{{database=\"app\",user=\"{u}\"}}");
    for (column, metric) in [
        ("cl_active", "pgbouncer_pools_client_active_connections"),
        ("cl_waiting", "pgbouncer_pools_client_waiting_connections"),
        ("sv_active", "pgbouncer_pools_server_active_connections"),
        ("sv_idle", "pgbouncer_pools_server_idle_connections"),
        ("sv_login", "pgbouncer_pools_server_login_connections"),
    ] {
        assert_eq!(
            m.get(&format!("{metric}{labels}")).copied(),
            Some(int(pool, column) as f64),
            "{metric} vs SHOW POOLS {column}"
        );
    }
    assert_eq!(int(pool, "sv_active"), 2);
    assert_eq!(int(pool, "cl_active"), 3);
    let st = stats.rows_where("database", "app")[0];
    assert_eq!(
        m.get("pgbouncer_stats_totals_sql_transactions_pooled_total{database=\"app\"}")
            .copied(),
        Some(int(st, "total_xact_count") as f64)
    );
    assert_eq!(
        m.get("pgbouncer_stats_sql_transactions_pooled_total{database=\"app\"}")
            .copied(),
        Some(int(st, "total_xact_count") as f64),
        "the older exporter names too"
    );
    assert_eq!(m.get("pgbouncer_up").copied(), Some(1.0));
    assert_eq!(m.get("pgbouncer_config_max_client_connections").copied(), Some(100.0));
    assert_eq!(m.get("pgbouncer_pools").copied(), Some(1.0));
    assert!(m
        .keys()
        .any(|k| k.starts_with("pgbouncer_version_info{version=\"PgBouncer 1.25.0")));
    assert!(m
        .keys()
        .any(|k| k.starts_with("pgbouncer_databases_current_connections{")));
    assert_eq!(m.get(&format!("sluice_queue_length{labels}")).copied(), Some(0.0));
    // Overload protection: the two open blocks are in the automatic slow lane (a
    // transaction nobody has seen end), whose cap is 2/3 of the pool of 3: full.
    let lanes = show(&admin, "LANES").await?;
    assert_eq!(
        lanes.columns,
        names("database, user, lane, sv_held, sv_in_transaction, cap, reserved, priority, cl_waiting, maxwait, maxwait_us, query_wait_timeout, rule")
    );
    let slow = lanes.rows_where("lane", "slow")[0];
    assert_eq!(
        (int(slow, "sv_held"), int(slow, "sv_in_transaction"), int(slow, "cap")),
        (2, 2, 2)
    );
    let fast = lanes.rows_where("lane", "fast")[0];
    assert_eq!(fast.get("cap"), Some(&None), "the fast lane has no cap");
    let lane_labels = format!("{{database=\"app\",user=\"{u}\",lane=\"slow\"}}");
    assert_eq!(m.get(&format!("sluice_lane_servers{lane_labels}")).copied(), Some(2.0));
    assert_eq!(
        m.get(&format!("sluice_lane_servers_in_transaction{lane_labels}"))
            .copied(),
        Some(2.0)
    );
    assert_eq!(m.get(&format!("sluice_lane_cap{lane_labels}")).copied(), Some(2.0));
    assert!(
        m.keys()
            .any(|k| k.starts_with("sluice_lane_hold_seconds_count{") && k.contains("lane=\"fast\"")),
        "the autocommit SELECTs held fast-lane servers"
    );
    let fingerprints = show(&admin, "FINGERPRINTS").await?;
    assert!(
        fingerprints.rows_where("fingerprint", "select ?").len() == 1,
        "{:?}",
        fingerprints.rows
    );
    assert!(
        m.get(&format!("sluice_server_connects_total{labels}"))
            .copied()
            .unwrap_or(0.0)
            >= 2.0
    );
    // Histograms of waits, transactions and queries, by pool.
    assert!(body.contains("# TYPE sluice_query_seconds histogram"), "{body}");
    assert!(m
        .keys()
        .any(|k| k.starts_with("sluice_transaction_seconds_bucket{") && k.contains("database=\"app\"")));
    assert!(m.keys().any(|k| k.starts_with("sluice_client_wait_seconds_count{")));

    // The shipped Grafana dashboard uses only series this endpoint serves.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/grafana-dashboard.json"
    ))?;
    let mut used = std::collections::BTreeSet::new();
    for line in dashboard.lines().filter(|l| l.contains("\"expr\"")) {
        for (i, _) in line.match_indices(['p', 's']) {
            let rest = &line[i..];
            let starts_word = i == 0 || !line.as_bytes()[i - 1].is_ascii_alphanumeric();
            if starts_word && (rest.starts_with("pgbouncer_") || rest.starts_with("sluice_")) {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                used.insert(rest[..end].to_owned());
            }
        }
    }
    assert!(used.len() > 10, "{used:?}");
    for name in used {
        assert!(
            m.keys().any(|k| k.split('{').next() == Some(name.as_str())),
            "the dashboard uses {name}, which /metrics does not serve"
        );
    }

    assert_eq!(http_get(&addr, "/health").await?.0, 200);
    assert_eq!(http_get(&addr, "/ready").await?.0, 200);
    assert_eq!(http_get(&addr, "/nope").await?.0, 404);
    a.batch_execute("COMMIT").await?;
    b.batch_execute("COMMIT").await?;
    Ok(())
}

fn healthcheck(config: &std::path::Path) -> Result<bool> {
    Ok(std::process::Command::new(sluice_bin())
        .arg("healthcheck")
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?
        .success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_while_serving_and_1_when_not() -> Result<()> {
    let pg = postgres()?;
    // Without metrics_addr: the client port answers.
    let mut plain = Sluice::start(&pg, &console_settings(""), "")?;
    let config = plain.dir.path().join("pooler.toml");
    assert!(healthcheck(&config)?, "serving");
    plain.signal("QUIT")?;
    plain.wait_exit(Duration::from_secs(5))?;
    assert!(!healthcheck(&config)?, "stopped");

    // With metrics_addr: /ready, which fails as soon as a shutdown begins.
    let metrics_port = sluice_embedded_pg::free_port()?;
    let mut s = Sluice::start(
        &pg,
        &console_settings(&format!("metrics_addr = \"127.0.0.1:{metrics_port}\"")),
        "",
    )?;
    let config = s.dir.path().join("pooler.toml");
    assert!(healthcheck(&config)?);
    let (u, p) = PLAIN_USER;
    let client = connect(&s.url(u, p, "app")).await?;
    s.signal("TERM")?; // waits for the client to leave
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!healthcheck(&config)?, "not ready while shutting down");
    drop(client);
    s.wait_exit(Duration::from_secs(5))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_reads_the_console() -> Result<()> {
    let pg = postgres()?;
    let s = Sluice::start(&pg, &console_settings(""), "")?;
    let (u, p) = PLAIN_USER;
    let c = connect(&s.url(u, p, "app")).await?;
    c.batch_execute("SELECT 1").await?;
    let script = format!(
        r#"
import psycopg
with psycopg.connect("host=127.0.0.1 port={port} user={admin} password={pw} dbname=pgbouncer", autocommit=True) as conn:
    cur = conn.execute("SHOW POOLS")
    cols = [d.name for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    app = [r for r in rows if r["database"] == "app"][0]
    assert isinstance(app["cl_active"], int), type(app["cl_active"])
    print(",".join(cols))
    print(app["cl_active"], app["sv_idle"] + app["sv_active"])
    cur = conn.execute("SHOW STATS")
    print([r for r in cur.fetchall() if r[0] == "app"][0][2])
"#,
        port = s.port,
        admin = ADMIN.0,
        pw = ADMIN.1
    );
    let out = std::process::Command::new(python_with_psycopg()?)
        .arg("-c")
        .arg(&script)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], POOLS.replace(", ", ","));
    assert_eq!(lines[1], "1 1", "one client, one server");
    assert!(lines[2].parse::<i64>()? >= 1, "transactions counted: {}", lines[2]);
    Ok(())
}
