//! Overload protection: short transactions never starve behind slow ones.
//!
//! Every request that needs a server is put in a **lane** before it queues
//! ([`LaneSet::classify`]): a configured lane when a rule matches (application_name,
//! user, a comment tag, a pattern on the first statement, or `/* sluice: lane=NAME */`),
//! else one of two automatic lanes:
//! - `slow`: a transaction block whose first statement has not been seen to finish
//!   quickly, or any statement whose transactions have held a server for
//!   `slow_threshold` or more (learned per fingerprint, [`Learned`]);
//! - `fast`: everything else (autocommit statements, short transactions).
//!
//! A lane may hold at most its cap of the pool's servers (`slow`: `slow_share` of
//! them), may have servers reserved for it, and has its own queue order (priority),
//! wait timeout and queue bound. The pool enforces this when it hands out servers
//! (`pool.rs`); the session defers `BEGIN` so that a transaction is classified by the
//! statement that gives it meaning (`client/session.rs`). See docs/overload.md.

pub mod explain;
pub mod statement;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use statement::Fingerprint;

/// The automatic lanes' indices in every [`LaneSet`].
pub const FAST: usize = 0;
pub const SLOW: usize = 1;

/// Which requests a configured lane takes: every matcher given must match.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    pub application_name: Option<String>,
    pub user: Option<String>,
    /// `key=value` pairs from the statement's comments (sqlcommenter or `sluice:`).
    pub tags: Vec<(String, String)>,
    /// A case-insensitive pattern on the first meaningful statement.
    pub statement: Option<regex::Regex>,
}

impl PartialEq for Rule {
    fn eq(&self, o: &Self) -> bool {
        self.application_name == o.application_name
            && self.user == o.user
            && self.tags == o.tags
            && self.statement.as_ref().map(|r| r.as_str()) == o.statement.as_ref().map(|r| r.as_str())
    }
}

impl Rule {
    fn is_empty(&self) -> bool {
        self.application_name.is_none() && self.user.is_none() && self.tags.is_empty() && self.statement.is_none()
    }

    fn matches(&self, r: &Request<'_>, tags: &[(String, String)], text: &str) -> bool {
        !self.is_empty()
            && self.application_name.as_deref().is_none_or(|a| a == r.application_name)
            && self.user.as_deref().is_none_or(|u| u == r.user)
            && self.tags.iter().all(|t| tags.contains(t))
            && self.statement.as_ref().is_none_or(|re| re.is_match(text))
    }

    /// What the rule matches, for SHOW LANES.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(a) = &self.application_name {
            parts.push(format!("application_name={a}"));
        }
        if let Some(u) = &self.user {
            parts.push(format!("user={u}"));
        }
        for (k, v) in &self.tags {
            parts.push(format!("tag {k}={v}"));
        }
        if let Some(re) = &self.statement {
            parts.push(format!("statement ~ {}", re.as_str()));
        }
        parts.join(", ")
    }
}

/// One lane's limits.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LaneDef {
    pub name: String,
    pub rule: Rule,
    /// Servers of the pool it may hold at once (None: any).
    pub max_servers: Option<usize>,
    /// Servers other lanes may not take from it.
    pub reserved: usize,
    /// Higher is served first among waiters that may take a server.
    pub priority: i32,
    /// Its own query_wait_timeout (None: the pool's; Some(None): wait forever).
    pub wait_timeout: Option<Option<Duration>>,
    /// Clients that may wait in its queue (None: the pool's `max_queue_length`).
    pub max_queue: Option<usize>,
    /// Its own query_timeout / transaction_timeout (None: the pool's).
    pub query_timeout: Option<Option<Duration>>,
    pub transaction_timeout: Option<Option<Duration>>,
}

/// The lanes of a pool: the two automatic ones first, then the configured ones.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneSet {
    /// `overload_protection = off`: one FIFO queue, as PgBouncer.
    pub protection: bool,
    pub lanes: Vec<LaneDef>,
    /// Share of the pool's servers the `slow` lane may hold.
    pub slow_share: f64,
    /// A fingerprint whose transactions hold a server this long is slow.
    pub slow_threshold: Duration,
    /// Waiting clients per lane (None: no bound).
    pub max_queue: Option<usize>,
}

