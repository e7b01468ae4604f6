//! One pool of server connections per (database, server user).
//!
//! - Waiting clients queue in arrival order; a released server goes straight to the
//!   waiter next in line (the oldest, unless overload protection says otherwise).
//! - A waiter that gives up (timeout, client gone) leaves the queue at once, and a
//!   server handed to it in that instant is returned, never lost ([`Checkout`]'s Drop).
//! - New connections open in parallel, at most [`MAX_CONNECTING`] at a time per pool,
//!   only while clients wait for them; the reserve opens once the oldest waiter has
//!   waited `reserve_pool_timeout`.
//! - `max_db_connections` / `max_user_connections` are semaphores shared by the pools
//!   of one database / user; each server holds its permits while it exists.
//! - Overload protection ([`crate::overload`]): every request comes with a lane. A
//!   server goes to the oldest waiter of the highest priority whose lane is under its
//!   cap and leaves other lanes their reserved servers (in the slow lane, the shortest
//!   expected hold first); a lane at its cap waits while the others are served. With
//!   protection off there is one lane and one FIFO queue.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info_span, warn, Instrument};

use crate::config::PoolMode;
use crate::overload::{LaneSet, Learned};
use crate::server::{ConnectError, Registration, ServerConn, ServerMeta, ServerTarget};
use crate::stats::PoolStats;

/// Connects in flight per pool: enough to fill a pool quickly after a restart without
/// a thundering herd of logins on PostgreSQL.
pub const MAX_CONNECTING: usize = 4;

/// How often a failing pool retries a login in the background.
pub const RETRY_TICK: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests;

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    pub mode: PoolMode,
    pub size: usize,
    pub min_size: usize,
    pub reserve_size: usize,
    pub reserve_timeout: Duration,
    pub query_wait_timeout: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub lifetime: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_packet: u32,
    /// Limits on what a client may do with a server (PgBouncer's client-side timeouts).
    pub timeouts: crate::client::Timeouts,
    /// Session mode: run before a server is reused (`server_reset_query`); with
    /// `server_reset_query_always` also in transaction mode.
    pub reset_query: Option<String>,
    pub reset_always: bool,
    /// A client waiting this long is sent a NOTICE explaining the wait.
    pub wait_notify: Option<Duration>,
    /// `server_login_retry` (None when 0): while the last login failed and no server
    /// is up, clients get the cached error at once and one login is retried in the
    /// background. None: every waiting client triggers its own login attempt.
    pub login_retry: Option<Duration>,
    /// Idle servers unused this long are tested with `check_query` before reuse
    /// (None: never).
    pub check_delay: Option<Duration>,
    pub check_query: Option<String>,
    /// `max_prepared_statements` per server connection (0: named statements pass
    /// through untouched, as in PgBouncer before 1.21).
    pub max_prepared: usize,
    /// Overload protection: lanes, their caps and the automatic classification.
    pub lanes: Arc<LaneSet>,
}

/// What a request that needs a server is: its lane and its fingerprint (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ticket {
    pub lane: usize,
    pub fingerprint: u64,
    /// How long its kind was learned to hold a server (zero: unknown). In the slow
    /// lane, the shortest expected go first: the slowest are held back.
    pub expected: Duration,
}

/// Where a waiter stood when its wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    pub lane: usize,
    /// Clients of the same lane that had waited longer.
    pub ahead: usize,
    /// Clients waiting in the lane (with this one).
    pub waiting: usize,
}

/// A server lent out: for which lane and fingerprint, since when (for the lane's
/// count and the fingerprint's learned hold time at release).
#[derive(Debug, Clone, Copy)]
pub struct Hold {
    pub ticket: Ticket,
    /// The pool's lane generation when it was taken (lanes renumbered by a reload
    /// are not decremented).
    pub lanes_gen: u64,
    pub since: Instant,
}

#[derive(Debug, thiserror::Error, Clone)]
pub enum AcquireError {
    #[error("query_wait_timeout")]
    WaitTimeout(Queued),
    /// The lane's queue holds `max_queue_length` clients already.
    #[error("the queue for a server is full")]
    QueueFull(Queued),
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

type Delivery = Result<ServerConn, ConnectError>;

/// ParameterStatus values a client is shown at login (before its own settings).
pub type Welcome = Arc<crate::params::ParamSet>;

struct Waiter {
    id: u64,
    since: Instant,
    ticket: Ticket,
    tx: oneshot::Sender<Delivery>,
}

struct State {
    /// The pool's settings as of the last reload, read under the lock the hot path
    /// holds anyway (no separate atomic load per acquire/release).
    settings: Arc<PoolSettings>,
    /// Idle servers, most recently used last (LIFO, as PgBouncer's default).
    idle: Vec<ServerConn>,
    waiters: VecDeque<Waiter>,
    /// Servers linked to clients.
    active: usize,
    /// Servers linked, per lane (indices of `settings.lanes`).
    holders: Vec<usize>,
    /// Bumped when a reload changes the lanes.
    lanes_gen: u64,
    connecting: usize,
    /// Idle servers taken out to run server_check_query.
    testing: usize,
    next_waiter: u64,
    last_connect_error: Option<ConnectError>,
    /// PAUSE / KILL / SUSPEND: no server is handed out or opened, and released ones
    /// close; waiting clients stay queued until RESUME.
    paused: bool,
    /// The last login failed while the pool had no server: when it failed.
    failing_since: Option<Instant>,
    /// When the background retry last started a login.
    last_retry: Option<Instant>,
}

impl State {
    fn new(settings: Arc<PoolSettings>) -> State {
        State {
            holders: vec![0; settings.lanes.lanes.len()],
            lanes_gen: 0,
            settings,
            idle: Vec::new(),
            waiters: VecDeque::new(),
            active: 0,
            connecting: 0,
            testing: 0,
            next_waiter: 0,
            last_connect_error: None,
            paused: false,
            failing_since: None,
            last_retry: None,
        }
    }
}

impl State {
    fn total(&self) -> usize {
        self.idle.len() + self.active + self.connecting + self.testing
    }

