//! Getting a server: the request's lane and fingerprint ([`classify`]), the wait in
//! the pool's queue while the client is still watched ([`acquire_watching`]), and
//! what a waiting client is told.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sluice_wire::backend::{Severity, TxStatus};
use sluice_wire::frontend::{self};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::debug;

use super::local::answer_dropped;
use super::track::{cstr, front, scan_client, Expired, LocalTx, SetLearning, Timeouts, TxTracker};
use super::{Ctx, Reason, MAX_BUFFERED, READ_CHUNK};
use crate::app::Route;
use crate::cancel::ClientLink;
use crate::client::{send_error, ClientConn};
use crate::errors::ClientError;
use crate::listener::until;
use crate::pool::{sleep_until_opt, AcquireError};
use crate::server::ServerConn;
use crate::shutdown::Shutdown;

/// `query_wait_notify`: why this client waits, while it still waits.
pub(super) fn wait_notice(route: &Route) -> ClientError {
    let c = route.pool.counts();
    let s = route.pool.settings();
    ClientError::fatal(
        "01000",
        format!(
            "waiting for a server connection: pool {}/{} has all {} servers busy",
            route.pool.db, route.pool.user, c.active
        ),
    )
    .at(Severity::Notice)
    .detail(format!(
        "{} {} clients are waiting (the oldest for {:.1} s); pool size {}, reserve {}; servers being opened: {}.",
        crate::overload::explain::wait(&route.pool, None),
        c.waiting,
        c.oldest_wait.as_secs_f64(),
        s.size,
        s.reserve_size,
        c.connecting
    ))
    .hint(match s.query_wait_timeout {
        Some(t) => format!(
            "the wait ends with FATAL query_wait_timeout after {} s",
            t.as_secs_f64()
        ),
        None => "query_wait_timeout is off: the wait has no limit".to_owned(),
    })
}

/// The lane and fingerprint of the request at the front of the client's buffer: its
/// first meaningful statement (after a deferred BEGIN, or a leading `BEGIN;`), tags,
/// application_name and user (see [`crate::overload`]). Also notes a lone SET whose
/// outcome Sluice does not know yet, to learn it.
pub(super) fn classify(route: &Route, client: &ClientConn, tx: &mut TxTracker, user: &str) -> crate::pool::Ticket {
    let (tag, body) = match front(client) {
        Some(h) => {
            let end = h
                .total_len()
                .min(client.buf.len())
                .min(5 + crate::overload::statement::INSPECT + 256);
            (h.tag, &client.buf[5..end])
        }
        _ => (0, &client.buf[..0]),
    };
    let sql: &[u8] = match tag {
        frontend::QUERY => cstr(body),
        frontend::PARSE => {
            let name_end = body.iter().position(|&b| b == 0).map_or(body.len(), |i| i + 1);
            cstr(&body[name_end..])
        }
        _ => &[],
    };
    let deferred = matches!(tx.local_tx, LocalTx::Begun(_));
    let opens = !deferred && crate::overload::statement::opens_block(sql);
    let meaning = if opens {
        crate::overload::statement::after_begin(sql)
    } else {
        sql
    };
    if tag == frontend::QUERY
        && !deferred
        && tx.status == TxStatus::Idle
        && client.scan.forwardable() == client.buf.len()
        && front(client).is_some_and(|h| h.total_len() == client.buf.len())
        && crate::overload::statement::is_lone_set(sql)
    {
        tx.learning_set = Some(SetLearning {
            key: (tx.session.fingerprint, sql.to_vec()),
            reported: Vec::new(),
        });
    }
    let app = tx.session.desired.get("application_name").unwrap_or("");
    let request = crate::overload::Request {
        application_name: app,
        user,
        sql: meaning,
        in_block: deferred || opens,
    };
    let lanes = &route.pool.settings().lanes;
    let mut learned = route.pool.learned.lock();
    let c = lanes.classify(&request, &learned);
    learned.note_with(c.fingerprint, || {
        crate::overload::statement::fingerprint(request.sql, request.in_block).text
    });
    crate::pool::Ticket {
        lane: c.lane,
        fingerprint: c.fingerprint,
        expected: c.expected,
    }
}

