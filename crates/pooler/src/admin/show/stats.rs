//! SHOW STATS, STATS_TOTALS, STATS_AVERAGES and TOTALS: per-database traffic since
//! start, and averages over the last `stats_period` (times in microseconds).

use crate::admin::result::{Cell, ResultSet};
use crate::app::App;
use crate::stats::{Averages, Totals};

const TOTAL_NAMES: [&str; 11] = [
    "server_assignment_count",
    "xact_count",
    "query_count",
    "received",
    "sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
];

/// The figures in column order (totals and averages share it).
fn total_cells(t: &Totals) -> [u64; 11] {
    [
        t.server_assignments,
        t.xacts,
        t.queries,
        t.received,
        t.sent,
        t.xact_time_us,
        t.query_time_us,
        t.wait_time_us,
        t.client_parses,
        t.server_parses,
        t.binds,
    ]
}

/// Per-database totals and averages, in one consistent snapshot.
fn per_db(app: &App) -> Vec<(String, Totals, Averages)> {
    let totals = app.db_totals();
    let averages = app.averages.lock();
    totals
        .into_iter()
        .map(|(db, t)| {
            let a = averages.averages.get(&db).copied().unwrap_or_default();
            (db, t, a)
        })
        .collect()
}

pub fn stats(app: &App) -> ResultSet {
    let mut r = ResultSet::new(
        "sqqqqqqqqqqqqqqqqqqqqqq",
        &[
            "database",
            "total_server_assignment_count",
            "total_xact_count",
            "total_query_count",
            "total_received",
            "total_sent",
            "total_xact_time",
            "total_query_time",
            "total_wait_time",
            "total_client_parse_count",
            "total_server_parse_count",
            "total_bind_count",
            "avg_server_assignment_count",
            "avg_xact_count",
            "avg_query_count",
            "avg_recv",
            "avg_sent",
            "avg_xact_time",
            "avg_query_time",
            "avg_wait_time",
            "avg_client_parse_count",
            "avg_server_parse_count",
            "avg_bind_count",
        ],
    );
    for (db, t, a) in per_db(app) {
        let mut row: Vec<Cell> = vec![db.into()];
        row.extend(total_cells(&t).into_iter().map(Cell::from));
        row.extend(total_cells(&a).into_iter().map(Cell::from));
        r.push(row);
    }
    r
}

/// STATS_TOTALS and STATS_AVERAGES name their columns without the prefix.
fn short_names() -> Vec<&'static str> {
    let mut names = vec!["database"];
    names.extend(TOTAL_NAMES.iter().map(|n| match *n {
        "received" => "bytes_received",
        "sent" => "bytes_sent",
        n => n,
    }));
    names
}

pub fn stats_totals(app: &App) -> ResultSet {
    let mut r = ResultSet::new("sqqqqqqqqqqq", &short_names());
    for (db, t, _) in per_db(app) {
        let mut row: Vec<Cell> = vec![db.into()];
        row.extend(total_cells(&t).into_iter().map(Cell::from));
        r.push(row);
    }
    r
}

pub fn stats_averages(app: &App) -> ResultSet {
    let mut r = ResultSet::new("sqqqqqqqqqqq", &short_names());
    for (db, _, a) in per_db(app) {
        let mut row: Vec<Cell> = vec![db.into()];
        row.extend(total_cells(&a).into_iter().map(Cell::from));
        r.push(row);
    }
    r
}

/// SHOW TOTALS: SHOW STATS summed over databases, one (name, value) row per figure.
pub fn totals(app: &App) -> ResultSet {
    let mut all = Totals::default();
    for t in app.db_totals().into_values() {
        all += t;
    }
    let avg = app.averages.lock().total;
    let mut r = ResultSet::new("sq", &["name", "value"]);
    for (name, v) in TOTAL_NAMES.iter().zip(total_cells(&all)) {
        r.push(vec![format!("total_{name}").into(), v.into()]);
    }
    for (name, v) in TOTAL_NAMES.iter().zip(total_cells(&avg)) {
        let name = match *name {
            "received" => "recv",
            n => n,
        };
        r.push(vec![format!("avg_{name}").into(), v.into()]);
    }
    r
}
