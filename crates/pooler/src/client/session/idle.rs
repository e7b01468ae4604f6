//! Idle: the client owns no server. What it sends is scanned; what needs no server is
//! answered here (prepare-only requests, transaction control and known SETs under
//! overload protection, dropped requests); a request that must reach a server ends
//! the phase. [`next`] decides without I/O; the session loop does what it says, so
//! the common path builds no future of its own.

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::local::{answer_without_server, drop_leading_flushes, Local};
use super::track::{scan_client, Expired, LocalTx, TxTracker};
use super::{Ctx, Reason, READ_CHUNK};
use crate::client::{prepared, send_error, ClientConn};
use crate::errors::ClientError;
use crate::pool::sleep_until_opt;

/// What an idle client needs next.
pub(super) enum Next {
    /// A request must reach a server.
    Request,
    /// More bytes from the client ([`read`]).
    Read,
    /// These bytes answer a request without a server: write them, then look again.
    Write(BytesMut),
    /// Requests that will not reach a server (`tx.discard` says why) are answered
    /// (`answer_dropped`), then look again.
    AnswerDropped,
    /// The client leaves, told this first if anything.
    Leave(Option<ClientError>, Reason),
}

/// Looks at what the client sent so far and says what to do next.
pub(super) fn next(client: &mut ClientConn, tx: &mut TxTracker, ctx: &Ctx<'_>) -> Next {
    if let Err(e) = scan_client(client, tx, None) {
        return Next::Leave(Some(e), "client protocol error");
    }
    if tx.discard.is_some() {
        // Something to answer or drop, or the dropped request just ended.
        let answerable =
            client.scan.forwardable() > 0 || tx.pending_rfq > 0 || (!tx.in_batch && client.scan.at_boundary());
        if answerable {
            return Next::AnswerDropped;
        }
    }
    drop_leading_flushes(client);
    let mut local = prepared::Local::NotThisShape;
    if tx.prepared.stopped && tx.discard.is_none() && client.scan.forwardable() == 0 {
        let pending = tx.pending_rfq;
        let session = &mut tx.session;
        let mut saw_parse = |sql: &[u8]| session.saw_statement(sql, pending + 1);
        local = match prepared::answer_locally(client, &mut tx.prepared, &mut saw_parse) {
            Ok(l) => l,
            Err(e) => return Next::Leave(Some(e), "client protocol error"),
        };
    }
    match local {
        prepared::Local::Answered(out) => {
            // Prepare-only request answered without a server: undo its start.
            tx.prepared.stopped = false;
            tx.in_batch = false;
            tx.clock.request_started = None;
            tx.xact_started = None;
            return Next::Write(out);
        }
        prepared::Local::NeedMore => {}
        // A request (or a statement message to rewrite on a server) is waiting.
        prepared::Local::NotThisShape => {
            if (client.scan.forwardable() > 0 || tx.prepared.stopped) && tx.discard.is_none() {
                if ctx.protect && !tx.prepared.stopped {
                    match answer_without_server(client, tx, ctx.route) {
                        Local::NeedsServer => {}
                        Local::Answered(out) => return Next::Write(out),
                        Local::Dropped => return Next::AnswerDropped,
                    }
                }
                return Next::Request;
            }
        }
    }
    if tx.terminate {
        return Next::Leave(None, "client close request");
    }
    Next::Read
}

/// Reads more from an idle client, bounded by its idle timeout and KILL.
pub(super) async fn read(client: &mut ClientConn, tx: &TxTracker, ctx: &Ctx<'_>) -> Result<(), Reason> {
    client.buf.reserve(READ_CHUNK);
    // Inside a transaction block answered locally, the client is idle in
    // transaction as far as it knows.
    let (idle_limit, idle_kind) = match tx.local_tx {
        LocalTx::None => (ctx.base_timeouts.client_idle, Expired::ClientIdle),
        _ => (ctx.base_timeouts.idle_transaction, Expired::IdleTransaction),
    };
    let read = tokio::select! {
        read = client.rd.read_buf(&mut client.buf) => read,
        _ = sleep_until_opt(idle_limit.map(|t| tokio::time::Instant::now() + t)) => {
            send_error(client, &ClientError::protocol(idle_kind.text())).await;
            return Err(idle_kind.text());
        }
        _ = ctx.link.kill.killed() => {
            send_error(client, &ClientError::protocol(Expired::Killed.text())).await;
            return Err(Expired::Killed.text());
        }
    };
    match read {
        Ok(0) | Err(_) => Err("client unexpected eof"),
        Ok(_) => Ok(()),
    }
}
