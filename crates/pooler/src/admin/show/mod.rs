//! SHOW commands, one file each, with PgBouncer 1.25's columns, order and types.

mod clients;
pub mod config;
pub mod databases;
mod dns;
mod help;
mod lanes;
pub mod lists;
mod mem;
mod peers;
mod pools;
mod servers;
mod sockets;
mod state;
mod stats;
mod users;
pub mod version;

use super::result::ResultSet;
use super::{error, Reply};
use crate::app::App;
use crate::errors::ClientError;

pub use lanes::lanes as lanes_rows;
pub use pools::pools;
pub use stats::{stats, stats_totals};
pub use version::version_string;

type Show = fn(&App) -> Reply;

/// SHOW <name> → what it runs. Adding a SHOW is adding a file and a row here.
const SHOWS: &[(&str, Show)] = &[
    ("help", help::help),
    ("version", version::version),
    ("config", |app| Reply::Rows(config::config(app))),
    ("databases", |app| Reply::Rows(databases::databases(app))),
    ("pools", |app| Reply::Rows(pools::pools(app))),
    ("clients", |app| Reply::Rows(clients::clients(app))),
    ("servers", |app| Reply::Rows(servers::servers(app))),
    ("users", |app| Reply::Rows(users::users(app))),
    ("lists", |app| Reply::Rows(lists::lists(app))),
    ("stats", |app| Reply::Rows(stats::stats(app))),
    ("stats_totals", |app| Reply::Rows(stats::stats_totals(app))),
    ("stats_averages", |app| Reply::Rows(stats::stats_averages(app))),
    ("totals", |app| Reply::Rows(stats::totals(app))),
    ("state", |app| Reply::Rows(state::state(app))),
    ("mem", |app| Reply::Rows(mem::mem(app))),
    ("dns_hosts", |_| Reply::Rows(dns::hosts())),
    ("dns_zones", |_| Reply::Rows(dns::zones())),
    ("sockets", |app| Reply::Rows(sockets::sockets(app, false))),
    ("active_sockets", |app| Reply::Rows(sockets::sockets(app, true))),
    ("peers", |_| Reply::Rows(peers::peers())),
    ("peer_pools", |_| Reply::Rows(peers::peer_pools())),
    // Sluice's own: overload protection.
    ("lanes", |app| Reply::Rows(lanes::lanes(app))),
    ("waits", |app| Reply::Rows(lanes::waits(app))),
    ("fingerprints", |app| Reply::Rows(lanes::fingerprints(app))),
];

/// Settings some drivers SHOW on connect, answered with fixed values (as PgBouncer).
const FAKE_PARAMS: &[(&str, &str)] = &[
    ("client_encoding", "UTF8"),
    ("default_transaction_isolation", "read committed"),
    ("standard_conforming_strings", "on"),
    ("datestyle", "ISO"),
    ("timezone", "UTC"),
];

pub fn run(app: &App, what: &str, query: &str) -> Result<Reply, ClientError> {
    if let Some((_, show)) = SHOWS.iter().find(|(n, _)| *n == what) {
        return Ok(show(app));
    }
    if let Some((name, value)) = FAKE_PARAMS.iter().find(|(n, _)| n.eq_ignore_ascii_case(what)) {
        let mut r = ResultSet::new("s", &[name]);
        r.push(vec![(*value).into()]);
        return Ok(Reply::Rows(r));
    }
    if what == "fds" {
        return Err(
            error("SHOW FDS is not supported: Sluice does not hand sockets to another process")
                .hint("for a rolling restart, run two Sluice processes and stop one with SIGTERM"),
        );
    }
    Err(error(format!("invalid command '{query}', use SHOW HELP;")))
}

/// Microseconds of a duration split as PgBouncer's (seconds, microseconds) columns.
pub(crate) fn secs_and_micros(d: std::time::Duration) -> (i64, i64) {
    (d.as_secs() as i64, i64::from(d.subsec_micros()))
}
