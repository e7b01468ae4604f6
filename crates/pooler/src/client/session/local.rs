//! Answers without a server: transaction control and known SETs under overload
//! protection, Flushes that ask for nothing, and requests that cannot reach a server
//! (a cancelled wait, a failed login), each answered with its error.

use bytes::{Buf, BytesMut};
use sluice_wire::backend::{self, Severity, TxStatus};
use sluice_wire::frontend::{self};
use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::super::ClientConn;
use super::track::{cstr, front, LocalTx, TxTracker};
use super::Reason;
use crate::app::Route;
use crate::errors::ClientError;

/// What [`answer_without_server`] found for the request at the front of the buffer.
pub(super) enum Local {
    /// It needs a server.
    NeedsServer,
    /// It was answered: write these bytes to the client.
    Answered(BytesMut),
    /// It is refused (inside a failed block): `tx.discard` says why, and
    /// [`answer_dropped`] answers it.
    Dropped,
}

/// Overload protection answers some requests without a server, so that they never
/// queue: `BEGIN` (the block then opens on the server that its first real statement
/// gets, and is classified by that statement), `COMMIT`/`ROLLBACK` of a block that
/// never needed a server, and a lone `SET` whose outcome (the ParameterStatus values
/// PostgreSQL sent) Sluice saw for the same text and the same settings before; the
/// setting is recorded for the client and applied on its next server. Synchronous:
/// it runs for every request and most need a server, so no future is built for it.
pub(super) fn answer_without_server(client: &mut ClientConn, tx: &mut TxTracker, route: &Route) -> Local {
    use crate::overload::statement;
    if tx.local_tx == LocalTx::Failed {
        let ends = match front(client) {
            Some(h) if h.tag == frontend::QUERY && client.scan.forwardable() >= h.total_len() => {
                statement::ends_block(cstr(&client.buf[5..h.total_len()])).is_some()
            }
            _ => false,
        };
        if !ends {
            tx.discard = Some(
                ClientError::fatal(
                    "25P02",
                    "current transaction is aborted, commands ignored until end of transaction block",
                )
                .at(Severity::Error),
            );
            return Local::Dropped;
        }
    }
    let Some(h) = front(client) else {
        return Local::NeedsServer;
    };
    if h.tag != frontend::QUERY || client.scan.forwardable() < h.total_len() || tx.pending_rfq == 0 {
        return Local::NeedsServer;
    }
    let n = h.total_len();
    let sql = cstr(&client.buf[5..n]);
    let mut out = BytesMut::new();
    let (status, next) = match &tx.local_tx {
        LocalTx::None if tx.status == TxStatus::Idle => {
            if statement::is_deferrable_begin(sql) {
                backend::command_complete(&mut out, "BEGIN");
                (TxStatus::InTransaction, LocalTx::Begun(sql.to_vec()))
            } else if statement::is_lone_set(sql) {
                let Some(reported) = route.pool.known_set(&(tx.session.fingerprint, sql.to_vec())) else {
                    return Local::NeedsServer;
                };
                for (name, value) in reported.iter() {
                    backend::parameter_status(&mut out, name, value);
                    tx.session.set_reported(name, value);
                }
                backend::command_complete(&mut out, "SET");
                (TxStatus::Idle, LocalTx::None)
            } else {
                return Local::NeedsServer;
            }
        }
        LocalTx::Begun(_) | LocalTx::Failed => match statement::ends_block(sql) {
            Some(tag) => {
                let tag = if tx.local_tx == LocalTx::Failed {
                    "ROLLBACK"
                } else {
                    tag
                };
                backend::command_complete(&mut out, tag);
                (TxStatus::Idle, LocalTx::None)
            }
            None => return Local::NeedsServer,
        },
        LocalTx::None => return Local::NeedsServer,
    };
    backend::ready_for_query(&mut out, status);
    client.buf.advance(n);
    client.scan.consumed(n);
    tx.local_tx = next;
    tx.ready_for_query(status, &route.pool.stats);
    if tx.session.has_pending() {
        tx.session.ready_for_query(status);
    }
    Local::Answered(out)
}

/// Drops Flush messages at the front of an idle client's buffer. Nothing the client
/// sent before them is outstanding (its server was released at a ReadyForQuery that
/// answered everything), so PostgreSQL would answer them with no bytes: they need no
/// server, and linking one for them would keep it until the client's next Sync.
pub(super) fn drop_leading_flushes(client: &mut ClientConn) {
    while let Some(h) = front(client) {
        if h.tag != frontend::FLUSH || h.total_len() > client.scan.forwardable() {
            return;
        }
        let n = h.total_len();
        client.buf.advance(n);
        client.scan.consumed(n);
    }
}

/// Drops requests that will not reach a server (a cancelled wait, a failed login):
/// each request the client had sent (ending in a Query or a Sync) is answered with
/// the error in `tx.discard` and ReadyForQuery, as PostgreSQL answers each request of
/// a pipeline; a request still arriving is dropped up to its end, and nothing sent
/// after it is touched.
pub(super) async fn answer_dropped(client: &mut ClientConn, tx: &mut TxTracker) -> Result<(), Reason> {
    let n = client.scan.forwardable();
    client.buf.advance(n);
    client.scan.consumed(n);
    let mut out = BytesMut::new();
    // Inside a transaction block answered locally, a failed request fails the block.
    let status = match tx.local_tx {
        LocalTx::None => TxStatus::Idle,
        _ if tx.pending_rfq == 0 => tx.status,
        _ => {
            tx.local_tx = LocalTx::Failed;
            tx.status = TxStatus::Failed;
            TxStatus::Failed
        }
    };
    if let Some(error) = &tx.discard {
        for _ in 0..tx.pending_rfq {
            error.write(&mut out);
            backend::ready_for_query(&mut out, status);
        }
    }
    debug!(requests = tx.pending_rfq, "requests dropped");
    tx.pending_rfq = 0;
    // A statement message that waited to be rewritten for a server belongs to the
    // dropped request: the scan goes on through it, dropping it with the rest up to
    // the request's Sync (else the request would never be answered).
    tx.prepared.stopped = false;
    tx.session.forget_pending();
    if !tx.in_batch && client.scan.at_boundary() {
        tx.discard = None;
    }
    if out.is_empty() {
        return Ok(());
    }
    client.wr.write_all(&out).await.map_err(|_| "client unexpected eof")
}
