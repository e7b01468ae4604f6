//! The registry of connected clients: their cancel keys, what SHOW CLIENTS shows of
//! them, and the switch KILL / KILL_CLIENT uses to end a session.
//!
//! Cancel requests.
//!
//! Each client is given a (pid, key) pair made by Sluice at login and registered here
//! with a [`ClientLink`]: what the client is doing right now. A CancelRequest with a
//! known key then:
//! - for a client linked to a server: opens a short connection to that server and
//!   sends the *server's* own key. Cancels never wait in the client queue and do not
//!   count against pool sizes; they are bounded by their own semaphore.
//! - for a client waiting in a pool's queue: takes it out of the queue; it gets
//!   `ERROR 57014 canceling statement due to user request` and stays connected.
//! - for an idle client, or an unknown key: nothing (as PostgreSQL does).
//!
//! A server is not released from a client while a cancel for it is in flight
//! ([`ClientLink::unlink`] waits), so a cancel can never reach the next client's query.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use atomic_waker::AtomicWaker;

use bytes::BytesMut;
use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, warn};

use crate::pool::Pool;
use crate::server::{unix_micros, ServerTarget};
use crate::stream::Endpoints;

/// Cancels in flight at once, across all pools.
const MAX_CANCELS_IN_FLIGHT: usize = 64;

#[derive(Debug, Clone, Default)]
enum State {
    #[default]
    Idle,
    Waiting {
        since: Instant,
    },
    Linked {
        pid: i32,
        key: i32,
        target: Arc<ServerTarget>,
    },
}

/// Who a client is, once logged in.
pub struct ClientLogin {
    pub db: String,
    pub user: String,
    pub application_name: String,
    /// None for the admin console.
    pub pool: Option<Arc<Pool>>,
    /// TLS protocol/cipher/key exchange; empty in plaintext.
    pub tls: String,
}

/// What SHOW CLIENTS shows of one client.
pub struct ClientRow {
    pub id: u64,
    pub endpoints: Endpoints,
    pub connect_time: SystemTime,
    pub request_time_us: u64,
    pub db: String,
    pub user: String,
    pub application_name: String,
    /// "active" (linked), "idle", "waiting", or "active_cancel_req".
    pub state: &'static str,
    pub waiting: Duration,
    /// The server it is linked to.
    pub server_id: Option<u64>,
    pub pool: Option<Arc<Pool>>,
    pub tls: String,
}

/// Ends a session from outside (KILL, KILL_CLIENT): a flag and the session's waker.
#[derive(Default)]
pub struct Kill {
    flag: AtomicBool,
    waker: AtomicWaker,
}