    /// How many servers the pool may have now: the reserve counts once the oldest
    /// waiter has waited `reserve_pool_timeout`.
    fn capacity(&self) -> usize {
        let reserve_open = self
            .waiters
            .front()
            .is_some_and(|w| w.since.elapsed() >= self.settings.reserve_timeout);
        self.settings.size + if reserve_open { self.settings.reserve_size } else { 0 }
    }

    /// May `lane` take one more server now: under its cap, and leaving the other
    /// lanes the servers reserved for them.
    fn admits(&self, lane: usize, capacity: usize) -> bool {
        let lanes = &self.settings.lanes;
        if !lanes.protection {
            return true;
        }
        let held = |l: usize| self.holders.get(l).copied().unwrap_or(0);
        if held(lane) >= lanes.cap(lane, capacity) {
            return false;
        }
        let owed: usize = (0..lanes.lanes.len())
            .filter(|&l| l != lane)
            .map(|l| lanes.reserved(l).saturating_sub(held(l)))
            .sum();
        owed == 0 || capacity.saturating_sub(self.active + 1) >= owed
    }

    /// Marks `conn` as lent for `ticket`.
    fn lend(&mut self, conn: &mut ServerConn, ticket: Ticket) {
        self.active += 1;
        if let Some(h) = self.holders.get_mut(ticket.lane) {
            *h += 1;
        }
        conn.hold = Some(Hold {
            ticket,
            lanes_gen: self.lanes_gen,
            since: Instant::now(),
        });
        conn.meta.lane.store(ticket.lane, Ordering::Relaxed);
        conn.meta.fingerprint.store(ticket.fingerprint, Ordering::Relaxed);
    }

    /// Undoes [`State::lend`]; returns the hold.
    fn unlend(&mut self, conn: &mut ServerConn) -> Option<Hold> {
        let hold = conn.hold.take();
        self.give_back(hold.as_ref());
        hold
    }

    /// One server less is lent out (for `hold`'s lane).
    fn give_back(&mut self, hold: Option<&Hold>) {
        self.active = self.active.saturating_sub(1);
        if let Some(hold) = hold.filter(|h| h.lanes_gen == self.lanes_gen) {
            if let Some(h) = self.holders.get_mut(hold.ticket.lane) {
                *h = h.saturating_sub(1);
            }
        }
    }

    /// Waiters per lane.
    fn waiting_in(&self, lane: usize) -> usize {
        self.waiters.iter().filter(|w| w.ticket.lane == lane).count()
    }
}

/// Counts for SHOW POOLS and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub idle: usize,
    pub active: usize,
    pub connecting: usize,
    pub waiting: usize,
    pub oldest_wait: Duration,
    pub paused: bool,
    /// Idle servers due for server_check_query (sv_used).
    pub used: usize,
    /// Servers running server_check_query (sv_tested).
    pub testing: usize,
}

pub struct Pool {
    pub db: String,
    pub user: String,
    /// Replaced on reload; servers made for an older target close when released.
    target_cell: ArcSwap<ServerTarget>,
    /// Bumped when the target changes (cheaper to compare than the target).
    target_gen: AtomicU64,
    /// Replaced on reload.
    settings_cell: ArcSwap<PoolSettings>,
    state: Mutex<State>,
    limits: Vec<Arc<Semaphore>>,
    /// ParameterStatus values of the first server login, shown to clients at login.
    welcome: Mutex<Option<Welcome>>,
    /// SHOW STATS counters.
    pub stats: PoolStats,
    /// Clients logged in to this pool (SHOW POOLS cl_active + cl_waiting).
    pub clients: AtomicUsize,
    /// Every open server connection, idle or linked (SHOW SERVERS).
    servers: Mutex<HashMap<u64, Arc<ServerMeta>>>,
    /// How long each fingerprint's transactions hold a server (overload protection).
    pub learned: Mutex<Learned>,
    /// Outcomes of lone SETs seen to succeed: the ParameterStatus values PostgreSQL
    /// sent, by (the client's settings digest, statement text).
    local_sets: Mutex<HashMap<SetKey, SetOutcome>>,
}

/// A lone SET, with the settings it ran under.
pub type SetKey = (u64, Vec<u8>);