impl Default for LaneSet {
    fn default() -> Self {
        LaneSet::new(true, Vec::new(), 2.0 / 3.0, Duration::from_millis(500), None)
    }
}

/// What a request carries that lanes are chosen by.
pub struct Request<'a> {
    pub application_name: &'a str,
    pub user: &'a str,
    /// The first meaningful statement (after a deferred BEGIN), bounded.
    pub sql: &'a [u8],
    /// It opens a transaction block.
    pub in_block: bool,
}

/// Where a request goes, and what it is.
#[derive(Debug, Clone)]
pub struct Classified {
    pub lane: usize,
    /// Its fingerprint's id ([`statement::fingerprint_id`]; 0 with protection off).
    pub fingerprint: u64,
    /// The learned hold time of its kind (zero while unknown).
    pub expected: Duration,
}

impl LaneSet {
    pub fn new(
        protection: bool,
        configured: Vec<LaneDef>,
        slow_share: f64,
        slow_threshold: Duration,
        max_queue: Option<usize>,
    ) -> LaneSet {
        let mut lanes = vec![
            LaneDef {
                name: "fast".into(),
                ..LaneDef::default()
            },
            LaneDef {
                name: "slow".into(),
                ..LaneDef::default()
            },
        ];
        lanes.extend(configured);
        LaneSet {
            protection,
            lanes,
            slow_share,
            slow_threshold,
            max_queue,
        }
    }

    pub fn name(&self, lane: usize) -> &str {
        self.lanes.get(lane).map_or("?", |l| l.name.as_str())
    }

    /// Picks the lane for a request. With protection off every request is `fast` and
    /// nothing is looked at.
    pub fn classify(&self, r: &Request<'_>, learned: &Learned) -> Classified {
        if !self.protection {
            return Classified {
                lane: FAST,
                fingerprint: 0,
                expected: Duration::ZERO,
            };
        }
        let fingerprint = statement::fingerprint_id(r.sql, r.in_block);
        let expected = learned.expected(fingerprint);
        let tags = statement::tags(r.sql);
        let by_name = tags
            .iter()
            .find(|(k, _)| k == "lane")
            .and_then(|(_, v)| self.lanes.iter().skip(2).position(|l| &l.name == v))
            .map(|i| i + 2);
        let lane = by_name
            .or_else(|| {
                if self.lanes.len() <= 2 {
                    return None;
                }
                let text = String::from_utf8_lossy(&r.sql[..r.sql.len().min(statement::INSPECT)]);
                self.lanes
                    .iter()
                    .skip(2)
                    .position(|l| l.rule.matches(r, &tags, &text))
                    .map(|i| i + 2)
            })
            .unwrap_or_else(|| match expected {
                Some(hold) if hold >= self.slow_threshold => SLOW,
                Some(_) => FAST,
                // A transaction block nobody has seen end yet may sit idle in
                // transaction for minutes: slow until it proves otherwise.
                None if r.in_block => SLOW,
                None => FAST,
            });
        Classified {
            lane,
            fingerprint,
            expected: expected.unwrap_or_default(),
        }
    }

    /// How many servers `lane` may hold when the pool may have `capacity`.
    pub fn cap(&self, lane: usize, capacity: usize) -> usize {
        if !self.protection {
            return usize::MAX;
        }
        if lane == SLOW {
            return ((capacity as f64 * self.slow_share).floor() as usize).max(1);
        }
        self.lanes.get(lane).and_then(|l| l.max_servers).unwrap_or(usize::MAX)
    }

    pub fn reserved(&self, lane: usize) -> usize {
        if !self.protection {
            return 0;
        }
        self.lanes.get(lane).map_or(0, |l| l.reserved)
    }

    pub fn priority(&self, lane: usize) -> i32 {
        self.lanes.get(lane).map_or(0, |l| l.priority)
    }