impl Kill {
    pub fn kill(&self) {
        self.flag.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub fn is_killed(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Ready once killed; registers the task to be woken otherwise.
    pub fn poll_killed(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.is_killed() {
            return std::task::Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.is_killed() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// Resolves once killed.
    pub async fn killed(&self) {
        std::future::poll_fn(|cx| self.poll_killed(cx)).await
    }
}

/// What one client is doing, as far as cancelling it goes, and who it is.
pub struct ClientLink {
    pub id: u64,
    pub endpoints: Endpoints,
    pub connect_time: SystemTime,
    pub login: OnceLock<ClientLogin>,
    /// Microseconds since the epoch of its last request for a server.
    pub request_time_us: AtomicU64,
    /// The server linked to it, if any.
    pub server_id: AtomicU64,
    pub kill: Kill,
    state: Mutex<(State, bool)>,
    /// Wakes a session waiting to unlink while a cancel is in flight.
    cancel_done: Notify,
    /// Wakes a session waiting in a queue whose wait was cancelled.
    queue_cancelled: Notify,
}

impl ClientLink {
    /// The client queues for a server.
    pub fn waiting(&self) {
        self.state.lock().0 = State::Waiting { since: Instant::now() };
        self.request_time_us
            .store(unix_micros(SystemTime::now()), Ordering::Relaxed);
    }

    /// Records the server lent to this client (SHOW CLIENTS / SHOW SERVERS).
    #[inline]
    pub fn linked_to(&self, server: &crate::server::ServerMeta) {
        let at = server.link(self.id);
        self.server_id.store(server.id, Ordering::Relaxed);
        self.request_time_us.store(at, Ordering::Relaxed);
    }

    /// The client's wait ended without a server (an error, a timeout, a full queue,
    /// a cancel): it is idle again.
    pub fn wait_over(&self) {
        let mut s = self.state.lock();
        if matches!(s.0, State::Waiting { .. }) {
            s.0 = State::Idle;
        }
    }

    /// The client got a server without waiting: one step from idle to linked.
    pub fn link_now(&self, pid: i32, key: i32, target: Arc<ServerTarget>) {
        self.state.lock().0 = State::Linked { pid, key, target };
    }

    /// The client got a server. False if a cancel took it out of the queue first.
    pub fn try_link(&self, pid: i32, key: i32, target: Arc<ServerTarget>) -> bool {
        let mut s = self.state.lock();
        if !matches!(s.0, State::Waiting { .. }) {
            return false;
        }
        s.0 = State::Linked { pid, key, target };
        true
    }

    /// The client is about to give its server back: waits for a cancel in flight.
    pub async fn unlink(&self) {
        loop {
            let notified = self.cancel_done.notified();
            {
                let mut s = self.state.lock();
                if !s.1 {
                    s.0 = State::Idle;
                    return;
                }
            }
            notified.await;
        }
    }

    /// A future that resolves when a cancel takes this client out of its queue.
    /// Enable it before checking [`ClientLink::still_waiting`], so no wake-up is lost.
    pub fn queue_cancelled(&self) -> tokio::sync::futures::Notified<'_> {
        self.queue_cancelled.notified()
    }

    pub fn still_waiting(&self) -> bool {
        matches!(self.state.lock().0, State::Waiting { .. })
    }

    /// A row of SHOW CLIENTS; None before login completes.
    pub fn row(&self) -> Option<ClientRow> {
        let login = self.login.get()?;
        let (state, cancelling) = self.state.lock().clone();
        let (state, waiting) = match state {
            State::Idle => ("idle", Duration::ZERO),
            State::Waiting { since } => ("waiting", since.elapsed()),
            State::Linked { .. } if cancelling => ("active_cancel_req", Duration::ZERO),
            State::Linked { .. } => ("active", Duration::ZERO),
        };
        let server_id = self.server_id.load(Ordering::Relaxed);
        Some(ClientRow {
            id: self.id,
            endpoints: self.endpoints.clone(),
            connect_time: self.connect_time,
            request_time_us: self.request_time_us.load(Ordering::Relaxed),
            db: login.db.clone(),
            user: login.user.clone(),
            application_name: login.application_name.clone(),
            state,
            waiting,
            server_id: (state != "idle" && state != "waiting" && server_id != 0).then_some(server_id),
            pool: login.pool.clone(),
            tls: login.tls.clone(),
        })
    }
}

/// Keys Sluice gave its clients.
pub struct Registry {
    clients: DashMap<(i32, i32), Arc<ClientLink>>,
    in_flight: Arc<Semaphore>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            clients: DashMap::new(),
            in_flight: Arc::new(Semaphore::new(MAX_CANCELS_IN_FLIGHT)),
        }
    }
}

/// Removes a client's key when its session ends.
pub struct Registration<'a> {
    registry: &'a Registry,
    pub pid: i32,
    pub key: i32,
    pub link: Arc<ClientLink>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.clients.remove(&(self.pid, self.key));
    }
}

