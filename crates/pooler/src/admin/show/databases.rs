//! SHOW DATABASES: configured databases (and those a `*` entry served), plus the
//! console's own `pgbouncer` row, as PgBouncer lists it.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use super::pools::mode_name;
use crate::admin::result::{Cell, ResultSet};
use crate::admin::ADMIN_DB;
use crate::app::App;

pub fn databases(app: &App) -> ResultSet {
    let mut r = ResultSet::new(
        "ssissiiiissiiiiii",
        &[
            "name",
            "host",
            "port",
            "database",
            "force_user",
            "pool_size",
            "min_pool_size",
            "reserve_pool_size",
            "server_lifetime",
            "pool_mode",
            "load_balance_hosts",
            "max_connections",
            "current_connections",
            "max_client_connections",
            "current_client_connections",
            "paused",
            "disabled",
        ],
    );
    let current = app.current();
    let c = &current.config;
    let pools = app.pools_of(None);
    let mut names: BTreeSet<String> = c.databases.keys().filter(|n| *n != "*").cloned().collect();
    names.extend(pools.iter().map(|p| p.db.clone()));
    let control = app.control.lock();
    for name in names {
        let Some(entry) = c.databases.get(&name).or_else(|| c.databases.get("*")) else {
            continue;
        };
        let of_db = pools.iter().filter(|p| p.db == name);
        let servers: usize = of_db.clone().map(|p| p.server_count()).sum();
        let clients: usize = of_db.map(|p| p.clients.load(Ordering::Relaxed)).sum();
        r.rows.push(vec![
            entry.host.clone().unwrap_or_else(|| c.unix_socket_dir.clone()).into(),
            entry.port.unwrap_or(5432).into(),
            entry.dbname.clone().unwrap_or_else(|| name.clone()).into(),
            entry.user.clone().into(),
            entry.pool_size.unwrap_or(c.default_pool_size).into(),
            entry.min_pool_size.unwrap_or(c.min_pool_size).into(),
            entry
                .reserve_pool_size
                .or(entry.reserve_pool)
                .unwrap_or(c.reserve_pool_size)
                .into(),
            (entry.server_lifetime.unwrap_or(c.server_lifetime) as i64).into(),
            entry.pool_mode.map(|m| mode_name(m).to_owned()).into(),
            Cell::Null,
            entry.max_db_connections.unwrap_or(c.max_db_connections).into(),
            servers.into(),
            Cell::Int(0),
            clients.into(),
            control.is_paused(&name).into(),
            control.disabled.contains(&name).into(),
        ]);
        let last = r.rows.len() - 1;
        r.rows[last].insert(0, name.into());
        debug_assert_eq!(r.rows[last].len(), r.columns.len());
    }
    r.push(vec![
        ADMIN_DB.into(),
        Cell::Null,
        c.listen_port.into(),
        ADMIN_DB.into(),
        ADMIN_DB.into(),
        Cell::Int(2),
        Cell::Int(0),
        Cell::Int(0),
        Cell::Int(0),
        "statement".into(),
        Cell::Null,
        Cell::Int(0),
        Cell::Int(0),
        Cell::Int(0),
        Cell::Int(0),
        Cell::Int(0),
        Cell::Int(0),
    ]);
    r
}
