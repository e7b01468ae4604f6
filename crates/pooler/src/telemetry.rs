//! Prometheus metrics and health checks on one HTTP listener (`metrics_addr`).
//!
//! - `/metrics`: the names pgbouncer_exporter produces (so its Grafana dashboards
//!   work unchanged), computed at scrape time from the very result sets SHOW POOLS,
//!   SHOW STATS, SHOW DATABASES, SHOW LISTS and SHOW CONFIG return; then Sluice's
//!   own: wait/transaction/query histograms per pool (`metrics` +
//!   `metrics-exporter-prometheus`), queue length and oldest wait, counters of queue
//!   timeouts, server logins, login failures and cancels.
//! - `/health`: 200 while the process serves HTTP at all.
//! - `/ready`: 200 once the config is loaded and the listeners are up, 503 while
//!   shutting down. It does not require PostgreSQL to be up: a pooler whose database
//!   is down still answers clients with clear errors, and taking it out of service
//!   would only turn those into connection refusals. The body says which pools
//!   currently fail to log in.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::{info, warn};

use crate::admin::result::{Cell, ResultSet};
use crate::admin::show;
use crate::app::App;

static RECORDING: AtomicBool = AtomicBool::new(false);

/// True once a metrics recorder is installed: pools then keep histograms.
pub fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// Histogram buckets in seconds: sub-millisecond waits up to the minutes a stuck
/// report takes.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Installs the Prometheus recorder (once per process). Call before pools exist.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new().set_buckets(BUCKETS)?.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
    RECORDING.store(true, Ordering::Relaxed);
    Ok(handle)
}

/// Serves /metrics, /health and /ready on `addr` until the process exits.
pub async fn serve(app: Arc<App>, addr: &str, handle: PrometheusHandle) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on metrics_addr {addr}: {e}"))?;
    info!(addr, "metrics and health endpoints listening");
    let upkeep = handle.clone();
    tokio::spawn(async move {
        // Histogram samples are merged into their buckets here, not at each record.
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let app = Arc::clone(&app);
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let response = respond(&app, &handle, req.uri().path());
                    async move { Ok::<_, Infallible>(response) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
            });
        }
    });
    Ok(())
}

fn respond(app: &App, handle: &PrometheusHandle, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", render(app, handle)),
        "/health" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/ready" => {
            let (ready, body) = readiness(app);
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, "text/plain", body)
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /health or /ready\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

/// Ready when the listeners are up and no shutdown has begun.
pub fn readiness(app: &App) -> (bool, String) {
    if app.shutdown.borrow().stops_accepting() {
        return (false, "shutting down\n".into());
    }
    if !app.listening.load(Ordering::Relaxed) {
        return (false, "listeners not up yet\n".into());
    }
    let mut body = String::from("ready\n");
    for p in app.pools_of(None) {
        if let Some(e) = p.last_connect_error() {
            let _ = writeln!(body, "pool {}/{}: server login failing: {e}", p.db, p.user);
        }
    }
    (true, body)
}