/// The ParameterStatus values a lone SET made PostgreSQL send.
pub type SetOutcome = Arc<Vec<(String, String)>>;

/// SET outcomes kept per pool (an application sends a handful of distinct ones).
const MAX_LOCAL_SETS: usize = 256;

impl Pool {
    pub fn new(
        db: String,
        user: String,
        target: ServerTarget,
        settings: PoolSettings,
        limits: Vec<Arc<Semaphore>>,
    ) -> Arc<Pool> {
        let stats = PoolStats::new(&db, &user, crate::telemetry::recording());
        Arc::new(Pool {
            stats,
            clients: AtomicUsize::new(0),
            servers: Mutex::new(HashMap::new()),
            db,
            user,
            target_cell: ArcSwap::from_pointee(target),
            target_gen: AtomicU64::new(0),
            settings_cell: ArcSwap::from_pointee(settings.clone()),
            state: Mutex::new(State::new(Arc::new(settings))),
            limits,
            welcome: Mutex::new(None),
            learned: Mutex::new(Learned::default()),
            local_sets: Mutex::new(HashMap::new()),
        })
    }

    pub fn counts(&self) -> PoolCounts {
        let s = self.state.lock();
        let now = Instant::now();
        let used = match s.settings.check_delay {
            Some(d) => s.idle.iter().filter(|c| now.duration_since(c.last_used) >= d).count(),
            None => 0,
        };
        PoolCounts {
            used,
            testing: s.testing,
            idle: s.idle.len() - used,
            active: s.active,
            connecting: s.connecting,
            waiting: s.waiters.len(),
            oldest_wait: s.waiters.front().map(|w| w.since.elapsed()).unwrap_or_default(),
            paused: s.paused,
        }
    }

    pub fn welcome(&self) -> Option<Welcome> {
        self.welcome.lock().clone()
    }

    /// Takes a server for a client: an idle one, or waits in line for one.
    /// Cancel-safe: dropping the future leaves the queue and returns any server
    /// delivered in the meantime.
    pub async fn acquire(self: &Arc<Self>, ticket: Ticket) -> Result<ServerConn, AcquireError> {
        let (id, rx) = {
            let mut s = self.state.lock();
            let mut expired = Vec::new();
            if let Some(conn) = self.pop_idle(&mut s, &mut expired, ticket) {
                drop(s);
                close_all(expired);
                return Ok(conn);
            }
            if let Some(e) = self.cached_failure(&s) {
                drop(s);
                close_all(expired);
                return Err(AcquireError::Connect(ConnectError::Failing(Box::new(e))));
            }
            if let Some(max) = s.settings.lanes.max_queue(ticket.lane) {
                let waiting = s.waiting_in(ticket.lane);
                if waiting >= max {
                    drop(s);
                    close_all(expired);
                    return Err(AcquireError::QueueFull(Queued {
                        lane: ticket.lane,
                        ahead: waiting,
                        waiting,
                    }));
                }
            }
            let now = Instant::now();
            let (tx, rx) = oneshot::channel();
            let id = s.next_waiter;
            s.next_waiter += 1;
            s.waiters.push_back(Waiter {
                id,
                since: now,
                ticket,
                tx,
            });
            self.spawn_connects(&mut s);
            drop(s);
            close_all(expired);
            (id, rx)
        };
        let mut checkout = Checkout {
            pool: self,
            id,
            lane: ticket.lane,
            rx: Some(rx),
        };
        checkout.wait().await
    }

    /// Takes an idle server if one is free right now, without queueing: the common
    /// case, kept free of the queue's machinery. (A None must be followed by
    /// [`Pool::acquire`], which checks again under the same lock it queues under.)
    pub fn try_acquire(&self, ticket: Ticket) -> Option<ServerConn> {
        let mut s = self.state.lock();
        let mut expired = Vec::new();
        let conn = self.pop_idle(&mut s, &mut expired, ticket);
        drop(s);
        close_all(expired);
        conn
    }

    /// The most recently used idle server that is still good; expired and dead ones
    /// go to `expired` for closing outside the lock.
    fn pop_idle(&self, s: &mut State, expired: &mut Vec<ServerConn>, ticket: Ticket) -> Option<ServerConn> {
        if s.paused || s.idle.is_empty() || !s.admits(ticket.lane, s.capacity()) {
            return None;
        }
        let now = Instant::now();
        let (lifetime, idle_timeout) = (s.settings.lifetime, s.settings.idle_timeout);
        while let Some(mut conn) = s.idle.pop() {
            if conn.expired(now, lifetime, idle_timeout) || conn.is_dead() {
                expired.push(conn);
                continue;
            }
            s.lend(&mut conn, ticket);
            return Some(conn);
        }
        None
    }

