//! Before the client's first byte reaches a server: the server is brought in line
//! with the client's settings, a deferred `BEGIN` runs, and statement messages that
//! waited for a server are rewritten for this one.

use bytes::BytesMut;
use sluice_wire::backend::{Severity, TxStatus};
use sluice_wire::{frontend, sqlstate};
use tokio::io::AsyncWriteExt;

use super::local::answer_dropped;
use super::track::{scan_client, LocalTx, TxTracker};
use super::{Ctx, Reason};
use crate::client::{send_error, ClientConn};
use crate::errors::ClientError;
use crate::server::{QueryError, ServerConn};

/// Whether anything must happen before the client's bytes reach `server` (the
/// common case, a server last used with the same settings, needs nothing: it is
/// checked here so that it costs no call and no move of the server).
#[inline]
pub(super) fn needed(tx: &TxTracker, server: &ServerConn) -> bool {
    server.synced_for != tx.session.fingerprint
        || !tx.session.sets.is_empty()
        || matches!(tx.local_tx, LocalTx::Begun(_))
        || tx.prepared.stopped
        || tx.prepared.clear_requested
}

/// Brings `server` in line with the client. Returns it with the number of
/// ReadyForQuery of Sluice's own sync query the pump must swallow; Ok(None) when the
/// request was answered with an error instead (the client stays).
pub(super) async fn bring_in_line(
    client: &mut ClientConn,
    tx: &mut TxTracker,
    ctx: &Ctx<'_>,
    mut server: ServerConn,
) -> Result<Option<(ServerConn, u32)>, Reason> {
    // Bring the server in line with this client, pipelined before its first message.
    let mut swallow = 0;
    let in_line = server.synced_for == tx.session.fingerprint && tx.session.sets.is_empty();
    let mut sync = if in_line {
        None
    } else {
        tx.session.sync_query(&server.params)
    };
    server.synced_for = tx.session.fingerprint;
    if let LocalTx::Begun(begin) = std::mem::take(&mut tx.local_tx) {
        // The deferred BEGIN runs now, after the settings and before the first
        // statement, and must have opened the block before that is sent.
        let begin = String::from_utf8_lossy(&begin).into_owned();
        let prelude = sync.take();
        let queries: Vec<&str> = prelude.iter().map(String::as_str).chain([begin.as_str()]).collect();
        match server.run_queries(&queries).await {
            Ok(TxStatus::InTransaction) => {}
            outcome => {
                ctx.link.unlink().await;
                let answered = matches!(outcome, Ok(_) | Err(QueryError::Failed(_)));
                ctx.route.pool.release(server, answered);
                let (code, why) = match outcome {
                    Ok(_) => (
                        sqlstate::CONNECTION_FAILURE,
                        "BEGIN opened no transaction block".to_owned(),
                    ),
                    Err(e @ QueryError::Malformed(_)) => (sqlstate::PROTOCOL_VIOLATION, e.to_string()),
                    Err(e) => (sqlstate::CONNECTION_FAILURE, e.to_string()),
                };
                tx.discard = Some(
                    ClientError::fatal(code, format!("could not start the transaction on a server: {why}"))
                        .at(Severity::Error)
                        .hint("the transaction was rolled back; run it again"),
                );
                answer_dropped(client, tx).await?;
                return Ok(None);
            }
        }
    }
    if let Some(sql) = sync {
        let mut out = BytesMut::new();
        let _ = frontend::build::query(&sql, &mut out);
        if server.wr.write_all(&out).await.is_err() {
            ctx.link.unlink().await;
            ctx.route.pool.release(server, false);
            let e = ClientError::fatal(
                sluice_wire::sqlstate::CONNECTION_FAILURE,
                "server closed the connection unexpectedly",
            );
            send_error(client, &e).await;
            return Err("server conn crashed?");
        }
        swallow = 1;
    }
    // Statement messages that waited for a server are rewritten for this one.
    if tx.prepared.stopped || tx.prepared.clear_requested {
        if let Err(e) = scan_client(client, tx, Some(&mut server)) {
            ctx.link.unlink().await;
            ctx.route.pool.release(server, true);
            send_error(client, &e).await;
            return Err("client protocol error");
        }
    }
    Ok(Some((server, swallow)))
}
