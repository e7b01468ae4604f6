//! The byte pump: while a client is linked to a server, one task moves bytes both
//! ways without ever blocking one direction on the other (pipelines and COPY cannot
//! deadlock), until something ends the link ([`LinkEnd`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use sluice_wire::backend::{self, READY_FOR_QUERY};
use sluice_wire::{FrameError, Header, Scanner};
use tokio::io::AsyncWrite;
use tokio::time::Sleep;
use tokio_util::io::poll_read_buf;

use super::super::ClientConn;
use super::track::{scan_client, Expired, ServerSide, Timeouts, TxTracker};
use super::{MAX_BUFFERED, READ_CHUNK};
use crate::cancel::Kill;
use crate::config::PoolMode;
use crate::errors::ClientError;
use crate::server::ServerConn;
use crate::stats::PoolStats;
use crate::stream::{ReadHalf, WriteHalf};

/// Why a linked phase ended.
#[derive(Debug)]
pub(super) enum LinkEnd {
    /// Transaction done: the server goes back to the pool.
    Release,
    /// The client sent Terminate.
    Terminate,
    /// The client's socket closed or failed.
    ClientGone,
    /// The server's socket closed or failed.
    ServerGone,
    /// A client-side timeout expired.
    Timeout(Expired),
    /// The client sent something that is not the protocol.
    ClientError(ClientError),
    /// The server sent something that is not the protocol.
    ServerError(FrameError),
}

/// Bytes moving both ways between one client and one server.
pub(super) struct Link<'a> {
    pub(super) client: &'a mut ClientConn,
    pub(super) server: &'a mut ServerConn,
    pub(super) tx: &'a mut TxTracker,
    pub(super) mode: PoolMode,
    pub(super) release: bool,
    /// ReadyForQuery messages still to come for Sluice's own sync query; everything up
    /// to them is the server's answer to Sluice, not to the client.
    pub(super) swallow: u32,
    pub(super) timeouts: Timeouts,
    /// Armed at the nearest deadline while a timeout is configured.
    pub(super) timer: Pin<&'a mut Sleep>,
    pub(super) armed: Option<(Instant, Expired)>,
    /// Some client-side timeout is configured (else the timer is never armed).
    pub(super) timeouts_on: bool,
    pub(super) stats: &'a PoolStats,
    pub(super) kill: &'a Kill,
}

/// What one non-blocking read or write did.
pub(super) enum Io {
    /// Bytes moved (how many).
    Moved(usize),
    /// Nothing to do now; the waker is registered.
    Pending,
    /// The peer closed or the socket failed.
    Closed,
}

/// Writes the scanned (forwardable) front of `buf` to `wr` and drops what was written.
#[inline]
pub(super) fn poll_forward(cx: &mut Context<'_>, wr: &mut WriteHalf, buf: &mut BytesMut, scan: &mut Scanner) -> Io {
    let n = scan.forwardable();
    match Pin::new(wr).poll_write(cx, &buf[..n]) {
        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Io::Closed,
        Poll::Ready(Ok(w)) => {
            buf.advance(w);
            scan.consumed(w);
            Io::Moved(w)
        }
        Poll::Pending => Io::Pending,
    }
}

/// Reads whatever is available into `buf`.
#[inline]
pub(super) fn poll_fill(cx: &mut Context<'_>, rd: &mut ReadHalf, buf: &mut BytesMut) -> Io {
    buf.reserve(READ_CHUNK);
    match poll_read_buf(Pin::new(rd), cx, buf) {
        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Io::Closed,
        Poll::Ready(Ok(n)) => Io::Moved(n),
        Poll::Pending => Io::Pending,
    }
}

