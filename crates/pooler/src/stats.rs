//! Traffic statistics, as PgBouncer's SHOW STATS defines them.
//!
//! Each pool counts into plain atomics ([`PoolStats`]); the session loop adds to them
//! once per request (at its ReadyForQuery), never per byte. Every `stats_period` the
//! [`Averager`] snapshots the totals and turns the difference into the `avg_*`
//! figures (per second, or microseconds per transaction/query), and logs them when
//! `log_stats` is on. The same counters feed the Prometheus histograms.

use std::collections::BTreeMap;
use std::ops::Sub;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::Histogram;

/// Counters of one pool since the pooler started.
#[derive(Default)]
pub struct PoolStats {
    server_assignments: AtomicU64,
    xacts: AtomicU64,
    queries: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
    xact_time_us: AtomicU64,
    query_time_us: AtomicU64,
    wait_time_us: AtomicU64,
    client_parses: AtomicU64,
    server_parses: AtomicU64,
    binds: AtomicU64,
    /// Failed waits for a server (query_wait_timeout, failed logins): Sluice's own.
    pub wait_timeouts: AtomicU64,
    pub server_connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub cancels: AtomicU64,
    /// Servers whose client left mid-query or mid-transaction: recovered (cancelled,
    /// rolled back, back in the pool) or closed.
    pub abandoned_recovered: AtomicU64,
    pub abandoned_closed: AtomicU64,
    histograms: Option<Histograms>,
}

/// Distributions per pool for Prometheus (seconds, as Prometheus wants).
struct Histograms {
    wait: Histogram,
    xact: Histogram,
    query: Histogram,
}

/// A snapshot of counters, summed over pools or differenced over a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub server_assignments: u64,
    pub xacts: u64,
    pub queries: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_time_us: u64,
    pub query_time_us: u64,
    pub wait_time_us: u64,
    pub client_parses: u64,
    pub server_parses: u64,
    pub binds: u64,
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, o: Totals) {
        self.server_assignments += o.server_assignments;
        self.xacts += o.xacts;
        self.queries += o.queries;
        self.received += o.received;
        self.sent += o.sent;
        self.xact_time_us += o.xact_time_us;
        self.query_time_us += o.query_time_us;
        self.wait_time_us += o.wait_time_us;
        self.client_parses += o.client_parses;
        self.server_parses += o.server_parses;
        self.binds += o.binds;
    }
}

impl Sub for Totals {
    type Output = Totals;
    fn sub(self, o: Totals) -> Totals {
        Totals {
            server_assignments: self.server_assignments.saturating_sub(o.server_assignments),
            xacts: self.xacts.saturating_sub(o.xacts),
            queries: self.queries.saturating_sub(o.queries),
            received: self.received.saturating_sub(o.received),
            sent: self.sent.saturating_sub(o.sent),
            xact_time_us: self.xact_time_us.saturating_sub(o.xact_time_us),
            query_time_us: self.query_time_us.saturating_sub(o.query_time_us),
            wait_time_us: self.wait_time_us.saturating_sub(o.wait_time_us),
            client_parses: self.client_parses.saturating_sub(o.client_parses),
            server_parses: self.server_parses.saturating_sub(o.server_parses),
            binds: self.binds.saturating_sub(o.binds),
        }
    }
}

/// What one request (a Query, or a batch up to Sync) did, recorded at its
/// ReadyForQuery.
#[derive(Debug, Default, Clone, Copy)]
pub struct Request {
    pub query_time: Duration,
    /// Set when the ReadyForQuery ended a transaction.
    pub xact_time: Option<Duration>,
    pub received: u64,
    pub sent: u64,
}

impl PoolStats {
    /// Counters for the pool (db, user); histograms only when a metrics recorder runs.
    pub fn new(db: &str, user: &str, with_histograms: bool) -> PoolStats {
        let histograms = with_histograms.then(|| {
            let labels = [("database", db.to_owned()), ("user", user.to_owned())];
            Histograms {
                wait: metrics::histogram!("sluice_client_wait_seconds", &labels),
                xact: metrics::histogram!("sluice_transaction_seconds", &labels),
                query: metrics::histogram!("sluice_query_seconds", &labels),
            }
        });
        PoolStats {
            histograms,
            ..PoolStats::default()
        }
    }

    /// A server was linked to a client after `waited` in the queue.
    #[inline]
    pub fn assigned(&self, waited: Duration) {
        self.server_assignments.fetch_add(1, Ordering::Relaxed);
        if !waited.is_zero() {
            self.wait_time_us.fetch_add(micros(waited), Ordering::Relaxed);
        }
        if let Some(h) = &self.histograms {
            h.wait.record(waited.as_secs_f64());
        }
    }