    /// Gives a server back after a client is done with it. `reusable` is false when
    /// the server is not at a clean protocol boundary (it is then closed).
    pub fn release(self: &Arc<Self>, mut conn: ServerConn, reusable: bool) {
        let mut s = self.state.lock();
        let hold = s.unlend(&mut conn);
        let now = Instant::now();
        conn.meta.linked_client.store(0, Ordering::Relaxed);
        conn.meta.in_transaction.store(false, Ordering::Relaxed);
        conn.meta.fingerprint.store(0, Ordering::Relaxed);
        if let Some(h) = hold.filter(|h| h.ticket.fingerprint != 0) {
            let held = now.duration_since(h.since);
            self.learned.lock().record(h.ticket.fingerprint, held);
            if crate::telemetry::recording() {
                metrics::histogram!("sluice_lane_hold_seconds", &self.lane_labels(&s, h.ticket.lane))
                    .record(held.as_secs_f64());
            }
        }
        let stale = conn.target_gen != self.target_gen.load(Ordering::Relaxed);
        if !reusable || stale || s.paused || conn.expired(now, s.settings.lifetime, None) {
            // Its lane's count went down: a waiter held back by a cap may go now.
            self.serve_idle(&mut s);
            self.spawn_connects(&mut s);
            drop(s);
            close_all(vec![conn]);
            return;
        }
        conn.last_used = now;
        if let Some(conn) = Self::hand_off(&mut s, conn) {
            s.idle.push(conn);
            // An idle server now, and waiters held back only by this lane's count?
            self.serve_idle(&mut s);
        }
    }

    /// Hands idle servers to waiters that may take them now (after a lane's count
    /// went down).
    fn serve_idle(&self, s: &mut State) {
        if s.waiters.is_empty() || !s.settings.lanes.protection {
            return;
        }
        while let Some(conn) = s.idle.pop() {
            if let Some(conn) = Self::hand_off(s, conn) {
                s.idle.push(conn);
                return;
            }
        }
    }

    /// Gives `conn` to the waiter next in line (the oldest of the highest priority
    /// whose lane may take a server now); returns it when nobody may.
    fn hand_off(s: &mut State, mut conn: ServerConn) -> Option<ServerConn> {
        while let Some(i) = Self::next_waiter(s) {
            let Some(w) = s.waiters.remove(i) else { break };
            s.lend(&mut conn, w.ticket);
            match w.tx.send(Ok(conn)) {
                Ok(()) => return None,
                // The waiter gave up in the meantime: try the next one.
                Err(Ok(mut back)) => {
                    s.unlend(&mut back);
                    conn = back;
                }
                Err(Err(_)) => return None,
            }
        }
        Some(conn)
    }

