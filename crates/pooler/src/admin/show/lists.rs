//! SHOW LISTS: counts of Sluice's internal lists, in PgBouncer's rows. Sluice does
//! not keep freed objects for reuse (the allocator does), so free_* are 0.

use std::collections::BTreeSet;

use crate::admin::result::ResultSet;
use crate::app::App;

pub fn lists(app: &App) -> ResultSet {
    let current = app.current();
    let pools = app.pools_of(None);
    let mut dbs: BTreeSet<&str> = current
        .config
        .databases
        .keys()
        .map(String::as_str)
        .filter(|n| *n != "*")
        .collect();
    dbs.extend(pools.iter().map(|p| p.db.as_str()));
    let mut users: BTreeSet<&str> = current.loaded.secrets.keys().map(String::as_str).collect();
    users.extend(current.config.users.keys().map(String::as_str));
    let logged_in = app.cancels.clients().iter().filter(|c| c.login.get().is_some()).count();
    let servers: usize = pools.iter().map(|p| p.server_count()).sum();
    let mut r = ResultSet::new("si", &["list", "items"]);
    for (name, n) in [
        ("databases", dbs.len()),
        ("users", users.len()),
        ("peers", 0),
        ("pools", pools.len()),
        ("peer_pools", 0),
        ("free_clients", 0),
        ("used_clients", app.connected_clients()),
        ("login_clients", app.connected_clients().saturating_sub(logged_in)),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ] {
        r.push(vec![name.into(), n.into()]);
    }
    r
}