    #[inline]
    pub fn request(&self, r: &Request) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.query_time_us.fetch_add(micros(r.query_time), Ordering::Relaxed);
        if r.received > 0 {
            self.received.fetch_add(r.received, Ordering::Relaxed);
        }
        if r.sent > 0 {
            self.sent.fetch_add(r.sent, Ordering::Relaxed);
        }
        if let Some(x) = r.xact_time {
            self.xacts.fetch_add(1, Ordering::Relaxed);
            self.xact_time_us.fetch_add(micros(x), Ordering::Relaxed);
        }
        if let Some(h) = &self.histograms {
            h.query.record(r.query_time.as_secs_f64());
            if let Some(x) = r.xact_time {
                h.xact.record(x.as_secs_f64());
            }
        }
    }

    /// Bytes moved outside a counted request (the tail of a session).
    pub fn bytes(&self, received: u64, sent: u64) {
        self.received.fetch_add(received, Ordering::Relaxed);
        self.sent.fetch_add(sent, Ordering::Relaxed);
    }

    /// Parse messages from the client and to servers, and Binds.
    #[inline]
    pub fn parses_and_binds(&self, client_parses: u64, server_parses: u64, binds: u64) {
        if client_parses > 0 {
            self.client_parses.fetch_add(client_parses, Ordering::Relaxed);
        }
        if server_parses > 0 {
            self.server_parses.fetch_add(server_parses, Ordering::Relaxed);
        }
        if binds > 0 {
            self.binds.fetch_add(binds, Ordering::Relaxed);
        }
    }

    pub fn totals(&self) -> Totals {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Totals {
            server_assignments: l(&self.server_assignments),
            xacts: l(&self.xacts),
            queries: l(&self.queries),
            received: l(&self.received),
            sent: l(&self.sent),
            xact_time_us: l(&self.xact_time_us),
            query_time_us: l(&self.query_time_us),
            wait_time_us: l(&self.wait_time_us),
            client_parses: l(&self.client_parses),
            server_parses: l(&self.server_parses),
            binds: l(&self.binds),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The `avg_*` figures of one period, in the same fields as [`Totals`]: counts and
/// bytes per second, times in microseconds per transaction / query / assignment.
pub type Averages = Totals;

impl Totals {
    /// The averages of a period whose totals grew by `delta`.
    pub fn over(delta: Totals, period: Duration) -> Averages {
        let secs = period.as_secs_f64().max(1e-3);
        let rate = |n: u64| (n as f64 / secs).round() as u64;
        let per = |t: u64, n: u64| t.checked_div(n).unwrap_or(0);
        Averages {
            server_assignments: rate(delta.server_assignments),
            xacts: rate(delta.xacts),
            queries: rate(delta.queries),
            received: rate(delta.received),
            sent: rate(delta.sent),
            xact_time_us: per(delta.xact_time_us, delta.xacts),
            query_time_us: per(delta.query_time_us, delta.queries),
            wait_time_us: per(delta.wait_time_us, delta.server_assignments),
            client_parses: rate(delta.client_parses),
            server_parses: rate(delta.server_parses),
            binds: rate(delta.binds),
        }
    }
}

/// Per-database averages of the last complete `stats_period`.
#[derive(Default)]
pub struct Averager {
    last: Option<(Instant, BTreeMap<String, Totals>)>,
    pub averages: BTreeMap<String, Averages>,
    pub total: Averages,
}

impl Averager {
    /// Closes a period: `now` are the per-database totals at its end. False for the
    /// first call, which only starts the first period.
    pub fn roll(&mut self, at: Instant, now: BTreeMap<String, Totals>) -> bool {
        let closed = self.last.is_some();
        if let Some((then, before)) = &self.last {
            let period = at.duration_since(*then);
            let mut all_delta = Totals::default();
            self.averages = now
                .iter()
                .map(|(db, t)| {
                    let delta = *t - before.get(db).copied().unwrap_or_default();
                    all_delta += delta;
                    (db.clone(), Averages::over(delta, period))
                })
                .collect();
            self.total = Averages::over(all_delta, period);
        }
        self.last = Some((at, now));
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_are_rates_and_per_item_times() {
        let delta = Totals {
            xacts: 120,
            queries: 240,
            xact_time_us: 120 * 500,
            query_time_us: 240 * 100,
            server_assignments: 120,
            wait_time_us: 1200,
            received: 6000,
            ..Totals::default()
        };
        let a = Averages::over(delta, Duration::from_secs(60));
        assert_eq!(a.xacts, 2);
        assert_eq!(a.queries, 4);
        assert_eq!(a.xact_time_us, 500);
        assert_eq!(a.query_time_us, 100);
        assert_eq!(a.wait_time_us, 10);
        assert_eq!(a.received, 100);
        assert_eq!(
            Averages::over(Totals::default(), Duration::from_secs(1)),
            Averages::default()
        );
    }

    #[test]
    fn the_first_period_has_no_averages_then_differences_count() {
        let mut avg = Averager::default();
        let t0 = Instant::now();
        let mut m = BTreeMap::new();
        m.insert(
            "app".to_owned(),
            Totals {
                xacts: 10,
                ..Totals::default()
            },
        );
        avg.roll(t0, m.clone());
        assert!(avg.averages.is_empty());
        m.insert(
            "app".to_owned(),
            Totals {
                xacts: 30,
                ..Totals::default()
            },
        );
        avg.roll(t0 + Duration::from_secs(10), m);
        assert_eq!(avg.averages["app"].xacts, 2);
        assert_eq!(avg.total.xacts, 2);
    }
}