    /// The index of the waiter to serve next, if any may take a server now.
    fn next_waiter(s: &State) -> Option<usize> {
        if !s.settings.lanes.protection {
            return (!s.waiters.is_empty()).then_some(0);
        }
        let capacity = s.capacity();
        let lanes = &s.settings.lanes;
        // Higher priority first; in the slow lane the shortest expected hold; then the
        // oldest (waiters are in arrival order, so only a strictly better one wins).
        let rank = |w: &Waiter| {
            let hold = if w.ticket.lane == crate::overload::SLOW {
                w.ticket.expected
            } else {
                Duration::ZERO
            };
            (std::cmp::Reverse(lanes.priority(w.ticket.lane)), hold)
        };
        // Nobody can rank before this: once the best so far has it, stop looking (the
        // common case, every waiter in one lane, serves the front at once).
        let first_possible = (std::cmp::Reverse(lanes.top_priority()), Duration::ZERO);
        // Whether each lane may take a server, asked once per lane (no allocation for
        // the first few lanes).
        let mut asked = [None::<bool>; 8];
        let mut admits = |lane: usize| match asked.get_mut(lane) {
            Some(slot) => *slot.get_or_insert_with(|| s.admits(lane, capacity)),
            None => s.admits(lane, capacity),
        };
        let mut best: Option<(_, usize)> = None;
        for (i, w) in s.waiters.iter().enumerate() {
            let r = rank(w);
            if best.as_ref().is_some_and(|(b, _)| *b <= r) {
                continue;
            }
            if admits(w.ticket.lane) {
                if r <= first_possible {
                    return Some(i);
                }
                best = Some((r, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// Waiting clients that could take a server if there were one (those of lanes
    /// under their caps), counted up to `limit`.
    fn servable_waiters(s: &State, limit: usize) -> usize {
        if !s.settings.lanes.protection {
            return s.waiters.len().min(limit);
        }
        let capacity = s.capacity();
        let lanes = &s.settings.lanes;
        let mut room: Vec<usize> = (0..lanes.lanes.len())
            .map(|l| {
                lanes
                    .cap(l, capacity)
                    .saturating_sub(s.holders.get(l).copied().unwrap_or(0))
            })
            .collect();
        s.waiters
            .iter()
            .filter(|w| match room.get_mut(w.ticket.lane) {
                Some(r) if *r > 0 => {
                    *r -= 1;
                    true
                }
                Some(_) => false,
                None => true,
            })
            .take(limit)
            .count()
    }

    /// Starts as many connects as waiting clients need, within the pool's capacity and
    /// the per-pool bound on logins in flight.
    fn spawn_connects(self: &Arc<Self>, s: &mut State) {
        if s.paused || s.waiters.is_empty() {
            return;
        }
        let room = s.capacity().saturating_sub(s.total());
        let slots = MAX_CONNECTING.saturating_sub(s.connecting);
        if room == 0 || slots == 0 {
            // A full pool (the usual state under load) needs no count of the queue.
            return;
        }
        let limit = room.min(slots) + s.connecting;
        let needed = Self::servable_waiters(s, limit).saturating_sub(s.connecting);
        for _ in 0..needed.min(room).min(slots) {
            self.spawn_connect(s);
        }
    }

    /// Starts one server login in the background; its result goes to the oldest
    /// waiter, or to the idle list.
    fn spawn_connect(self: &Arc<Self>, s: &mut State) {
        s.connecting += 1;
        let pool = Arc::clone(self);
        let id = NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed);
        // Servers outlive the client that happened to trigger their login.
        let span = info_span!(parent: None, "server", id, db = %self.db, user = %self.user);
        tokio::spawn(async move { pool.connect_one(id).await }.instrument(span));
    }

    /// Opens connections up to `min_pool_size` (called after logins and releases).
    pub fn fill_min(self: &Arc<Self>) {
        let mut s = self.state.lock();
        if s.paused {
            return;
        }
        let missing = s.settings.min_size.saturating_sub(s.total());
        let slots = MAX_CONNECTING.saturating_sub(s.connecting);
        for _ in 0..missing.min(slots) {
            self.spawn_connect(&mut s);
        }
    }

    async fn connect_one(self: Arc<Self>, id: u64) {
        let result = self.login(id).await;
        let mut s = self.state.lock();
        s.connecting -= 1;
        match result {
            Ok(conn) if s.paused => {
                // PAUSE came while it logged in: nobody may use it.
                drop(s);
                close_all(vec![conn]);
            }
            Ok(conn) => {
                debug!(server_pid = conn.backend_pid, "server login ok");
                self.stats.server_connects.fetch_add(1, Ordering::Relaxed);
                if s.failing_since.take().is_some() {
                    tracing::info!(target = %self.target().describe(), "server login works again");
                }
                s.last_connect_error = None;
                {
                    let mut w = self.welcome.lock();
                    if w.is_none() {
                        *w = Some(Arc::new(conn.params.clone()));
                    }
                }
                if let Some(conn) = Self::hand_off(&mut s, conn) {
                    s.idle.push(conn);
                }
                // Clients that queued while MAX_CONNECTING logins were in flight
                // still need servers: start the next logins now, not at a release.
                self.spawn_connects(&mut s);
            }
            Err(e) => {
                warn!(error = %e, target = %self.target().describe(), "server login failed");
                self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                s.last_connect_error = Some(e.clone());
                // Nobody can serve the waiters: tell them now rather than at
                // query_wait_timeout.
                if s.total() == 0 {
                    s.failing_since.get_or_insert_with(Instant::now);
                    for w in s.waiters.drain(..) {
                        let _ = w.tx.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    async fn login(self: &Arc<Self>, id: u64) -> Result<ServerConn, ConnectError> {
        let mut permits: Vec<OwnedSemaphorePermit> = Vec::with_capacity(self.limits.len());
        for limit in &self.limits {
            let permit = Arc::clone(limit)
                .acquire_owned()
                .await
                .map_err(|_| ConnectError::Protocol("pooler is shutting down".into()))?;
            permits.push(permit);
        }
        let generation = self.target_gen.load(Ordering::Relaxed);
        let mut conn = ServerConn::connect(
            id,
            self.target(),
            self.settings().connect_timeout,
            self.settings().max_packet,
        )
        .await?;
        conn._permits = permits;
        conn.target_gen = generation;
        if let Some(meta) = Arc::get_mut(&mut conn.meta) {
            meta.target_gen = generation;
        }
        self.servers.lock().insert(id, Arc::clone(&conn.meta));
        let pool = Arc::downgrade(self);
        conn.registration = Some(Registration(Box::new(move |lent| {
            if let Some(pool) = pool.upgrade() {
                pool.servers.lock().remove(&id);
                if let Some(hold) = lent {
                    pool.lost_while_lent(hold);
                }
            }
        })));
        Ok(conn)
    }

    /// A lent server was dropped without [`Pool::release`] (its session failed): its
    /// slot and its lane's count come back, and the queue is served. Runs from a
    /// Drop, maybe under this pool's lock, so the accounting is done in a task.
    fn lost_while_lent(self: Arc<Self>, hold: Hold) {
        warn!(db = %self.db, user = %self.user, "a server was dropped while lent to a client: its slot is returned");
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut s = self.state.lock();
            s.give_back(Some(&hold));
            self.serve_idle(&mut s);
            self.spawn_connects(&mut s);
        });
    }

    /// Closes one idle server (to make room under a shared db/user limit).
    pub fn evict_one_idle(&self) -> bool {
        let conn = {
            let mut s = self.state.lock();
            if s.idle.is_empty() {
                return false;
            }
            // The least recently used one.
            s.idle.remove(0)
        };
        close_all(vec![conn]);
        true
    }

    /// A waiter that has waited `reserve_pool_timeout` may open the reserve.
    fn kick(self: &Arc<Self>) {
        let mut s = self.state.lock();
        self.spawn_connects(&mut s);
    }

    /// Closes idle servers that died, or are past their lifetime or idle timeout
    /// (keeping min_pool_size of the live ones; housekeeping then refills it).
    pub fn close_expired(&self) {
        let now = Instant::now();
        let expired = {
            let mut s = self.state.lock();
            let mut keep = Vec::with_capacity(s.idle.len());
            let mut expired = Vec::new();
            let mut total = s.total();
            let settings = Arc::clone(&s.settings);
            for conn in s.idle.drain(..) {
                let old = total > settings.min_size && conn.expired(now, settings.lifetime, settings.idle_timeout);
                if old || conn.is_dead() {
                    total -= 1;
                    expired.push(conn);
                } else {
                    keep.push(conn);
                }
            }
            s.idle = keep;
            expired
        };
        close_all(expired);
    }

    pub fn last_connect_error(&self) -> Option<ConnectError> {
        self.state.lock().last_connect_error.clone()
    }
}

fn close_all(conns: Vec<ServerConn>) {
    if conns.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for c in conns {
            c.terminate().await;
        }
    });
}

/// A place in a pool's queue. Dropping it leaves the queue (cancel safety).
struct Checkout<'a> {
    pool: &'a Arc<Pool>,
    id: u64,
    lane: usize,
    rx: Option<oneshot::Receiver<Delivery>>,
}

impl Checkout<'_> {
    async fn wait(&mut self) -> Result<ServerConn, AcquireError> {
        let settings = self.pool.settings();
        let started = Instant::now();
        let deadline = settings
            .lanes
            .wait_timeout(self.lane, settings.query_wait_timeout)
            .map(|t| tokio::time::Instant::from_std(started + t));
        let reserve_at =
            (settings.reserve_size > 0).then(|| tokio::time::Instant::from_std(started + settings.reserve_timeout));
        let mut reserve_kicked = false;
        let Some(rx) = self.rx.as_mut() else {
            return Err(AcquireError::WaitTimeout(self.queued()));
        };
        loop {
            tokio::select! {
                delivered = &mut *rx => {
                    self.rx = None;
                    return match delivered {
                        Ok(Ok(conn)) => Ok(conn),
                        Ok(Err(e)) => Err(AcquireError::Connect(e)),
                        // The pool went away.
                        Err(_) => Err(AcquireError::Connect(ConnectError::Protocol("pool closed".into()))),
                    };
                }
                _ = sleep_until_opt(reserve_at), if !reserve_kicked => {
                    reserve_kicked = true;
                    self.pool.kick();
                }
                _ = sleep_until_opt(deadline) => return Err(AcquireError::WaitTimeout(self.queued())),
            }
        }
    }
}

impl Checkout<'_> {
    /// Where this waiter stands in its lane.
    fn queued(&self) -> Queued {
        let s = self.pool.state.lock();
        let same = s.waiters.iter().filter(|w| w.ticket.lane == self.lane);
        let (mut ahead, mut waiting) = (0, 0);
        for w in same {
            waiting += 1;
            if w.id < self.id {
                ahead += 1;
            }
        }
        Queued {
            lane: self.lane,
            ahead,
            waiting,
        }
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
pub(crate) async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut s = self.pool.state.lock();
        if let Some(pos) = s.waiters.iter().position(|w| w.id == self.id) {
            s.waiters.remove(pos);
            return;
        }
        drop(s);
        // Already popped: a server (or an error) was sent under the lock we just held.
        if let Ok(Ok(mut conn)) = rx.try_recv() {
            // Never used: nothing to learn from its hold.
            if let Some(h) = conn.hold.as_mut() {
                h.ticket.fingerprint = 0;
            }
            self.pool.release(conn, true);
        }
    }
}

impl Pool {
    /// The pool's current settings (cheap: an atomic load).
    #[inline]
    pub fn settings(&self) -> arc_swap::Guard<Arc<PoolSettings>> {
        self.settings_cell.load()
    }

    /// Where the pool's servers log in now.
    pub fn target(&self) -> Arc<ServerTarget> {
        self.target_cell.load_full()
    }

    /// Applies a reloaded configuration: new sizes and timeouts take effect at once
    /// (waiting clients may get new servers); servers of a changed target are closed
    /// as they are released.
    pub fn update(self: &Arc<Self>, target: ServerTarget, settings: PoolSettings) {
        if *self.target_cell.load_full() != target {
            self.target_cell.store(Arc::new(target));
            self.target_gen.fetch_add(1, Ordering::Relaxed);
            let idle = std::mem::take(&mut self.state.lock().idle);
            close_all(idle);
            // Another server may judge SETs otherwise.
            self.local_sets.lock().clear();
        }
        let settings = Arc::new(settings);
        self.settings_cell.store(Arc::clone(&settings));
        {
            let mut s = self.state.lock();
            let names = |l: &LaneSet| l.lanes.iter().map(|d| d.name.clone()).collect::<Vec<_>>();
            if names(&s.settings.lanes) != names(&settings.lanes) {
                // Lanes renumbered: counts start over (servers lent before are not
                // counted against the new lanes).
                s.holders = vec![0; settings.lanes.lanes.len()];
                s.lanes_gen += 1;
            }
            s.settings = settings;
            self.serve_idle(&mut s);
        }
        self.kick();
    }

    /// True when every shared limit this pool is under has a free permit.
    pub fn limits_free(&self) -> bool {
        self.limits.iter().all(|l| l.available_permits() > 0)
    }

    /// True when both pools draw from one max_db_connections/max_user_connections limit.
    pub fn shares_limit_with(&self, other: &Pool) -> bool {
        self.limits
            .iter()
            .any(|a| other.limits.iter().any(|b| Arc::ptr_eq(a, b)))
    }
}

/// What a server connection is doing, as SHOW SERVERS names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Active,
    Idle,
}

impl ServerState {
    pub fn name(self) -> &'static str {
        match self {
            ServerState::Active => "active",
            ServerState::Idle => "idle",
        }
    }
}