    /// The highest priority of any lane.
    pub fn top_priority(&self) -> i32 {
        self.lanes.iter().map(|l| l.priority).max().unwrap_or(0)
    }

    pub fn max_queue(&self, lane: usize) -> Option<usize> {
        self.lanes.get(lane).and_then(|l| l.max_queue).or(self.max_queue)
    }

    pub fn wait_timeout(&self, lane: usize, pool: Option<Duration>) -> Option<Duration> {
        self.lanes.get(lane).and_then(|l| l.wait_timeout).unwrap_or(pool)
    }

    /// The client timeouts while linked for a request of `lane`.
    pub fn timeouts(&self, lane: usize, pool: crate::client::Timeouts) -> crate::client::Timeouts {
        let Some(l) = self.lanes.get(lane) else { return pool };
        crate::client::Timeouts {
            query: l.query_timeout.unwrap_or(pool.query),
            transaction: l.transaction_timeout.unwrap_or(pool.transaction),
            ..pool
        }
    }
}

/// How long the transactions of each fingerprint hold a server, learned as they run:
/// an exponentially weighted mean of completed holds, raised at once by a hold still
/// running that is already longer. Bounded: past [`Learned::CAPACITY`] fingerprints the
/// least recently seen are forgotten.
#[derive(Debug, Default)]
pub struct Learned {
    map: HashMap<u64, Entry, BuildHasherDefault<IdHasher>>,
}

/// Fingerprint ids are hashes already: the map takes them as they are rather than
/// hashing them again.
#[derive(Debug, Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub text: Arc<str>,
    /// Seconds; None until a hold completed or ran long.
    pub mean: Option<f64>,
    pub count: u64,
    pub last_seen: Instant,
}

/// Weight of the newest hold in the mean.
const ALPHA: f64 = 0.3;

impl Learned {
    pub const CAPACITY: usize = 2048;

    pub fn expected(&self, id: u64) -> Option<Duration> {
        self.map.get(&id).and_then(|e| e.mean).map(Duration::from_secs_f64)
    }

    /// Makes sure the fingerprint is known by its text.
    pub fn note(&mut self, fp: &Fingerprint) {
        self.note_with(fp.id, || fp.text.clone());
    }

    /// Makes sure fingerprint `id` is known; `text` is only made for a new one.
    pub fn note_with(&mut self, id: u64, text: impl FnOnce() -> String) {
        if id == 0 {
            return;
        }
        let now = Instant::now();
        if let Some(e) = self.map.get_mut(&id) {
            e.last_seen = now;
            return;
        }
        if self.map.len() >= Self::CAPACITY {
            self.forget_oldest();
        }
        self.map.insert(
            id,
            Entry {
                text: text().into(),
                mean: None,
                count: 0,
                last_seen: now,
            },
        );
    }

    fn forget_oldest(&mut self) {
        let mut ages: Vec<(Instant, u64)> = self.map.iter().map(|(k, e)| (e.last_seen, *k)).collect();
        ages.sort_unstable();
        for (_, k) in ages.iter().take(Self::CAPACITY / 4) {
            self.map.remove(k);
        }
    }

    /// A hold of a server by this fingerprint's transaction ended.
    pub fn record(&mut self, id: u64, hold: Duration) {
        let Some(e) = self.map.get_mut(&id) else { return };
        let h = hold.as_secs_f64();
        e.count += 1;
        e.mean = Some(match e.mean {
            Some(m) => m + ALPHA * (h - m),
            None => h,
        });
    }

    /// A hold still running: if it is already longer than the mean, the mean is
    /// raised to it, so the next transactions of its kind are held back at once.
    pub fn running(&mut self, id: u64, held: Duration) {
        let Some(e) = self.map.get_mut(&id) else { return };
        let h = held.as_secs_f64();
        if e.mean.is_none_or(|m| m < h) {
            e.mean = Some(h);
        }
    }

    pub fn text(&self, id: u64) -> Option<Arc<str>> {
        self.map.get(&id).map(|e| Arc::clone(&e.text))
    }

