//! The end of a transaction or of a client: the server goes back to the pool clean
//! (reset as needed), is recovered in the background, or is closed.

use sluice_wire::backend::TxStatus;
use sluice_wire::sqlstate;
use tokio::io::AsyncWriteExt;

use super::pump::LinkEnd;
use super::track::TxTracker;
use super::{Ctx, Reason};
use crate::app::Route;
use crate::client::{abandon, send_error, ClientConn};
use crate::config::PoolMode;
use crate::errors::ClientError;
use crate::server::ServerConn;

/// The client left (or timed out) in the middle of a request or transaction: the
/// server is recovered in the background (see `abandon`) when what was sent to it
/// ends at a message boundary; otherwise, and for servers holding session features
/// or statements whose Parse is still in flight, it is closed, which makes PostgreSQL
/// roll back and free its locks.
pub(super) fn abandon(route: &Route, client: &ClientConn, tx: &TxTracker, server: ServerConn, swallow: u32) {
    let lane = server.meta.lane.load(std::sync::atomic::Ordering::Relaxed);
    route.pool.lane_count(lane, "sluice_lane_abandoned_total");
    let whole_messages_sent = client.scan.forwardable() == 0 && client.scan.at_boundary();
    if !whole_messages_sent || tx.session.pinned.is_some() || tx.prepared.tracker.named_in_flight() {
        route.pool.release(server, false);
        return;
    }
    let work = abandon::Abandoned {
        owed_rfq: tx.pending_rfq + swallow,
        in_batch: tx.in_batch,
        status: tx.status,
        dirty: tx.session.dirty,
    };
    abandon::recover(route, server, work);
}

/// A client left while linked, between transactions. In session mode the server is
/// reset before reuse (`DISCARD ALL`); a server in the middle of anything is closed,
/// which makes PostgreSQL roll back and free its locks at once.
pub(in crate::client) async fn finish_server(
    route: &Route,
    mut server: ServerConn,
    clean: bool,
    dirty: bool,
    pinned: bool,
) {
    if !clean {
        route.pool.release(server, false);
        return;
    }
    let settings = route.pool.settings();
    let reset = match route.mode {
        PoolMode::Session => settings.reset_query.as_deref(),
        // LISTEN, temporary tables, advisory locks, cursors, SQL PREPARE: all gone.
        _ if pinned => Some("DISCARD ALL"),
        _ if settings.reset_always => settings.reset_query.as_deref(),
        _ if dirty => Some("RESET ALL"),
        _ => None,
    };
    let ok = match reset {
        Some(sql) => server.simple_query(sql).await.is_ok(),
        None => true,
    };
    route.pool.release(server, ok);
}

/// The transaction is done and its server needs no reset (the common case): it
/// goes back to the pool here, synchronously, so that no future is built for it.
/// Returns the server when it needs a reset first ([`after_link`] does it).
pub(super) fn release_now(tx: &mut TxTracker, ctx: &Ctx<'_>, server: ServerConn) -> Option<ServerConn> {
    let settings = ctx.route.pool.settings();
    if tx.session.dirty || ctx.reset_always || server.statements.len() > settings.max_prepared {
        return Some(server);
    }
    if let Some(l) = tx.learning_set.take() {
        if tx.status == TxStatus::Idle {
            ctx.route.pool.remember_set(l.key, l.reported);
        }
    }
    tx.prepared.tracker.reset();
    ctx.route.pool.release(server, true);
    None
}

/// After the link: when the transaction is done the server goes back to the pool
/// (reset as needed); when the client or the server is gone, or a timeout fired, the
/// server is recovered or closed and the client leaves (Err).
pub(super) async fn after_link(
    client: &mut ClientConn,
    tx: &mut TxTracker,
    ctx: &Ctx<'_>,
    mut server: ServerConn,
    end: LinkEnd,
    swallow: u32,
) -> Result<(), Reason> {
    match end {
        LinkEnd::Release => {
            if let Some(l) = tx.learning_set.take() {
                if tx.status == TxStatus::Idle {
                    ctx.route.pool.remember_set(l.key, l.reported);
                }
            }
            // Unreported settings changed on this server: back to its defaults
            // (RESET ALL keeps prepared statements, unlike DISCARD ALL).
            let mut ok = !tx.session.dirty || server.simple_query("RESET ALL").await.is_ok();
            if ok && ctx.reset_always {
                if let Some(q) = &ctx.route.pool.settings().reset_query {
                    ok = server.simple_query(q).await.is_ok();
                }
            }
            tx.session.dirty = false;
            tx.prepared.tracker.reset();
            // max_prepared_statements: the least recently used go.
            let victims = server.statements.evict_beyond(ctx.route.pool.settings().max_prepared);
            if ok && !victims.is_empty() {
                let sql: String = victims.iter().map(|v| format!("DEALLOCATE \"{v}\";")).collect();
                ok = server.simple_query(&sql).await.is_ok();
            }
            ctx.route.pool.release(server, ok);
        }
        LinkEnd::Timeout(expired) => {
            // A query still running would keep the server busy for nobody: cancel
            // it and roll back, and keep the server if it comes back clean.
            abandon(ctx.route, client, tx, server, swallow);
            send_error(client, &ClientError::protocol(expired.text())).await;
            return Err(expired.text());
        }
        LinkEnd::Terminate | LinkEnd::ClientGone => {
            let clean = tx.idle() && client.scan.at_boundary() && server.buf.is_empty() && server.scan.at_boundary();
            if clean {
                finish_server(ctx.route, server, true, tx.session.dirty, tx.session.pinned.is_some()).await;
            } else {
                abandon(ctx.route, client, tx, server, swallow);
            }
            return Err(if matches!(end, LinkEnd::Terminate) {
                "client close request"
            } else {
                "client unexpected eof"
            });
        }
        LinkEnd::ServerGone | LinkEnd::ServerError(_) => {
            // Deliver what the server did say (often its own FATAL) first.
            let n = server.scan.forwardable();
            let _ = client.wr.write_all(&server.buf[..n]).await;
            let e = match &end {
                LinkEnd::ServerError(e) => {
                    tracing::warn!(server = server.id, error = %e, "server sent a malformed message: closing it");
                    ClientError::protocol(format!("server sent an invalid message: {e}"))
                        .hint("the server connection was closed and the transaction is lost; check that the database's host and port reach PostgreSQL itself, then retry")
                }
                _ => ClientError::fatal(sqlstate::CONNECTION_FAILURE, "server closed the connection unexpectedly")
                    .hint("the server connection failed in the middle of a transaction; it may have been terminated or restarted. Retry the transaction."),
            };
            ctx.route.pool.release(server, false);
            send_error(client, &e).await;
            return Err("server conn crashed?");
        }
        LinkEnd::ClientError(e) => {
            ctx.route.pool.release(server, false);
            send_error(client, &e).await;
            return Err("client protocol error");
        }
    }
    Ok(())
}