/// One row of SHOW SERVERS.
pub struct ServerRow {
    pub meta: Arc<ServerMeta>,
    pub state: ServerState,
    /// RECONNECT, or a reload that moved the database: it closes when released.
    pub close_needed: bool,
}

impl Pool {
    /// Every open server connection with its state.
    pub fn server_rows(&self) -> Vec<ServerRow> {
        let idle: Vec<u64> = self.state.lock().idle.iter().map(|c| c.id).collect();
        let generation = self.target_gen.load(Ordering::Relaxed);
        let mut rows: Vec<ServerRow> = self
            .servers
            .lock()
            .values()
            .map(|m| ServerRow {
                meta: Arc::clone(m),
                state: if idle.contains(&m.id) {
                    ServerState::Idle
                } else {
                    ServerState::Active
                },
                close_needed: m.target_gen != generation,
            })
            .collect();
        rows.sort_by_key(|r| r.meta.id);
        rows
    }

    /// Servers that will close when released (after RECONNECT or a moved target).
    pub fn close_needed(&self) -> usize {
        self.server_rows().iter().filter(|r| r.close_needed).count()
    }

    /// Open server connections (idle, linked, and logging in).
    pub fn server_count(&self) -> usize {
        self.state.lock().total()
    }

    /// PAUSE: hand out no server and open none; idle servers close now and linked
    /// ones when released. Clients queue until [`Pool::resume`].
    pub fn pause(&self) {
        let idle = {
            let mut s = self.state.lock();
            s.paused = true;
            std::mem::take(&mut s.idle)
        };
        close_all(idle);
    }

