//! SHOW LANES (Sluice's): one row per (database, user) pool and lane: what the lane
//! takes, its limits, the servers it holds and the clients waiting in it.

use super::secs_and_micros;
use crate::admin::result::{Cell, ResultSet};
use crate::app::App;

pub fn lanes(app: &App) -> ResultSet {
    let mut r = ResultSet::new(
        "sssiiiiiiiiss",
        &[
            "database",
            "user",
            "lane",
            "sv_held",
            "sv_in_transaction",
            "cap",
            "reserved",
            "priority",
            "cl_waiting",
            "maxwait",
            "maxwait_us",
            "query_wait_timeout",
            "rule",
        ],
    );
    for pool in app.pools_of(None) {
        let settings = pool.settings();
        let lanes = &settings.lanes;
        for (i, c) in pool.lane_counts().into_iter().enumerate() {
            let Some(def) = lanes.lanes.get(i) else { continue };
            let (wait_s, wait_us) = secs_and_micros(c.oldest_wait);
            let qwt = lanes
                .wait_timeout(i, settings.query_wait_timeout)
                .map_or_else(|| "0".to_owned(), |d| format!("{}", d.as_secs_f64()));
            let rule = match i {
                crate::overload::FAST if !lanes.protection => "all requests (overload_protection = off)".to_owned(),
                crate::overload::FAST => {
                    "automatic: autocommit statements and transactions that end quickly".to_owned()
                }
                crate::overload::SLOW => format!(
                    "automatic: transactions not yet seen to end, and kinds that hold a server {} s or more",
                    lanes.slow_threshold.as_secs_f64()
                ),
                _ => def.rule.describe(),
            };
            r.push(vec![
                pool.db.as_str().into(),
                pool.user.as_str().into(),
                def.name.as_str().into(),
                c.holders.into(),
                c.in_transaction.into(),
                c.cap.map_or(Cell::Null, Cell::from),
                lanes.reserved(i).into(),
                lanes.priority(i).into(),
                c.waiting.into(),
                wait_s.into(),
                wait_us.into(),
                qwt.into(),
                rule.into(),
            ]);
        }
    }
    r
}

/// SHOW WAITS (Sluice's): one row per pool with clients waiting, saying why they wait
/// (the text of the query_wait_timeout DETAIL).
pub fn waits(app: &App) -> ResultSet {
    let mut r = ResultSet::new(
        "ssiiis",
        &["database", "user", "cl_waiting", "maxwait", "maxwait_us", "explanation"],
    );
    for pool in app.pools_of(None) {
        let c = pool.counts();
        if c.waiting == 0 {
            continue;
        }
        let (wait_s, wait_us) = secs_and_micros(c.oldest_wait);
        r.push(vec![
            pool.db.as_str().into(),
            pool.user.as_str().into(),
            c.waiting.into(),
            wait_s.into(),
            wait_us.into(),
            crate::overload::explain::wait(&pool, None).into(),
        ]);
    }
    r
}

/// SHOW FINGERPRINTS (Sluice's): per pool, the kinds of transactions that held servers
/// longest (learned mean hold, including idle-in-transaction time), slowest first.
pub fn fingerprints(app: &App) -> ResultSet {
    // mean_hold is seconds with a fraction, as text.
    let mut r = ResultSet::new(
        "sssqss",
        &["database", "user", "lane", "transactions", "mean_hold", "fingerprint"],
    );
    for pool in app.pools_of(None) {
        let settings = pool.settings();
        let lanes = &settings.lanes;
        for e in pool.learned.lock().slowest(20) {
            let mean = e.mean.unwrap_or(0.0);
            let lane = if mean >= lanes.slow_threshold.as_secs_f64() {
                "slow"
            } else {
                "fast"
            };
            r.push(vec![
                pool.db.as_str().into(),
                pool.user.as_str().into(),
                lane.into(),
                e.count.into(),
                format!("{mean:.3}").into(),
                e.text.to_string().into(),
            ]);
        }
    }
    r
}
