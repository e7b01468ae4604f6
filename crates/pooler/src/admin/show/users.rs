//! SHOW USERS: users from auth_file and `[users]`, with their overrides and usage.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use super::pools::mode_name;
use crate::admin::result::{Cell, ResultSet};
use crate::app::App;

pub fn users(app: &App) -> ResultSet {
    let mut r = ResultSet::new(
        "ssssiiii",
        &[
            "name",
            "pool_size",
            "reserve_pool_size",
            "pool_mode",
            "max_user_connections",
            "current_connections",
            "max_user_client_connections",
            "current_client_connections",
        ],
    );
    let current = app.current();
    let c = &current.config;
    let pools = app.pools_of(None);
    let mut names: BTreeSet<String> = current.loaded.secrets.keys().cloned().collect();
    names.extend(c.users.keys().cloned());
    names.extend(pools.iter().map(|p| p.user.clone()));
    for name in names {
        let u = c.users.get(&name);
        let of_user = pools.iter().filter(|p| p.user == name);
        let servers: usize = of_user.clone().map(|p| p.server_count()).sum();
        let clients: usize = of_user.map(|p| p.clients.load(Ordering::Relaxed)).sum();
        r.push(vec![
            name.into(),
            u.and_then(|u| u.pool_size)
                .map(|n| n.to_string())
                .unwrap_or_default()
                .into(),
            u.and_then(|u| u.reserve_pool_size)
                .map(|n| n.to_string())
                .unwrap_or_default()
                .into(),
            u.and_then(|u| u.pool_mode).map(|m| mode_name(m).to_owned()).into(),
            u.and_then(|u| u.max_user_connections)
                .unwrap_or(c.max_user_connections)
                .into(),
            servers.into(),
            Cell::Int(0),
            clients.into(),
        ]);
    }
    r
}