    /// RESUME: serve the queue again.
    pub fn resume(self: &Arc<Self>) {
        let mut s = self.state.lock();
        s.paused = false;
        self.spawn_connects(&mut s);
    }

    /// RECONNECT: every server open now closes when released; idle ones at once.
    pub fn reconnect(&self) {
        self.target_gen.fetch_add(1, Ordering::Relaxed);
        let idle = std::mem::take(&mut self.state.lock().idle);
        close_all(idle);
    }
}

impl Pool {
    /// `server_check_query`: idle servers unused for `server_check_delay` are tested
    /// in the background (from housekeeping), so no client ever waits for a check;
    /// a server that fails it is closed. Dead ones are caught without a query by
    /// [`ServerConn::is_dead`] when handed out.
    pub fn check_idle(self: &Arc<Self>) {
        let (due, query) = {
            let mut s = self.state.lock();
            let (Some(delay), Some(query)) = (s.settings.check_delay, s.settings.check_query.clone()) else {
                return;
            };
            if s.paused {
                return;
            }
            let now = Instant::now();
            let (due, keep): (Vec<ServerConn>, Vec<ServerConn>) = std::mem::take(&mut s.idle)
                .into_iter()
                .partition(|c| now.duration_since(c.last_used) >= delay);
            s.idle = keep;
            s.testing += due.len();
            (due, query)
        };
        if due.is_empty() {
            return;
        }
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            for mut conn in due {
                let ok = tokio::time::timeout(Duration::from_secs(10), conn.simple_query(&query))
                    .await
                    .is_ok_and(|r| r.is_ok());
                let mut s = pool.state.lock();
                s.testing -= 1;
                if !ok || s.paused {
                    debug!(server = conn.id, "server_check_query failed: closing the server");
                    drop(s);
                    close_all(vec![conn]);
                    continue;
                }
                conn.last_used = Instant::now();
                if let Some(conn) = Self::hand_off(&mut s, conn) {
                    s.idle.push(conn);
                }
            }
        });
    }
}

impl Pool {
    /// The error to answer at once while logins fail and no server is up.
    fn cached_failure(&self, s: &State) -> Option<ConnectError> {
        s.settings.login_retry?;
        if s.failing_since.is_none() || s.total() > 0 || s.paused {
            return None;
        }
        s.last_connect_error.clone()
    }

