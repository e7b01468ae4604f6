//! The pool's queue without PostgreSQL: every way a waiter can leave it (served from
//! the idle list, by a release, by a new login; failed by a login error, its timeout,
//! a full queue; gone while waiting) and the slots behind them.
//!
//! Servers log in to [`FakeServer`], an in-process listener on a Unix socket that
//! answers a startup packet with AuthenticationOk, BackendKeyData and ReadyForQuery,
//! or, while told to, with PostgreSQL's FATAL for a server that is starting up.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use super::*;
use crate::overload::LaneSet;
use crate::server::ServerTarget;

struct FakeServer {
    _dir: tempfile::TempDir,
    target: ServerTarget,
    /// Logins are refused (57P03) while set.
    refusing: Arc<AtomicBool>,
    /// Logins answered, accepted or refused.
    logins: Arc<AtomicUsize>,
}

impl FakeServer {
    async fn start() -> FakeServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = 5432;
        let listener = UnixListener::bind(dir.path().join(format!(".s.PGSQL.{port}"))).expect("bind");
        let refusing = Arc::new(AtomicBool::new(false));
        let logins = Arc::new(AtomicUsize::new(0));
        let (r, l) = (Arc::clone(&refusing), Arc::clone(&logins));
        tokio::spawn(async move {
            let mut pid: i32 = 1000;
            while let Ok((mut sock, _)) = listener.accept().await {
                pid += 1;
                let (refuse, logins) = (r.load(Ordering::SeqCst), Arc::clone(&l));
                tokio::spawn(async move {
                    let Ok(len) = sock.read_u32().await else { return };
                    let mut startup = vec![0; len.saturating_sub(4) as usize];
                    if sock.read_exact(&mut startup).await.is_err() {
                        return;
                    }
                    logins.fetch_add(1, Ordering::SeqCst);
                    let mut out = BytesMut::new();
                    if refuse {
                        let f = sluice_wire::backend::ErrorFields::new(
                            sluice_wire::backend::Severity::Fatal,
                            "57P03",
                            "the database system is starting up",
                        );
                        sluice_wire::backend::error_response(&mut out, &f);
                        let _ = sock.write_all(&out).await;
                        return;
                    }
                    out.extend_from_slice(b"R\0\0\0\x08\0\0\0\0");
                    out.extend_from_slice(b"K\0\0\0\x0c");
                    out.extend_from_slice(&pid.to_be_bytes());
                    out.extend_from_slice(&7i32.to_be_bytes());
                    sluice_wire::backend::ready_for_query(&mut out, sluice_wire::backend::TxStatus::Idle);
                    if sock.write_all(&out).await.is_err() {
                        return;
                    }
                    // Idle until the pool closes it.
                    let mut sink = [0u8; 64];
                    while matches!(sock.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        let target = ServerTarget {
            host: dir.path().to_string_lossy().into_owned(),
            port,
            dbname: "app".into(),
            user: "app".into(),
            credential: None,
            params: Vec::new(),
            tcp_keepalive: false,
            tls: None,
        };
        FakeServer {
            _dir: dir,
            target,
            refusing,
            logins,
        }
    }

    fn refuse(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }
}

fn settings(size: usize) -> PoolSettings {
    PoolSettings {
        mode: PoolMode::Transaction,
        size,
        min_size: 0,
        reserve_size: 0,
        reserve_timeout: Duration::from_secs(5),
        query_wait_timeout: Some(Duration::from_secs(5)),
        connect_timeout: Some(Duration::from_secs(2)),
        lifetime: None,
        idle_timeout: None,
        max_packet: u32::MAX,
        timeouts: crate::client::Timeouts::default(),
        reset_query: None,
        reset_always: false,
        wait_notify: None,
        login_retry: Some(Duration::from_secs(15)),
        check_delay: None,
        check_query: None,
        max_prepared: 0,
        lanes: Arc::new(LaneSet::new(
            false,
            Vec::new(),
            2.0 / 3.0,
            Duration::from_millis(500),
            None,
        )),
    }
}

fn pool(server: &FakeServer, settings: PoolSettings) -> Arc<Pool> {
    Pool::new("app".into(), "app".into(), server.target.clone(), settings, Vec::new())
}

/// Waits (bounded) until `cond` holds of the pool's counts.
async fn until(pool: &Pool, what: &str, cond: impl Fn(&PoolCounts) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let c = pool.counts();
        if cond(&c) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {c:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts an acquire in a task: a waiter that stays in the queue until served.
fn waiter(pool: &Arc<Pool>) -> tokio::task::JoinHandle<Result<ServerConn, AcquireError>> {
    let pool = Arc::clone(pool);
    tokio::spawn(async move { pool.acquire(Ticket::default()).await })
}

#[tokio::test]
async fn an_idle_server_serves_at_once_and_a_new_login_serves_a_waiter() {
    let fake = FakeServer::start().await;
    let pool = pool(&fake, settings(2));
    // Nothing idle: the client waits for a login, which serves it.
    let first = pool.acquire(Ticket::default()).await.expect("served by a login");
    assert_eq!(pool.counts().active, 1);
    pool.release(first, true);
    assert_eq!((pool.counts().active, pool.counts().idle), (0, 1));
    // Idle now: taken without queueing, and no second login.
    let again = pool.try_acquire(Ticket::default()).expect("idle server");
    assert_eq!(fake.logins.load(Ordering::SeqCst), 1);
    pool.release(again, true);
}

#[tokio::test]
async fn a_release_hands_the_server_to_the_oldest_waiter() {
    let fake = FakeServer::start().await;
    let pool = pool(&fake, settings(1));
    let held = pool.acquire(Ticket::default()).await.expect("server");
    let a = waiter(&pool);
    until(&pool, "a queued", |c| c.waiting == 1).await;
    let b = waiter(&pool);
    until(&pool, "b queued", |c| c.waiting == 2).await;
    let id = held.id;
    pool.release(held, true);
    let got = a.await.expect("task").expect("a is served first");
    assert_eq!(got.id, id, "handed over, not a new login");
    assert_eq!(pool.counts().waiting, 1);
    pool.release(got, true);
    let got = b.await.expect("task").expect("b is served next");
    pool.release(got, true);
    let c = pool.counts();
    assert_eq!((c.active, c.waiting, c.idle), (0, 0, 1));
}

#[tokio::test]
async fn a_failed_login_with_no_server_up_fails_every_waiter_and_the_retry_serves_again() {
    let fake = FakeServer::start().await;
    let pool = pool(&fake, settings(2));
    fake.refuse(true);
    let (a, b) = (waiter(&pool), waiter(&pool));
    for w in [a, b] {
        match w.await.expect("task") {
            Err(AcquireError::Connect(ConnectError::Rejected(e))) => assert_eq!(e.code, "57P03"),
            Err(e) => panic!("expected the server's refusal, got {e}"),
            Ok(_) => panic!("expected the server's refusal, got a server"),
        }
    }
    assert_eq!(pool.counts().waiting, 0);
    // While logins fail and no server is up, the next client hears it at once.
    match pool.acquire(Ticket::default()).await {
        Err(AcquireError::Connect(ConnectError::Failing(_))) => {}
        _ => panic!("expected the cached login error"),
    }
    // PostgreSQL is back: the background retry (housekeeping) logs in, and clients
    // are served again.
    fake.refuse(false);
    tokio::time::sleep(RETRY_TICK).await;
    pool.retry_failed_login();
    until(&pool, "the retry's server", |c| c.idle == 1).await;
    let server = pool.acquire(Ticket::default()).await.expect("served");
    pool.release(server, true);
}

#[tokio::test]
async fn waiters_left_queued_by_a_failed_login_get_a_login_when_the_server_is_back() {
    let fake = FakeServer::start().await;
    let pool = pool(&fake, settings(2));
    // One server is up and held by a long transaction.
    let held = pool.acquire(Ticket::default()).await.expect("server");
    fake.refuse(true);
    let w = waiter(&pool);
    // Its login fails while another server is up: the waiter stays in the queue.
    until(&pool, "the failed login", |c| c.connecting == 0 && c.waiting == 1).await;
    assert_eq!(fake.logins.load(Ordering::SeqCst), 2);
    fake.refuse(false);
    // No release comes; housekeeping starts the login the queue needs.
    pool.retry_failed_login();
    let got = tokio::time::timeout(Duration::from_secs(3), w)
        .await
        .expect("the waiter is served, not left to its query_wait_timeout")
        .expect("task")
        .expect("a server");
    assert_ne!(got.id, held.id);
    pool.release(got, true);
    pool.release(held, true);
    assert_eq!(pool.counts().active, 0);
}

#[tokio::test]
async fn a_wait_ends_at_query_wait_timeout_and_leaves_the_queue() {
    let fake = FakeServer::start().await;
    let mut s = settings(1);
    s.query_wait_timeout = Some(Duration::from_millis(200));
    let pool = pool(&fake, s);
    let held = pool.acquire(Ticket::default()).await.expect("server");
    let first = waiter(&pool);
    until(&pool, "queued", |c| c.waiting == 1).await;
    let behind = waiter(&pool);
    until(&pool, "queued", |c| c.waiting == 2).await;
    match first.await.expect("task") {
        // Where it stood when its wait ended: first of two.
        Err(AcquireError::WaitTimeout(q)) => assert_eq!((q.ahead, q.waiting), (0, 2)),
        _ => panic!("expected query_wait_timeout"),
    }
    assert!(behind.await.expect("task").is_err(), "the second waiter timed out too");
    assert_eq!(pool.counts().waiting, 0);
    pool.release(held, true);
    assert_eq!((pool.counts().active, pool.counts().idle), (0, 1));
}

#[tokio::test]
async fn a_client_that_leaves_while_waiting_leaves_the_queue_and_loses_no_server() {
    let fake = FakeServer::start().await;
    let pool = pool(&fake, settings(1));
    let held = pool.acquire(Ticket::default()).await.expect("server");
    let gone = waiter(&pool);
    until(&pool, "queued", |c| c.waiting == 1).await;
    gone.abort();
    let _ = gone.await;
    assert_eq!(pool.counts().waiting, 0);

    // A server handed over in the very instant the client leaves comes back.
    let mut acquire = Box::pin(pool.acquire(Ticket::default()));
    assert!(futures_poll_once(acquire.as_mut()).await.is_none(), "queued");
    pool.release(held, true);
    drop(acquire);
    let c = pool.counts();
    assert_eq!((c.active, c.waiting, c.idle), (0, 0, 1));
}

#[tokio::test]
async fn a_full_lane_queue_refuses_at_once() {
    let fake = FakeServer::start().await;
    let mut s = settings(1);
    s.lanes = Arc::new(LaneSet::new(
        true,
        Vec::new(),
        2.0 / 3.0,
        Duration::from_millis(500),
        Some(1),
    ));
    let pool = pool(&fake, s);
    let held = pool.acquire(Ticket::default()).await.expect("server");
    let queued = waiter(&pool);
    until(&pool, "queued", |c| c.waiting == 1).await;
    match pool.acquire(Ticket::default()).await {
        Err(AcquireError::QueueFull(q)) => assert_eq!(q.waiting, 1),
        _ => panic!("expected a full queue"),
    }
    pool.release(held, true);
    let got = queued.await.expect("task").expect("the queued one is served");
    pool.release(got, true);
}

#[tokio::test]
async fn paused_pools_keep_waiters_until_resume() {
    let fake = FakeServer::start().await;
    let pool = pool(&fake, settings(1));
    pool.pause();
    let w = waiter(&pool);
    until(&pool, "queued", |c| c.waiting == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.logins.load(Ordering::SeqCst), 0, "no login while paused");
    pool.resume();
    let got = w.await.expect("task").expect("served after RESUME");
    pool.release(got, true);
}

#[tokio::test]
async fn a_server_dropped_while_lent_gives_its_slot_back() {
    let fake = FakeServer::start().await;
    let pool = pool(&fake, settings(1));
    let lent = pool.acquire(Ticket::default()).await.expect("server");
    let w = waiter(&pool);
    until(&pool, "queued", |c| c.waiting == 1).await;
    // A session task that fails without releasing its server.
    drop(lent);
    let got = tokio::time::timeout(Duration::from_secs(3), w)
        .await
        .expect("the waiter is served by a new login")
        .expect("task")
        .expect("a server");
    assert_eq!(pool.counts().active, 1);
    pool.release(got, true);
    assert_eq!(pool.counts().active, 0);
}

/// Polls `f` once: Some(output) if it completed.
async fn futures_poll_once<F: Future + Unpin>(mut f: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match Pin::new(&mut f).poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
