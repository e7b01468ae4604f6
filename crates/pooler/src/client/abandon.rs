//! Abandoned work: a client that disconnects, or hits `query_timeout`, while its
//! server is busy for it or inside its transaction.
//!
//! Closing that server is what PgBouncer does, and it wastes twice: PostgreSQL keeps
//! running the query for nobody (it only notices a closed socket when it next writes
//! to it, which a long scan or `pg_sleep` does not do), holding its locks and a
//! backend, and the pool pays a new login for the replacement. Instead the query is
//! cancelled, what it still sends is read and dropped, an open transaction is rolled
//! back, and the server goes back to the pool if all of that ends cleanly within
//! [`ABANDON_BOUND`]. Anything else (no answer in time, a failed ROLLBACK, a half-sent
//! message, a named Parse in flight whose statement may or may not exist) closes the
//! server, as before.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use sluice_wire::backend::{self, TxStatus, READY_FOR_QUERY};
use sluice_wire::frontend;
use sluice_wire::{FrameError, Header, OnHeader, ScanHandler, Visit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use crate::app::Route;
use crate::server::ServerConn;

/// How long a server may take to come back clean after its client left.
pub(super) const ABANDON_BOUND: Duration = Duration::from_secs(5);

/// Where the server stood when its client left.
#[derive(Debug, Clone, Copy)]
pub(super) struct Abandoned {
    /// ReadyForQuery messages the server still owes (the client's requests and
    /// Sluice's own sync query).
    pub owed_rfq: u32,
    /// Extended-protocol messages were sent after the last Sync.
    pub in_batch: bool,
    /// The transaction status at the last ReadyForQuery.
    pub status: TxStatus,
    /// The session changed settings PostgreSQL does not report (needs RESET ALL).
    pub dirty: bool,
}

/// Recovers the server in the background; the client's task does not wait for it.
pub(super) fn recover(route: &Route, server: ServerConn, work: Abandoned) {
    let route = Route {
        pool: route.pool.clone(),
        mode: route.mode,
    };
    tokio::spawn(async move {
        let mut server = server;
        let id = server.id;
        match tokio::time::timeout(ABANDON_BOUND, settle(&mut server, work)).await {
            Ok(Ok(())) => {
                debug!(server = id, "abandoned work cancelled; server back in the pool");
                route.pool.stats.abandoned_recovered.fetch_add(1, Ordering::Relaxed);
                super::session::finish_server(&route, server, true, work.dirty, false).await;
            }
            outcome => {
                debug!(
                    server = id,
                    timed_out = outcome.is_err(),
                    "abandoned work did not end cleanly; closing the server"
                );
                route.pool.stats.abandoned_closed.fetch_add(1, Ordering::Relaxed);
                route.pool.release(server, false);
            }
        }
    });
}

/// Cancels, drains and rolls back; Ok when the server ends idle with nothing owed.
async fn settle(server: &mut ServerConn, work: Abandoned) -> Result<(), ()> {
    let mut owed = work.owed_rfq;
    if work.owed_rfq > 0 || work.in_batch {
        crate::cancel::cancel_server(&server.target, server.backend_pid, server.backend_key).await;
    }
    if work.in_batch {
        let mut out = BytesMut::new();
        frontend::build::sync(&mut out);
        server.wr.write_all(&out).await.map_err(|_| ())?;
        owed += 1;
    }
    let mut drain = Drain {
        owed,
        status: work.status,
    };
    while drain.owed > 0 {
        let n = server.scan.scan(&server.buf, &mut drain).map_err(|_| ())?;
        server.buf.advance(n);
        server.scan.consumed(n);
        if drain.owed == 0 {
            break;
        }
        if server.buf.len() > super::session::MAX_BUFFERED {
            // Scanned bytes were dropped above: only an unfinished huge header remains.
            return Err(());
        }
        if server.rd.read_buf(&mut server.buf).await.map_err(|_| ())? == 0 {
            return Err(());
        }
    }
    // Nothing else may be in flight: the next client starts at a message boundary.
    if !server.buf.is_empty() || !server.scan.at_boundary() {
        return Err(());
    }
    server.scan.reset();
    match drain.status {
        TxStatus::Idle => Ok(()),
        _ => server.simple_query("ROLLBACK").await.map_err(|_| ()),
    }
}

/// Counts ReadyForQuery messages off, keeping the last status; drops everything.
struct Drain {
    owed: u32,
    status: TxStatus,
}

impl ScanHandler for Drain {
    type Error = FrameError;

    fn header(&mut self, h: Header) -> Result<OnHeader, FrameError> {
        Ok(if h.tag == READY_FOR_QUERY {
            OnHeader::Decode
        } else {
            OnHeader::Pass
        })
    }

    fn message(&mut self, h: Header, body: &[u8]) -> Result<Visit, FrameError> {
        if h.tag != READY_FOR_QUERY {
            return Ok(Visit::Continue);
        }
        self.status = backend::parse_ready_for_query(body).ok_or(FrameError::Malformed { tag: h.tag })?;
        self.owed = self.owed.saturating_sub(1);
        Ok(if self.owed == 0 {
            Visit::StopAfter
        } else {
            Visit::Continue
        })
    }
}
