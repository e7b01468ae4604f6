//! SHOW POOLS: one row per (database, user) pool.

use std::collections::HashMap;
use std::sync::Arc;

use super::secs_and_micros;
use crate::admin::result::{Cell, ResultSet};
use crate::app::App;
use crate::config::PoolMode;

pub fn pools(app: &App) -> ResultSet {
    let mut r = ResultSet::new(
        "ssiiiiiiiiiiiiiss",
        &[
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active",
            "sv_active_cancel",
            "sv_being_canceled",
            "sv_idle",
            "sv_used",
            "sv_tested",
            "sv_login",
            "maxwait",
            "maxwait_us",
            "pool_mode",
            "load_balance_hosts",
        ],
    );
    // Cancels in flight per pool: each is one cancel connection to one of its servers.
    let mut cancelling: HashMap<*const crate::pool::Pool, usize> = HashMap::new();
    for c in app.cancels.clients() {
        if let Some(row) = c.row() {
            if let (Some(pool), "active_cancel_req") = (&row.pool, row.state) {
                *cancelling.entry(Arc::as_ptr(pool)).or_default() += 1;
            }
        }
    }
    for pool in app.pools_of(None) {
        let c = pool.counts();
        let clients = pool.clients.load(std::sync::atomic::Ordering::Relaxed);
        let cancels = cancelling.get(&Arc::as_ptr(&pool)).copied().unwrap_or(0);
        let (wait_s, wait_us) = secs_and_micros(c.oldest_wait);
        r.push(vec![
            pool.db.as_str().into(),
            pool.user.as_str().into(),
            clients.saturating_sub(c.waiting).into(),
            c.waiting.into(),
            cancels.into(),
            Cell::Int(0),
            c.active.into(),
            cancels.into(),
            Cell::Int(0),
            c.idle.into(),
            c.used.into(),
            c.testing.into(),
            c.connecting.into(),
            wait_s.into(),
            wait_us.into(),
            mode_name(pool.settings().mode).into(),
            Cell::Null,
        ]);
    }
    r
}

pub fn mode_name(m: PoolMode) -> &'static str {
    match m {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
        PoolMode::Statement => "statement",
    }
}