impl Registry {
    /// Every logged-in client (SHOW CLIENTS), oldest first.
    pub fn clients(&self) -> Vec<Arc<ClientLink>> {
        let mut all: Vec<Arc<ClientLink>> = self.clients.iter().map(|e| Arc::clone(e.value())).collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// Gives a client a fresh, unused key.
    pub fn register(&self, id: u64, endpoints: Endpoints) -> Registration<'_> {
        let link = Arc::new(ClientLink {
            id,
            endpoints,
            connect_time: SystemTime::now(),
            login: OnceLock::new(),
            request_time_us: AtomicU64::new(0),
            server_id: AtomicU64::new(0),
            kill: Kill::default(),
            state: Mutex::new((State::Idle, false)),
            cancel_done: Notify::new(),
            queue_cancelled: Notify::new(),
        });
        loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            let key = rand::random::<i32>();
            if let dashmap::Entry::Vacant(v) = self.clients.entry((pid, key)) {
                v.insert(Arc::clone(&link));
                return Registration {
                    registry: self,
                    pid,
                    key,
                    link,
                };
            }
        }
    }

    /// Acts on a CancelRequest. Never fails towards the requester: like PostgreSQL,
    /// Sluice answers a cancel by closing the connection.
    pub async fn cancel(&self, pid: i32, key: i32, connect_timeout: Duration) {
        let Some(link) = self.clients.get(&(pid, key)).map(|l| Arc::clone(&l)) else {
            debug!(pid, "cancel request with an unknown key dropped");
            return;
        };
        let linked = {
            let mut s = link.state.lock();
            match &s.0 {
                State::Linked { pid, key, target } => {
                    if let Some(pool) = link.login.get().and_then(|l| l.pool.as_ref()) {
                        pool.stats.cancels.fetch_add(1, Ordering::Relaxed);
                    }
                    let found = (*pid, *key, Arc::clone(target));
                    s.1 = true;
                    Some(found)
                }
                State::Waiting { .. } => {
                    s.0 = State::Idle;
                    // notify_waiters stores no permit: a session that is not waiting
                    // right now sees the state change instead (try_link fails).
                    link.queue_cancelled.notify_waiters();
                    None
                }
                State::Idle => None,
            }
        };
        let Some((server_pid, server_key, target)) = linked else {
            return;
        };
        let _slot = Arc::clone(&self.in_flight).acquire_owned().await;
        match tokio::time::timeout(connect_timeout, send_cancel(&target, server_pid, server_key)).await {
            Ok(Ok(())) => debug!(server_pid, "cancel sent to server"),
            Ok(Err(e)) => warn!(server_pid, error = %e, "cancel request to server failed"),
            Err(_) => warn!(server_pid, "cancel request to server timed out"),
        }
        link.state.lock().1 = false;
        link.cancel_done.notify_waiters();
    }
}

/// Cancels whatever a server runs (a client that gave up on it), bounded in time.
pub async fn cancel_server(target: &ServerTarget, pid: i32, key: i32) {
    match tokio::time::timeout(Duration::from_secs(10), send_cancel(target, pid, key)).await {
        Ok(Ok(())) => debug!(server_pid = pid, "abandoned query cancelled on the server"),
        Ok(Err(e)) => warn!(server_pid = pid, error = %e, "cancel request to server failed"),
        Err(_) => warn!(server_pid = pid, "cancel request to server timed out"),
    }
}

/// Sends a CancelRequest and waits until PostgreSQL closes the connection: by then it
/// has signalled the backend.
async fn send_cancel(target: &ServerTarget, pid: i32, key: i32) -> std::io::Result<()> {
    let mut packet = BytesMut::with_capacity(16);
    sluice_wire::startup::write_cancel_request(&mut packet, pid, key);
    let mut sink = [0u8; 64];
    if target.host.starts_with('/') {
        let mut s = UnixStream::connect(target.describe()).await?;
        s.write_all(&packet).await?;
        while s.read(&mut sink).await? > 0 {}
    } else {
        let mut s = TcpStream::connect((target.host.as_str(), target.port)).await?;
        s.write_all(&packet).await?;
        while s.read(&mut sink).await? > 0 {}
    }
    Ok(())
}