/// What a client that wants a new transaction is told during a shutdown.
pub(super) fn shutting_down() -> ClientError {
    ClientError::fatal(sluice_wire::sqlstate::ADMIN_SHUTDOWN, "pooler is shutting down")
        .hint("transactions in flight were allowed to finish; reconnect to reach the next pooler instance")
}

pub(super) enum Waited {
    /// A CancelRequest took the client out of the queue.
    Cancelled,
    /// The pooler stops starting transactions.
    Shutdown,
    ClientGone,
    /// KILL / KILL_CLIENT.
    Killed,
    ClientError(ClientError),
    Pool(AcquireError),
}

/// Waits for a server while watching the client: a client that disconnects leaves the
/// queue at once (dropping the acquire future is cancel-safe), and so does one whose
/// wait is cancelled by a CancelRequest.
pub(super) async fn acquire_watching(
    client: &mut ClientConn,
    tx: &mut TxTracker,
    route: &Route,
    link: &ClientLink,
    shutdown: &mut watch::Receiver<Shutdown>,
    ticket: crate::pool::Ticket,
) -> Result<ServerConn, Waited> {
    let acquire = route.pool.acquire(ticket);
    tokio::pin!(acquire);
    let cancelled = link.queue_cancelled();
    tokio::pin!(cancelled);
    cancelled.as_mut().enable();
    let notify_at = route
        .pool
        .settings()
        .wait_notify
        .map(|d| tokio::time::Instant::now() + d);
    let mut notified = false;
    loop {
        if !link.still_waiting() {
            return Err(Waited::Cancelled);
        }
        let room = client.buf.len() < MAX_BUFFERED;
        if room {
            client.buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            biased;
            got = &mut acquire => {
                let server = got.map_err(Waited::Pool)?;
                if link.try_link(server.backend_pid, server.backend_key, Arc::clone(&server.target)) {
                    return Ok(server);
                }
                // Cancelled in the same instant: the server was never used.
                route.pool.release(server, true);
                return Err(Waited::Cancelled);
            }
            _ = &mut cancelled => return Err(Waited::Cancelled),
            _ = link.kill.killed() => return Err(Waited::Killed),
            _ = until(shutdown, Shutdown::stops_transactions) => return Err(Waited::Shutdown),
            _ = sleep_until_opt(notify_at), if !notified => {
                notified = true;
                let mut out = BytesMut::new();
                wait_notice(route).write(&mut out);
                if client.wr.write_all(&out).await.is_err() {
                    return Err(Waited::ClientGone);
                }
            }
            read = client.rd.read_buf(&mut client.buf), if room => match read {
                Ok(0) | Err(_) => return Err(Waited::ClientGone),
                Ok(_) => scan_client(client, tx, None).map_err(Waited::ClientError)?,
            },
        }
    }
}

/// What a request can have right now, without waiting.
#[allow(clippy::large_enum_variant)] // Moved once per request; boxing would allocate.
pub(super) enum Now {
    /// An idle server, already linked to the client (the common case).
    Server(ServerConn),
    /// None is free for its lane: it must wait in the queue with this ticket.
    Wait(crate::pool::Ticket),
    /// The pooler stops starting transactions.
    ShuttingDown,
}

/// Classifies the request at the front of the client's buffer and takes an idle
/// server if its lane may have one now. Synchronous, so that the common case builds
/// no future (a future is moved into the session's state on every call). Also
/// returns the client-side timeouts of the request's lane.
pub(super) fn take_now(
    client: &ClientConn,
    tx: &mut TxTracker,
    ctx: &Ctx<'_>,
    shutdown: &mut watch::Receiver<Shutdown>,
) -> (Now, Timeouts) {
    // has_changed is an atomic read; the state is only looked at once it moved.
    if shutdown.has_changed().unwrap_or(true) && shutdown.borrow().stops_transactions() {
        return (Now::ShuttingDown, ctx.base_timeouts);
    }
    let ticket = if ctx.protect {
        classify(ctx.route, client, tx, &ctx.client_user)
    } else {
        crate::pool::Ticket::default()
    };
    let timeouts = ctx.route.pool.settings().lanes.timeouts(ticket.lane, ctx.base_timeouts);
    match ctx.route.pool.try_acquire(ticket) {
        Some(server) => {
            ctx.link
                .link_now(server.backend_pid, server.backend_key, Arc::clone(&server.target));
            ctx.link.linked_to(&server.meta);
            ctx.route.pool.stats.assigned(Duration::ZERO);
            (Now::Server(server), timeouts)
        }
        None => (Now::Wait(ticket), timeouts),
    }
}