/// The whole exposition text.
pub fn render(app: &App, handle: &PrometheusHandle) -> String {
    let mut out = Exposition::default();
    out.family("pgbouncer_up", "The pgbouncer scrape succeeded", "gauge");
    out.sample("pgbouncer_up", &[], 1.0);
    out.family("pgbouncer_version_info", "The pgbouncer version info", "gauge");
    out.sample("pgbouncer_version_info", &[("version", show::version_string())], 1.0);

    let config = show::config::config(app);
    for (key, name, help) in [
        (
            "max_client_conn",
            "pgbouncer_config_max_client_connections",
            "Config maximum number of client connections",
        ),
        (
            "max_user_connections",
            "pgbouncer_config_max_user_connections",
            "Config maximum number of server connections per user",
        ),
    ] {
        if let Some(v) = (0..config.rows.len())
            .find(|&i| config.get(i, "key") == Some(&Cell::from(key)))
            .and_then(|i| number(config.get(i, "value")?))
        {
            out.family(name, help, "gauge");
            out.sample(name, &[], v);
        }
    }

    lists(&mut out, &show::lists::lists(app));
    by_columns(
        &mut out,
        "pgbouncer_databases",
        &show::databases::databases(app),
        &["name", "host", "port", "database", "force_user", "pool_mode"],
        &[
            (
                "pool_size",
                "pool_size",
                1.0,
                "gauge",
                "Maximum number of server connections",
            ),
            (
                "reserve_pool_size",
                "reserve_pool",
                1.0,
                "gauge",
                "Maximum number of additional connections for this database",
            ),
            (
                "max_connections",
                "max_connections",
                1.0,
                "gauge",
                "Maximum number of allowed connections for this database",
            ),
            (
                "current_connections",
                "current_connections",
                1.0,
                "gauge",
                "Current number of connections for this database",
            ),
            (
                "paused",
                "paused",
                1.0,
                "gauge",
                "1 if this database is currently paused, else 0",
            ),
            (
                "disabled",
                "disabled",
                1.0,
                "gauge",
                "1 if this database is currently disabled, else 0",
            ),
        ],
    );
    let pools = show::pools(app);
    by_columns(
        &mut out,
        "pgbouncer_pools",
        &pools,
        &["database", "user"],
        &[
            ("cl_active", "client_active_connections", 1.0, "gauge", "Client connections linked to server connection and able to process queries, shown as connection"),
            ("cl_active_cancel_req", "client_active_cancel_connections", 1.0, "gauge", "Client connections that have forwarded query cancellations to the server and are waiting for the server response"),
            ("cl_waiting", "client_waiting_connections", 1.0, "gauge", "Client connections waiting on a server connection, shown as connection"),
            ("cl_waiting_cancel_req", "client_waiting_cancel_connections", 1.0, "gauge", "Client connections that have not forwarded query cancellations to the server yet"),
            ("sv_active", "server_active_connections", 1.0, "gauge", "Server connections linked to a client connection, shown as connection"),
            ("sv_active_cancel", "server_active_cancel_connections", 1.0, "gauge", "Server connections that are currently forwarding a cancel request."),
            ("sv_being_canceled", "server_being_canceled_connections", 1.0, "gauge", "Servers that normally could become idle but are waiting to do so until all in-flight cancel requests have completed that were sent to cancel a query on this server."),
            ("sv_idle", "server_idle_connections", 1.0, "gauge", "Server connections idle and ready for a client query, shown as connection"),
            ("sv_used", "server_used_connections", 1.0, "gauge", "Server connections idle more than server_check_delay, needing server_check_query, shown as connection"),
            ("sv_tested", "server_testing_connections", 1.0, "gauge", "Server connections currently running either server_reset_query or server_check_query, shown as connection"),
            ("sv_login", "server_login_connections", 1.0, "gauge", "Server connections currently in the process of logging in, shown as connection"),
            ("maxwait", "client_maxwait_seconds", 1.0, "gauge", "Age of oldest unserved client connection, shown as second"),
        ],
    );
    let totals = show::stats_totals(app);
    let stat_columns: &[(&str, &str, f64, &str, &str)] = &[
        ("query_count", "queries_pooled_total", 1.0, "counter", "Total number of SQL queries pooled"),
        ("query_time", "queries_duration_seconds_total", 1e-6, "counter", "Total number of seconds spent by pgbouncer when actively connected to PostgreSQL, executing queries"),
        ("bytes_received", "received_bytes_total", 1.0, "counter", "Total volume in bytes of network traffic received by pgbouncer, shown as bytes"),
        ("bytes_sent", "sent_bytes_total", 1.0, "counter", "Total volume in bytes of network traffic sent by pgbouncer, shown as bytes"),
        ("wait_time", "client_wait_seconds_total", 1e-6, "counter", "Time spent by clients waiting for a server in seconds"),
        ("xact_count", "sql_transactions_pooled_total", 1.0, "counter", "Total number of SQL transactions pooled"),
        ("xact_time", "server_in_transaction_seconds_total", 1e-6, "counter", "Total number of seconds spent by pgbouncer when connected to PostgreSQL in a transaction, either idle in transaction or executing queries"),
        ("client_parse_count", "client_parses_total", 1.0, "counter", "Total number of prepared statement Parse messages received from clients"),
        ("server_parse_count", "server_parses_total", 1.0, "counter", "Total number of prepared statement Parse messages sent by pgbouncer to PostgreSQL"),
        ("bind_count", "binds_total", 1.0, "counter", "Total number of prepared statements readied for execution with a Bind message"),
    ];
    // pgbouncer_exporter's current names, then the older `pgbouncer_stats_*` ones
    // dashboards built on earlier exporter releases use.
    by_columns(&mut out, "pgbouncer_stats_totals", &totals, &["database"], stat_columns);
    by_columns(&mut out, "pgbouncer_stats", &totals, &["database"], stat_columns);

    sluice_own(&mut out, app, &pools);
    let mut text = out.text;
    text.push_str(&handle.render());
    text
}