    /// Housekeeping: while logins fail, one login at a time is retried in the
    /// background every [`RETRY_TICK`] (or `server_login_retry` if shorter), so
    /// service resumes as soon as PostgreSQL accepts logins again. PgBouncer instead
    /// waits `server_login_retry` (15 s) before trying again.
    ///
    /// Clients still queued get logins too: a login that failed while other servers
    /// were up (busy with long transactions, or dying one by one in a restart) left
    /// them in the queue, and no release may come for a long time. Every waiter ends
    /// served or with an error; none is left with nothing under way for it.
    pub fn retry_failed_login(self: &Arc<Self>) {
        let mut s = self.state.lock();
        if s.paused {
            return;
        }
        if !s.waiters.is_empty() {
            // Starts only what the queue needs beyond the logins in flight.
            self.spawn_connects(&mut s);
        }
        let Some(retry) = s.settings.login_retry else { return };
        // Sluice does not make clients wait out the whole server_login_retry.
        let every = retry.min(RETRY_TICK);
        if s.failing_since.is_none() || s.connecting > 0 {
            return;
        }
        let now = Instant::now();
        if s.last_retry.is_some_and(|t| now.duration_since(t) < every) {
            return;
        }
        s.last_retry = Some(now);
        self.spawn_connect(&mut s);
    }
}

/// One lane of one pool, as SHOW LANES shows it.
#[derive(Debug, Clone, Default)]
pub struct LaneCounts {
    /// Servers it holds now.
    pub holders: usize,
    /// Of those, held by clients inside a transaction block.
    pub in_transaction: usize,
    pub waiting: usize,
    pub oldest_wait: Duration,
    /// Its cap at the pool's current capacity (None: none).
    pub cap: Option<usize>,
}

impl Pool {
    /// Per lane: servers held, clients waiting, the longest wait, the cap now.
    pub fn lane_counts(&self) -> Vec<LaneCounts> {
        let mut out: Vec<LaneCounts> = {
            let s = self.state.lock();
            let capacity = s.capacity();
            let lanes = &s.settings.lanes;
            (0..lanes.lanes.len())
                .map(|l| LaneCounts {
                    holders: s.holders.get(l).copied().unwrap_or(0),
                    cap: Some(lanes.cap(l, capacity)).filter(|&c| c != usize::MAX),
                    waiting: s.waiting_in(l),
                    oldest_wait: s
                        .waiters
                        .iter()
                        .find(|w| w.ticket.lane == l)
                        .map(|w| w.since.elapsed())
                        .unwrap_or_default(),
                    ..LaneCounts::default()
                })
                .collect()
        };
        for m in self.servers.lock().values() {
            if m.linked_client.load(Ordering::Relaxed) != 0 && m.in_transaction.load(Ordering::Relaxed) {
                if let Some(c) = out.get_mut(m.lane.load(Ordering::Relaxed)) {
                    c.in_transaction += 1;
                }
            }
        }
        out
    }

    /// Housekeeping: holds still running count towards their fingerprint's learned
    /// time once they are longer than it, so a kind of transaction that has started
    /// to hold servers for minutes is held back before the first one ends.
    pub fn observe_running(&self) {
        let threshold = self.settings().lanes.slow_threshold;
        if !self.settings().lanes.protection {
            return;
        }
        let now = crate::server::unix_micros(std::time::SystemTime::now());
        let long: Vec<(u64, Duration)> = self
            .servers
            .lock()
            .values()
            .filter(|m| m.linked_client.load(Ordering::Relaxed) != 0)
            .filter_map(|m| {
                let fp = m.fingerprint.load(Ordering::Relaxed);
                let held = Duration::from_micros(now.saturating_sub(m.request_time_us.load(Ordering::Relaxed)));
                (fp != 0 && held >= threshold).then_some((fp, held))
            })
            .collect();
        if long.is_empty() {
            return;
        }
        let mut learned = self.learned.lock();
        for (fp, held) in long {
            learned.running(fp, held);
        }
    }
}

impl Pool {
    /// What a lone SET did when it last ran under the same settings, if known.
    pub fn known_set(&self, key: &SetKey) -> Option<SetOutcome> {
        self.local_sets.lock().get(key).cloned()
    }

    /// A lone SET succeeded on a server with these ParameterStatus values.
    pub fn remember_set(&self, key: SetKey, reported: Vec<(String, String)>) {
        let mut sets = self.local_sets.lock();
        if sets.len() >= MAX_LOCAL_SETS {
            sets.clear();
        }
        sets.insert(key, Arc::new(reported));
    }
}

impl Pool {
    fn lane_labels(&self, s: &State, lane: usize) -> [(&'static str, String); 3] {
        [
            ("database", self.db.clone()),
            ("user", self.user.clone()),
            ("lane", s.settings.lanes.name(lane).to_owned()),
        ]
    }

    /// A client of `lane` got a server after waiting `waited` (metrics).
    pub fn lane_waited(&self, lane: usize, waited: Duration) {
        if crate::telemetry::recording() {
            let labels = self.lane_labels(&self.state.lock(), lane);
            metrics::histogram!("sluice_lane_wait_seconds", &labels).record(waited.as_secs_f64());
        }
    }

    /// Counts one event of `lane` in the counter `metric` (labels database, user,
    /// lane): a refused wait, a full queue, abandoned work.
    pub fn lane_count(&self, lane: usize, metric: &'static str) {
        if crate::telemetry::recording() {
            let labels = self.lane_labels(&self.state.lock(), lane);
            metrics::counter!(metric, &labels).increment(1);
        }
    }
}