    /// The slowest fingerprints, slowest first.
    pub fn slowest(&self, n: usize) -> Vec<Entry> {
        let mut v: Vec<Entry> = self.map.values().filter(|e| e.mean.is_some()).cloned().collect();
        v.sort_by(|a, b| b.mean.partial_cmp(&a.mean).unwrap_or(std::cmp::Ordering::Equal));
        v.truncate(n);
        v
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(sql: &'a str, in_block: bool) -> Request<'a> {
        Request {
            application_name: "web",
            user: "app",
            sql: sql.as_bytes(),
            in_block,
        }
    }

    #[test]
    fn automatic_lanes_follow_what_was_learned() {
        let lanes = LaneSet::default();
        let mut learned = Learned::default();
        // Unknown: blocks are slow until seen, autocommit is fast.
        let c = lanes.classify(&req("SELECT * FROM export WHERE id = 1", true), &learned);
        assert_eq!(c.lane, SLOW);
        assert_eq!(lanes.classify(&req("SELECT 1", false), &learned).lane, FAST);
        learned.note(&statement::fingerprint(b"SELECT * FROM export WHERE id = 1", true));
        learned.record(c.fingerprint, Duration::from_millis(5));
        assert_eq!(
            lanes
                .classify(&req("SELECT * FROM export WHERE id = 2", true), &learned)
                .lane,
            FAST
        );
        learned.running(c.fingerprint, Duration::from_secs(3));
        assert_eq!(
            lanes
                .classify(&req("SELECT * FROM export WHERE id = 3", true), &learned)
                .lane,
            SLOW
        );
        let slow = lanes.classify(&req("SELECT pg_sleep(0.8)", false), &learned);
        learned.note(&statement::fingerprint(b"SELECT pg_sleep(0.8)", false));
        learned.record(slow.fingerprint, Duration::from_millis(800));
        assert_eq!(lanes.classify(&req("SELECT pg_sleep(0.8)", false), &learned).lane, SLOW);
    }

    #[test]
    fn configured_lanes_match_rules_and_names() {
        let reports = LaneDef {
            name: "reports".into(),
            rule: Rule {
                tags: vec![("controller".into(), "export".into())],
                ..Rule::default()
            },
            max_servers: Some(3),
            ..LaneDef::default()
        };
        let batch = LaneDef {
            name: "batch".into(),
            rule: Rule {
                application_name: Some("cron".into()),
                ..Rule::default()
            },
            ..LaneDef::default()
        };
        let lanes = LaneSet::new(true, vec![reports, batch], 0.5, Duration::from_millis(500), None);
        let learned = Learned::default();
        let lane = |sql: &str| lanes.classify(&req(sql, false), &learned).lane;
        assert_eq!(lane("SELECT 1 /*controller='export',route='x'*/"), 2);
        assert_eq!(lane("SELECT 1 /* sluice: lane=batch */"), 3);
        assert_eq!(lane("SELECT 1 /*controller='dashboard'*/"), FAST);
        let cron = Request {
            application_name: "cron",
            ..req("SELECT 1", false)
        };
        assert_eq!(lanes.classify(&cron, &learned).lane, 3);
        assert_eq!(lanes.cap(2, 30), 3);
        assert_eq!(lanes.cap(SLOW, 30), 15);
        assert_eq!(lanes.cap(FAST, 30), usize::MAX);
    }

    #[test]
    fn protection_off_is_one_queue() {
        let lanes = LaneSet {
            protection: false,
            ..LaneSet::default()
        };
        let c = lanes.classify(&req("SELECT 1", true), &Learned::default());
        assert_eq!(c.lane, FAST);
        assert_eq!(lanes.cap(SLOW, 4), usize::MAX);
    }

    #[test]
    fn learning_is_bounded() {
        let mut learned = Learned::default();
        for i in 0..(Learned::CAPACITY + 10) {
            learned.note(&statement::fingerprint(format!("select c{i} from t").as_bytes(), false));
        }
        assert!(learned.len() <= Learned::CAPACITY);
    }
}