/// Waits in the pool's queue for a server for `ticket`. Ok(None) when the request
/// was answered with an error instead (the client stays); Err when the client leaves.
pub(super) async fn wait_for_server(
    client: &mut ClientConn,
    tx: &mut TxTracker,
    ctx: &Ctx<'_>,
    shutdown: &mut watch::Receiver<Shutdown>,
    ticket: crate::pool::Ticket,
) -> Result<Option<ServerConn>, Reason> {
    ctx.link.waiting();
    let since = Instant::now();
    let got = acquire_watching(client, tx, ctx.route, ctx.link, shutdown, ticket).await;
    match &got {
        Ok(server) => {
            ctx.link.linked_to(&server.meta);
            ctx.route.pool.stats.assigned(since.elapsed());
            ctx.route.pool.lane_waited(ticket.lane, since.elapsed());
        }
        Err(Waited::Pool(e)) => {
            let metric = match e {
                AcquireError::QueueFull(_) => Some("sluice_lane_queue_full_total"),
                AcquireError::WaitTimeout(_) => Some("sluice_lane_wait_timeouts_total"),
                AcquireError::Connect(_) => None,
            };
            if let Some(metric) = metric {
                ctx.route.pool.lane_count(ticket.lane, metric);
            }
            ctx.route
                .pool
                .stats
                .wait_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Err(_) => {}
    }
    if got.is_err() {
        // Served no server: SHOW CLIENTS must not go on listing it as waiting.
        ctx.link.wait_over();
    }
    let server = match got {
        Ok(s) => s,
        Err(Waited::Cancelled) => {
            debug!(pending = tx.pending_rfq, in_batch = tx.in_batch, "wait cancelled");
            tx.discard = Some(
                ClientError::fatal(
                    sluice_wire::sqlstate::QUERY_CANCELED,
                    "canceling statement due to user request",
                )
                .at(Severity::Error),
            );
            answer_dropped(client, tx).await?;
            return Ok(None);
        }
        // No server could log in: the client hears why, and keeps its connection
        // to retry (a PostgreSQL restart must not disconnect idle clients).
        Err(Waited::Pool(AcquireError::Connect(e))) => {
            tx.discard = Some(ClientError::from(&e).at(Severity::Error));
            answer_dropped(client, tx).await?;
            return Ok(None);
        }
        // The lane's queue is full: this request is refused, the client stays.
        Err(Waited::Pool(e @ AcquireError::QueueFull(q))) => {
            tx.learning_set = None;
            tx.discard = Some(
                ClientError::from(&e)
                    .at(Severity::Error)
                    .detail(crate::overload::explain::wait(&ctx.route.pool, Some(q))),
            );
            answer_dropped(client, tx).await?;
            return Ok(None);
        }
        Err(Waited::ClientGone) => return Err("client unexpected eof"),
        Err(Waited::Killed) => {
            send_error(client, &ClientError::protocol(Expired::Killed.text())).await;
            return Err(Expired::Killed.text());
        }
        Err(Waited::Shutdown) => {
            send_error(client, &shutting_down()).await;
            return Err("pooler shutdown");
        }
        Err(Waited::ClientError(e)) => {
            send_error(client, &e).await;
            return Err("client protocol error");
        }
        Err(Waited::Pool(e)) => {
            let mut error = ClientError::from(&e);
            if let AcquireError::WaitTimeout(q) = e {
                error = error.detail(crate::overload::explain::wait(&ctx.route.pool, Some(q)));
            }
            send_error(client, &error).await;
            return Err("query_wait_timeout");
        }
    };
    Ok(Some(server))
}
