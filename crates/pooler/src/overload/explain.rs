//! Why clients wait: what held a pool's servers (busy, inside transaction blocks, the
//! longest hold and what it runs, by lane) and where a client stood in its lane.
//! The same text is the `query_wait_timeout` DETAIL, the `query_wait_notify` NOTICE
//! and SHOW WAITS.

use std::sync::atomic::Ordering::Relaxed;

use crate::pool::{Pool, Queued};

/// What held the pool's servers when a client waited: how many were busy, how many
/// of those were held by clients inside transaction blocks (idle in transaction
/// between their statements, or running one), the longest hold and what it runs, the
/// lanes' shares, and the queue (with `queued`: where this client stood in its lane).
pub fn wait(pool: &Pool, queued: Option<Queued>) -> String {
    let rows = pool.server_rows();
    let now = crate::server::unix_micros(std::time::SystemTime::now());
    let linked: Vec<_> = rows
        .iter()
        .filter(|r| r.meta.linked_client.load(Relaxed) != 0)
        .collect();
    let in_tx = linked.iter().filter(|r| r.meta.in_transaction.load(Relaxed)).count();
    let longest = linked
        .iter()
        .max_by_key(|r| now.saturating_sub(r.meta.request_time_us.load(Relaxed)));
    let held_us = longest.map_or(0, |r| now.saturating_sub(r.meta.request_time_us.load(Relaxed)));
    let c = pool.counts();
    let s = pool.settings();
    let lanes = &s.lanes;
    let mut text = format!(
        "pool {}/{} had {} of {} servers busy ({} held by clients inside a transaction block, {} running autocommit requests); the longest held for {:.1} s",
        pool.db,
        pool.user,
        linked.len(),
        s.size + s.reserve_size,
        in_tx,
        linked.len() - in_tx,
        held_us as f64 / 1e6,
    );
    if lanes.protection {
        if let Some(r) = longest {
            let fp = r.meta.fingerprint.load(Relaxed);
            let lane = lanes.name(r.meta.lane.load(Relaxed));
            match pool.learned.lock().text(fp) {
                Some(t) => text.push_str(&format!(" by \"{t}\" (lane {lane})")),
                None => text.push_str(&format!(" (lane {lane})")),
            }
        }
        let by_lane: Vec<String> = pool
            .lane_counts()
            .iter()
            .enumerate()
            .filter(|(_, l)| l.holders > 0 || l.waiting > 0)
            .map(|(i, l)| match l.cap {
                Some(cap) => format!("{} {} of at most {}", lanes.name(i), l.holders, cap),
                None => format!("{} {}", lanes.name(i), l.holders),
            })
            .collect();
        if !by_lane.is_empty() {
            text.push_str(&format!("; servers by lane: {}", by_lane.join(", ")));
        }
    }
    match queued {
        Some(q) if lanes.protection => text.push_str(&format!(
            "; {} other clients were waiting, {} of them ahead of this one in lane {}.",
            c.waiting,
            q.ahead,
            lanes.name(q.lane)
        )),
        _ => text.push_str(&format!("; {} other clients were waiting.", c.waiting)),
    }
    text
}