/// Sluice's counters and queue gauges per pool.
fn sluice_own(out: &mut Exposition, app: &App, pools: &ResultSet) {
    let all = app.pools_of(None);
    type Counter = fn(&crate::stats::PoolStats) -> u64;
    let counters: [(&str, &str, Counter); 6] = [
        (
            "sluice_queue_timeouts_total",
            "Clients whose wait for a server failed (query_wait_timeout, failed server logins)",
            |s| s.wait_timeouts.load(Ordering::Relaxed),
        ),
        ("sluice_server_connects_total", "Server logins that succeeded", |s| {
            s.server_connects.load(Ordering::Relaxed)
        }),
        (
            "sluice_server_connect_failures_total",
            "Server logins that failed",
            |s| s.connect_failures.load(Ordering::Relaxed),
        ),
        ("sluice_cancels_total", "Cancel requests forwarded to a server", |s| {
            s.cancels.load(Ordering::Relaxed)
        }),
        (
            "sluice_abandoned_recovered_total",
            "Servers whose client left mid-query or mid-transaction, cancelled, rolled back and reused",
            |s| s.abandoned_recovered.load(Ordering::Relaxed),
        ),
        (
            "sluice_abandoned_closed_total",
            "Servers whose client left mid-query or mid-transaction and that had to be closed",
            |s| s.abandoned_closed.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, get) in counters {
        out.family(name, help, "counter");
        for p in &all {
            out.sample(
                name,
                &[("database", p.db.clone()), ("user", p.user.clone())],
                get(&p.stats) as f64,
            );
        }
    }
    out.family("sluice_queue_length", "Clients waiting for a server", "gauge");
    out.family(
        "sluice_queue_oldest_wait_seconds",
        "How long the oldest waiting client has waited",
        "gauge",
    );
    for i in 0..pools.rows.len() {
        let labels = labels_of(pools, i, &["database", "user"]);
        let waiting = pools.get(i, "cl_waiting").and_then(number).unwrap_or(0.0);
        out.sample("sluice_queue_length", &labels, waiting);
        let wait = pools.get(i, "maxwait").and_then(number).unwrap_or(0.0)
            + pools.get(i, "maxwait_us").and_then(number).unwrap_or(0.0) / 1e6;
        out.sample("sluice_queue_oldest_wait_seconds", &labels, wait);
    }
    // Overload protection, per lane (the figures of SHOW LANES).
    let lanes = show::lanes_rows(app);
    for (name, column, help) in [
        ("sluice_lane_servers", "sv_held", "Servers a lane holds"),
        (
            "sluice_lane_servers_in_transaction",
            "sv_in_transaction",
            "Servers a lane holds for clients inside a transaction block",
        ),
        ("sluice_lane_cap", "cap", "Servers a lane may hold now (absent: no cap)"),
        ("sluice_lane_queue_length", "cl_waiting", "Clients waiting in a lane"),
    ] {
        out.family(name, help, "gauge");
        for i in 0..lanes.rows.len() {
            if let Some(v) = lanes.get(i, column).and_then(number) {
                out.sample(name, &labels_of(&lanes, i, &["database", "user", "lane"]), v);
            }
        }
    }
}

/// SHOW LISTS rows as pgbouncer_exporter's gauges.
fn lists(out: &mut Exposition, r: &ResultSet) {
    for i in 0..r.rows.len() {
        let (Some(Cell::Text(list)), Some(v)) = (r.get(i, "list"), r.get(i, "items").and_then(number)) else {
            continue;
        };
        let (name, help) = match list.as_str() {
            "databases" => ("pgbouncer_databases", "Count of databases"),
            "users" => ("pgbouncer_users", "Count of users"),
            "pools" => ("pgbouncer_pools", "Count of pools"),
            "free_clients" => ("pgbouncer_free_clients", "Count of free clients"),
            "used_clients" => ("pgbouncer_used_clients", "Count of used clients"),
            "login_clients" => ("pgbouncer_login_clients", "Count of clients in login state"),
            "free_servers" => ("pgbouncer_free_servers", "Count of free servers"),
            "used_servers" => ("pgbouncer_used_servers", "Count of used servers"),
            "dns_names" => ("pgbouncer_cached_dns_names", "Count of DNS names in the cache"),
            "dns_zones" => ("pgbouncer_cached_dns_zones", "Count of DNS zones in the cache"),
            "dns_queries" => ("pgbouncer_in_flight_dns_queries", "Count of in-flight DNS queries"),
            _ => continue,
        };
        out.family(name, help, "gauge");
        out.sample(name, &[], v);
    }
}

/// One metric family per mapped column, one sample per row, labelled by `labels`.
fn by_columns(
    out: &mut Exposition,
    prefix: &str,
    r: &ResultSet,
    labels: &[&str],
    columns: &[(&str, &str, f64, &str, &str)],
) {
    for (column, metric, factor, kind, help) in columns {
        let name = format!("{prefix}_{metric}");
        out.family(&name, help, kind);
        for i in 0..r.rows.len() {
            if let Some(v) = r.get(i, column).and_then(number) {
                out.sample(&name, &labels_of(r, i, labels), v * factor);
            }
        }
    }
}

fn labels_of(r: &ResultSet, i: usize, names: &[&str]) -> Vec<(&'static str, String)> {
    names
        .iter()
        .filter_map(|n| {
            let (name, _) = r.columns.iter().find(|(c, _)| c == n)?;
            let v = match r.get(i, n)? {
                Cell::Text(s) => s.clone(),
                Cell::Int(n) => n.to_string(),
                Cell::Null => String::new(),
            };
            Some((*name, v))
        })
        .collect()
}

fn number(c: &Cell) -> Option<f64> {
    match c {
        Cell::Int(n) => Some(*n as f64),
        Cell::Text(s) => s.trim().parse().ok(),
        Cell::Null => None,
    }
}

/// Prometheus text exposition format 0.0.4.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(
            self.text,
            "# HELP {name} {}",
            help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, String)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.text, "{k}=\"{v}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}