impl Link<'_> {
    /// Drops the server's answer to Sluice's sync query from the front of the buffer,
    /// keeping the server's parameter values up to date.
    pub(super) fn swallow_sync_answers(&mut self) -> Result<(), FrameError> {
        while self.swallow > 0 {
            let Some(h) = Header::whole(&self.server.buf, self.server.scan.max_len())? else {
                return Ok(());
            };
            let msg = self.server.buf.split_to(h.total_len());
            match h.tag {
                backend::PARAMETER_STATUS => {
                    if let Some((name, value)) = backend::parse_parameter_status(&msg[5..]) {
                        self.server.params.set(name, value);
                    }
                }
                backend::ERROR_RESPONSE => {
                    self.server.synced_for = 0;
                    let e = backend::parse_error_fields(&msg[5..]);
                    tracing::warn!(code = %e.code, "bringing the server in line with the client failed: {}", e.message);
                }
                READY_FOR_QUERY => self.swallow -= 1,
                _ => {}
            }
        }
        Ok(())
    }

    /// Scans newly read server bytes.
    pub(super) fn scan_server(&mut self) -> Result<(), FrameError> {
        let mut side = ServerSide {
            tx: self.tx,
            in_transaction: &self.server.meta.in_transaction,
            server_params: &mut self.server.params,
            server_synced_for: &mut self.server.synced_for,
            mode: self.mode,
            client_at_boundary: self.client.scan.at_boundary(),
            release: &mut self.release,
            stats: self.stats,
            server_statements: &mut self.server.statements,
        };
        self.server.scan.scan(&self.server.buf, &mut side).map(|_| ())
    }

    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<LinkEnd> {
        loop {
            let mut progress = false;

            // Server -> client, whatever has been scanned.
            if self.server.scan.forwardable() > 0 {
                match poll_forward(cx, &mut self.client.wr, &mut self.server.buf, &mut self.server.scan) {
                    Io::Closed => return Poll::Ready(LinkEnd::ClientGone),
                    Io::Moved(_) => progress = true,
                    Io::Pending => {}
                }
            } else if self.tx.prepared.dropping && self.server.buf.len() >= 5 {
                // The ParseComplete of an injected Parse is at the front: drop it.
                self.server.buf.advance(5);
                self.tx.prepared.dropping = false;
                progress = true;
                if let Err(e) = self.scan_server() {
                    return Poll::Ready(LinkEnd::ServerError(e));
                }
            } else if self.release && self.server.buf.is_empty() && self.server.scan.at_boundary() {
                return Poll::Ready(LinkEnd::Release);
            }

            // Client -> server.
            if self.client.scan.forwardable() > 0 {
                match poll_forward(cx, &mut self.server.wr, &mut self.client.buf, &mut self.client.scan) {
                    Io::Closed => return Poll::Ready(LinkEnd::ServerGone),
                    Io::Moved(n) => {
                        self.tx.received += n as u64;
                        progress = true;
                    }
                    Io::Pending => {}
                }
            } else if self.tx.terminate {
                return Poll::Ready(LinkEnd::Terminate);
            }

            // Read the server (also after a release point: a message may be unfinished).
            if self.server.buf.len() < MAX_BUFFERED {
                match poll_fill(cx, &mut self.server.rd, &mut self.server.buf) {
                    Io::Closed => return Poll::Ready(LinkEnd::ServerGone),
                    Io::Moved(n) => {
                        progress = true;
                        // Counted as read, so a ReadyForQuery's request includes it.
                        self.tx.sent += n as u64;
                        if self.swallow > 0 {
                            if let Err(e) = self.swallow_sync_answers() {
                                return Poll::Ready(LinkEnd::ServerError(e));
                            }
                        }
                        if self.swallow > 0 {
                            continue;
                        }
                        if let Err(e) = self.scan_server() {
                            return Poll::Ready(LinkEnd::ServerError(e));
                        }
                    }
                    Io::Pending => {}
                }
            }

            // Read the client, unless this transaction is over: what it sends next
            // belongs to the next one.
            if !self.release && !self.tx.terminate && self.client.buf.len() < MAX_BUFFERED {
                match poll_fill(cx, &mut self.client.rd, &mut self.client.buf) {
                    Io::Closed => return Poll::Ready(LinkEnd::ClientGone),
                    Io::Moved(_) => {
                        progress = true;
                        if let Err(e) = scan_client(self.client, self.tx, Some(&mut *self.server)) {
                            return Poll::Ready(LinkEnd::ClientError(e));
                        }
                    }
                    Io::Pending => {}
                }
            }

            if !progress {
                if self.kill.poll_killed(cx).is_ready() {
                    return Poll::Ready(LinkEnd::Timeout(Expired::Killed));
                }
                if let Some(expired) = self.poll_timer(cx) {
                    return Poll::Ready(LinkEnd::Timeout(expired));
                }
                return Poll::Pending;
            }
        }
    }

    /// Re-arms the timer for the current state and reports a deadline that passed.
    pub(super) fn poll_timer(&mut self, cx: &mut Context<'_>) -> Option<Expired> {
        if !self.timeouts_on {
            return None;
        }
        let deadline = self.tx.deadline(&self.timeouts);
        if deadline != self.armed {
            self.armed = deadline;
            let at = deadline.map_or_else(far_future, |(at, _)| at);
            self.timer.as_mut().reset(tokio::time::Instant::from_std(at));
        }
        let (_, kind) = self.armed?;
        self.timer.as_mut().poll(cx).is_ready().then_some(kind)
    }
}

pub(super) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
