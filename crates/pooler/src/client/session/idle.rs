//! Idle: the client owns no server. What it sends is read and scanned; what needs no
//! server is answered here (prepare-only requests, transaction control and known
//! SETs under overload protection, dropped requests); a request that must reach a
//! server ends the phase.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::local::{answer_dropped, answer_without_server, drop_leading_flushes};
use super::track::{scan_client, Expired, LocalTx, TxTracker};
use super::{Ctx, Reason, READ_CHUNK};
use crate::client::{prepared, send_error, ClientConn};
use crate::errors::ClientError;
use crate::pool::sleep_until_opt;

/// Reads and scans what the client sends, answers what needs no server, and returns
/// once a request must reach one.
pub(super) async fn wait_for_request(client: &mut ClientConn, tx: &mut TxTracker, ctx: &Ctx<'_>) -> Result<(), Reason> {
    // Idle: wait until the client sends something a server must see.
    loop {
        if let Err(e) = scan_client(client, tx, None) {
            send_error(client, &e).await;
            return Err("client protocol error");
        }
        if tx.discard.is_some() {
            answer_dropped(client, tx).await?;
            if tx.discard.is_none() && !client.buf.is_empty() {
                // What the client pipelined behind the dropped request is a new
                // one: scan it before waiting for more bytes.
                continue;
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
                Err(e) => {
                    send_error(client, &e).await;
                    return Err("client protocol error");
                }
            };
        }
        match local {
            prepared::Local::Answered(out) => {
                // Prepare-only request answered without a server: undo its start.
                tx.prepared.stopped = false;
                tx.in_batch = false;
                tx.clock.request_started = None;
                tx.xact_started = None;
                if client.wr.write_all(&out).await.is_err() {
                    return Err("client unexpected eof");
                }
                continue;
            }
            prepared::Local::NeedMore => {}
            // A request (or a statement message to rewrite on a server) is waiting.
            prepared::Local::NotThisShape => {
                if (client.scan.forwardable() > 0 || tx.prepared.stopped) && tx.discard.is_none() {
                    if ctx.protect && !tx.prepared.stopped {
                        match answer_without_server(client, tx, ctx.route).await {
                            Ok(true) => continue,
                            Ok(false) => {}
                            Err(reason) => return Err(reason),
                        }
                    }
                    return Ok(());
                }
            }
        }
        if tx.terminate {
            return Err("client close request");
        }
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
            Ok(0) | Err(_) => return Err("client unexpected eof"),
            Ok(_) => {}
        }
    }
}
