//! The session loop: a logged-in client alternates between idle (no server) and
//! linked (bytes flow both ways through one server connection).
//!
//! While linked, one task moves bytes in both directions without ever blocking one
//! direction on the other (pipelines and COPY cannot deadlock), reading by message
//! header only. The few messages that decide when the server can go back to the
//! pool are tracked by [`TxTracker`]: every Query, Sync and FunctionCall the client
//! sends is answered by exactly one ReadyForQuery, so in transaction mode the server
//! is released at a ReadyForQuery 'I' that answers the last of them, with no
//! extended-protocol batch open.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

use bytes::{Buf, BytesMut};
use sluice_wire::backend::{self, Severity, TxStatus, READY_FOR_QUERY};

/// CommandComplete.
const COMMAND_COMPLETE: u8 = b'C';
/// ParseComplete.
const PARSE_COMPLETE: u8 = b'1';
use sluice_wire::frontend::{self, TERMINATE};
use sluice_wire::{FrameError, Header, OnHeader, ScanHandler, Scanner, Visit};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::io::poll_read_buf;
use tracing::debug;

use super::{send_error, ClientConn};
use std::sync::Arc;

use super::state::SessionState;
use super::{abandon, prepared};
use crate::app::Route;
use crate::cancel::{ClientLink, Kill};
use crate::config::PoolMode;
use crate::errors::ClientError;
use crate::listener::until;
use crate::params::{self, ParamSet};
use crate::pool::{sleep_until_opt, AcquireError};
use crate::server::{QueryError, ServerConn};
use crate::shutdown::Shutdown;
use crate::stats::{PoolStats, Request};
use crate::stream::{ReadHalf, WriteHalf};
use sluice_wire::sqlstate;
use tokio::sync::watch;

/// Room made before each read.
const READ_CHUNK: usize = 16 * 1024;
/// Unforwarded bytes per direction before reading pauses (backpressure).
pub(super) const MAX_BUFFERED: usize = 256 * 1024;

/// PgBouncer's client-side timeouts (None = off). A client that exceeds one gets
/// `FATAL 08P01` with PgBouncer's text and is disconnected; a query still running on
/// its server is cancelled there first, so the server stops working for nobody.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timeouts {
    /// `query_timeout`: one request (Query, or a batch up to Sync) running too long.
    pub query: Option<Duration>,
    /// `client_idle_timeout`: a client sending nothing, outside a transaction.
    pub client_idle: Option<Duration>,
    /// `idle_transaction_timeout`: a client sending nothing inside a transaction.
    pub idle_transaction: Option<Duration>,
    /// `transaction_timeout`: a transaction open too long.
    pub transaction: Option<Duration>,
}

impl Timeouts {
    fn any(&self) -> bool {
        self.query.is_some()
            || self.client_idle.is_some()
            || self.idle_transaction.is_some()
            || self.transaction.is_some()
    }
}

/// Which timeout fired (or that an admin ended the session), with PgBouncer's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Query,
    ClientIdle,
    IdleTransaction,
    Transaction,
    /// KILL / KILL_CLIENT on the admin console.
    Killed,
}

impl Expired {
    fn text(self) -> &'static str {
        match self {
            Expired::Query => "query timeout",
            Expired::ClientIdle => "client_idle_timeout",
            Expired::IdleTransaction => "idle transaction timeout",
            Expired::Transaction => "transaction timeout",
            Expired::Killed => "admin forced disconnect",
        }
    }
}

/// When the client's current request, transaction and idleness began (kept only
/// while some timeout is configured).
#[derive(Debug, Default)]
struct Clock {
    request_started: Option<Instant>,
    transaction_started: Option<Instant>,
    idle_since: Option<Instant>,
}

/// The client's position in the protocol, as far as releasing its server goes.
#[derive(Debug)]
struct TxTracker {
    /// Query/Sync/FunctionCall sent whose ReadyForQuery has not come back yet.
    pending_rfq: u32,
    /// An extended-protocol message was sent after the last Sync.
    in_batch: bool,
    /// The server's transaction status at its last ReadyForQuery.
    status: TxStatus,
    /// The client sent Terminate (it stays unforwarded in the buffer).
    terminate: bool,
    /// A cancel took the client out of the queue: its pending request is dropped
    /// and answered with ReadyForQuery once complete.
    discard: Option<ClientError>,
    /// Session settings carried from server to server.
    session: SessionState,
    /// When the current request, transaction and idleness began (timeouts, stats).
    clock: Clock,
    /// When the current transaction's first request was sent (SHOW STATS xact_time).
    xact_started: Option<Instant>,
    /// Bytes forwarded since the last ReadyForQuery, counted into the pool's stats.
    received: u64,
    sent: u64,
    /// Parse and Bind messages since the last ReadyForQuery.
    parses: u32,
    binds: u32,
    /// Named prepared statements in transaction mode.
    prepared: prepared::State,
    /// Syncs sent since the last Execute or Query. If that started a COPY FROM
    /// STDIN, PostgreSQL ignores them (no ReadyForQuery): counted off at CopyDone.
    syncs_since_execute: u32,
    /// A transaction block Sluice answered without a server (overload protection).
    local_tx: LocalTx,
    /// A lone SET running on a server, whose outcome is remembered for the next
    /// client that sends the same text (see [`answer_without_server`]).
    learning_set: Option<SetLearning>,
}

/// A transaction block the client opened that no server knows of yet.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum LocalTx {
    #[default]
    None,
    /// `BEGIN` was answered locally; it runs on the server that the transaction's
    /// first real statement gets, just before that statement.
    Begun(Vec<u8>),
    /// The first statement never reached a server (a cancelled wait, a failed login):
    /// as in PostgreSQL, everything but ROLLBACK is refused until the block ends.
    Failed,
}

#[derive(Debug)]
struct SetLearning {
    key: crate::pool::SetKey,
    reported: Vec<(String, String)>,
}

impl TxTracker {
    /// The nearest deadline among the configured timeouts, for the current state.
    fn deadline(&self, t: &Timeouts) -> Option<(Instant, Expired)> {
        let clock = &self.clock;
        let mut best: Option<(Instant, Expired)> = None;
        let mut consider = |since: Option<Instant>, limit: Option<Duration>, kind| {
            if let (Some(since), Some(limit)) = (since, limit) {
                let at = since + limit;
                if best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, kind));
                }
            }
        };
        if self.pending_rfq > 0 || self.in_batch {
            consider(clock.request_started, t.query, Expired::Query);
        } else if self.status == TxStatus::Idle {
            consider(clock.idle_since, t.client_idle, Expired::ClientIdle);
        } else {
            consider(clock.idle_since, t.idle_transaction, Expired::IdleTransaction);
        }
        consider(clock.transaction_started, t.transaction, Expired::Transaction);
        best
    }
}

impl TxTracker {
    /// A Query, FunctionCall or extended-protocol message arrived: the start of a
    /// request if none is open, and of a transaction if the server was idle.
    #[inline]
    fn request_starts(&mut self) {
        if self.pending_rfq == 0 && !self.in_batch {
            let now = Instant::now();
            self.clock.request_started = Some(now);
            if self.status == TxStatus::Idle && self.xact_started.is_none() {
                self.xact_started = Some(now);
            }
        }
    }

    /// A ReadyForQuery arrived: the request it answers is counted into the pool's
    /// stats, and the clocks move on.
    #[inline]
    fn ready_for_query(&mut self, status: TxStatus, stats: &PoolStats) {
        self.status = status;
        self.pending_rfq = self.pending_rfq.saturating_sub(1);
        let now = Instant::now();
        let more = self.pending_rfq > 0 || self.in_batch;
        let started = if more {
            self.clock.request_started.replace(now)
        } else {
            self.clock.request_started.take()
        };
        let xact_time = if status == TxStatus::Idle {
            self.xact_started.take().map(|s| now.duration_since(s))
        } else {
            None
        };
        stats.request(&Request {
            query_time: started.map_or(Duration::ZERO, |s| now.duration_since(s)),
            xact_time,
            received: std::mem::take(&mut self.received),
            sent: std::mem::take(&mut self.sent),
        });
        self.prepared.tracker.ready_for_query();
        if self.parses > 0 || self.binds > 0 || self.prepared.server_parses > 0 {
            // Without rewriting, every client Parse reaches the server as it is.
            let server_parses = if self.prepared.enabled {
                self.prepared.server_parses
            } else {
                self.parses
            };
            stats.parses_and_binds(u64::from(self.parses), u64::from(server_parses), u64::from(self.binds));
            (self.parses, self.binds, self.prepared.server_parses) = (0, 0, 0);
        }
        if !more {
            self.clock.idle_since = Some(now);
        }
        match status {
            TxStatus::Idle => self.clock.transaction_started = None,
            _ => {
                self.clock.transaction_started.get_or_insert(now);
            }
        }
    }

    fn idle(&self) -> bool {
        self.pending_rfq == 0 && !self.in_batch && self.status == TxStatus::Idle
    }
}

/// Scans client bytes: counts what expects a ReadyForQuery, rejects what is not a
/// frontend message, and stops at Terminate.
struct ClientSide<'a>(&'a mut TxTracker);

#[derive(Debug)]
enum ScanError {
    Frame(FrameError),
    Client(ClientError),
}

impl From<FrameError> for ScanError {
    fn from(e: FrameError) -> Self {
        ScanError::Frame(e)
    }
}

impl ScanHandler for ClientSide<'_> {
    type Error = ScanError;

    fn message(&mut self, h: Header, body: &[u8]) -> Result<Visit, ScanError> {
        let tx = &mut *self.0;
        match h.tag {
            // The end of a cancelled batch.
            frontend::SYNC => return Ok(Visit::StopAfter),
            // A Query completes at the ReadyForQuery it was just counted for.
            frontend::QUERY if tx.discard.is_none() => {
                let sql = cstr(body);
                if tx.prepared.enabled && drops_all_statements(sql) {
                    tx.prepared.clear_requested = true;
                }
                tx.session.saw_statement(sql, tx.pending_rfq)
            }
            // Parse: statement name, then the query text; it completes at the next Sync.
            frontend::PARSE if tx.discard.is_none() => {
                let name_end = body.iter().position(|&b| b == 0).map_or(body.len(), |i| i + 1);
                tx.session.saw_statement(cstr(&body[name_end..]), tx.pending_rfq + 1)
            }
            _ => {}
        }
        Ok(Visit::Continue)
    }

    #[inline]
    fn header(&mut self, h: Header) -> Result<OnHeader, ScanError> {
        let tx = &mut *self.0;
        if tx.prepared.stopped {
            // Waiting for the statement message here to be rewritten.
            return Ok(OnHeader::StopBefore);
        }
        if tx.discard.is_some() && !tx.in_batch {
            // The cancelled request is complete; what follows is a new one.
            return Ok(OnHeader::StopBefore);
        }
        match h.tag {
            TERMINATE => {
                tx.terminate = true;
                return Ok(OnHeader::StopBefore);
            }
            frontend::COPY_DONE | frontend::COPY_FAIL => {
                // Syncs sent during copy-in were ignored by the server.
                let ignored = std::mem::take(&mut tx.syncs_since_execute);
                tx.pending_rfq = tx.pending_rfq.saturating_sub(ignored);
                for _ in 0..ignored {
                    tx.prepared.tracker.segment_ignored();
                }
            }
            t if frontend::expects_ready_for_query(t) => {
                tx.request_starts();
                tx.pending_rfq += 1;
                tx.prepared.tracker.segment_sent();
                match t {
                    frontend::SYNC => tx.syncs_since_execute += 1,
                    _ => tx.syncs_since_execute = 0,
                }
                if t == frontend::SYNC {
                    tx.in_batch = false;
                    if tx.discard.is_some() {
                        // End of the cancelled batch: stop right after its Sync.
                        return Ok(OnHeader::Decode);
                    }
                }
            }
            t if frontend::opens_extended_batch(t) => {
                tx.request_starts();
                tx.in_batch = true;
                match t {
                    frontend::PARSE => tx.parses += 1,
                    frontend::BIND => tx.binds += 1,
                    frontend::EXECUTE => tx.syncs_since_execute = 0,
                    _ => {}
                }
                if tx.prepared.enabled && tx.discard.is_none() && prepared::names_statement(t) {
                    tx.prepared.stopped = true;
                    return Ok(OnHeader::StopBefore);
                }
            }
            t if frontend::is_known_tag(t) && t != frontend::PASSWORD => {}
            t => {
                return Err(ScanError::Client(ClientError::protocol(format!(
                    "invalid frontend message type {t}"
                ))))
            }
        }
        // Short statement texts are looked at for SET/RESET; long ones stream through.
        if matches!(h.tag, frontend::QUERY | frontend::PARSE) && h.length() <= MAX_INSPECTED {
            return Ok(OnHeader::Decode);
        }
        Ok(OnHeader::Pass)
    }
}

/// The header of the message at the front of the client's buffer (None while fewer
/// than 5 bytes are there; an impossible length is the scanner's to report).
fn front(client: &ClientConn) -> Option<Header> {
    Header::parse(&client.buf, client.scan.max_len()).ok().flatten()
}

/// Statement texts up to this length are checked for session-state changes.
const MAX_INSPECTED: u32 = 4096;

/// The bytes of a NUL-terminated string at the start of `b`.
fn cstr(b: &[u8]) -> &[u8] {
    &b[..memchr::memchr(0, b).unwrap_or(b.len())]
}

/// Scans server bytes: decodes ReadyForQuery and ParameterStatus (and, while a SET
/// waits for its transaction to end, CommandComplete), passes everything else through.
struct ServerSide<'a> {
    tx: &'a mut TxTracker,
    /// Shown in SHOW SERVERS and wait explanations: held inside a transaction block.
    in_transaction: &'a std::sync::atomic::AtomicBool,
    server_params: &'a mut ParamSet,
    server_synced_for: &'a mut u64,
    mode: PoolMode,
    client_at_boundary: bool,
    release: &'a mut bool,
    stats: &'a PoolStats,
    /// Statements that a failed or skipped Parse did not create are forgotten here.
    server_statements: &'a mut crate::statements::ServerStatements,
}

impl ScanHandler for ServerSide<'_> {
    type Error = FrameError;

    #[inline]
    fn header(&mut self, h: Header) -> Result<OnHeader, FrameError> {
        if self.tx.prepared.dropping {
            return Ok(OnHeader::StopBefore);
        }
        Ok(match h.tag {
            READY_FOR_QUERY | backend::PARAMETER_STATUS => OnHeader::Decode,
            PARSE_COMPLETE if self.tx.prepared.tracker.active() => {
                if self.tx.prepared.tracker.parse_complete() {
                    // Answers a Parse Sluice put in: the client never asked for it.
                    self.tx.prepared.dropping = true;
                    OnHeader::StopBefore
                } else {
                    OnHeader::Pass
                }
            }
            backend::ERROR_RESPONSE => {
                self.tx.session.failed();
                self.tx.learning_set = None;
                for lost in self.tx.prepared.tracker.error() {
                    self.server_statements.forget(&lost);
                }
                OnHeader::Pass
            }
            COMMAND_COMPLETE if self.tx.session.has_pending() => OnHeader::Decode,
            _ => OnHeader::Pass,
        })
    }

    #[inline]
    fn message(&mut self, h: Header, body: &[u8]) -> Result<Visit, FrameError> {
        if h.tag == READY_FOR_QUERY {
            let status = backend::parse_ready_for_query(body).ok_or(FrameError::Malformed { tag: h.tag })?;
            self.tx.ready_for_query(status, self.stats);
            self.in_transaction
                .store(status != TxStatus::Idle, std::sync::atomic::Ordering::Relaxed);
            if self.tx.session.has_pending() {
                self.tx.session.ready_for_query(status);
            }
            // A client that started a session-level feature keeps its server.
            let pinned = self.tx.session.pinned.is_some();
            if self.mode != PoolMode::Session && !pinned && self.tx.idle() && self.client_at_boundary {
                *self.release = true;
            }
        } else if h.tag == backend::PARAMETER_STATUS {
            if let Some((name, value)) = backend::parse_parameter_status(body) {
                self.server_params.set(name, value);
                if let Some(l) = self.tx.learning_set.as_mut() {
                    l.reported.push((name.to_owned(), value.to_owned()));
                }
                if params::reported(name).is_some() {
                    self.tx.session.set_reported(name, value);
                    *self.server_synced_for = self.tx.session.fingerprint;
                }
            }
        } else if h.tag == COMMAND_COMPLETE && body.starts_with(b"ROLLBACK") {
            self.tx.session.failed();
        }
        Ok(Visit::Continue)
    }
}

/// Why a linked phase ended.
#[derive(Debug)]
enum LinkEnd {
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

/// Scans what the client sent, rewriting statement messages (with the linked
/// server, if any) as they come.
fn scan_client(
    client: &mut ClientConn,
    tx: &mut TxTracker,
    mut server: Option<&mut ServerConn>,
) -> Result<(), ClientError> {
    loop {
        match client.scan.scan(&client.buf, &mut ClientSide(tx)) {
            Ok(_) => {}
            Err(ScanError::Client(e)) => return Err(e),
            Err(ScanError::Frame(e)) => return Err(ClientError::protocol(e.to_string())),
        }
        if let Some(server) = server.as_deref_mut() {
            if tx.prepared.clear_requested {
                // DISCARD ALL / DEALLOCATE ALL runs on this server.
                tx.prepared.clear_requested = false;
                tx.prepared.statements.clear();
                server.statements.clear();
            }
        }
        if !tx.prepared.stopped {
            return Ok(());
        }
        let pending = tx.pending_rfq;
        let session = &mut tx.session;
        let mut saw_parse = |sql: &[u8]| session.saw_statement(sql, pending + 1);
        match prepared::rewrite(client, &mut tx.prepared, server.as_deref_mut(), &mut saw_parse)? {
            prepared::Step::Handled => tx.prepared.stopped = false,
            prepared::Step::Wait => return Ok(()),
        }
    }
}

/// `DISCARD ALL` / `DEALLOCATE ALL` (any case): the server forgets its statements.
/// Runs on every statement, so it compares bytes in place (no allocation).
fn drops_all_statements(sql: &[u8]) -> bool {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(sql.len());
    let head = &sql[start..];
    let starts = |p: &[u8]| head.len() >= p.len() && head[..p.len()].eq_ignore_ascii_case(p);
    starts(b"discard all") || starts(b"deallocate all") || starts(b"deallocate prepare all")
}

/// Bytes moving both ways between one client and one server.
struct Link<'a> {
    client: &'a mut ClientConn,
    server: &'a mut ServerConn,
    tx: &'a mut TxTracker,
    mode: PoolMode,
    release: bool,
    /// ReadyForQuery messages still to come for Sluice's own sync query; everything up
    /// to them is the server's answer to Sluice, not to the client.
    swallow: u32,
    timeouts: Timeouts,
    /// Armed at the nearest deadline while a timeout is configured.
    timer: Pin<&'a mut Sleep>,
    armed: Option<(Instant, Expired)>,
    /// Some client-side timeout is configured (else the timer is never armed).
    timeouts_on: bool,
    stats: &'a PoolStats,
    kill: &'a Kill,
}

/// What one non-blocking read or write did.
enum Io {
    /// Bytes moved (how many).
    Moved(usize),
    /// Nothing to do now; the waker is registered.
    Pending,
    /// The peer closed or the socket failed.
    Closed,
}

/// Writes the scanned (forwardable) front of `buf` to `wr` and drops what was written.
#[inline]
fn poll_forward(cx: &mut Context<'_>, wr: &mut WriteHalf, buf: &mut BytesMut, scan: &mut Scanner) -> Io {
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
fn poll_fill(cx: &mut Context<'_>, rd: &mut ReadHalf, buf: &mut BytesMut) -> Io {
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
    fn swallow_sync_answers(&mut self) -> Result<(), FrameError> {
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
    fn scan_server(&mut self) -> Result<(), FrameError> {
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

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<LinkEnd> {
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
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Option<Expired> {
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

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Why the client is leaving, in PgBouncer's words where it has them.
pub type Reason = &'static str;

/// Runs a logged-in client until it leaves. Returns the reason, for the log.
pub async fn run(
    client: &mut ClientConn,
    route: &Route,
    link: &ClientLink,
    mut shutdown: watch::Receiver<Shutdown>,
    session: SessionState,
) -> Reason {
    let mut tx = TxTracker {
        pending_rfq: 0,
        in_batch: false,
        status: TxStatus::Idle,
        terminate: false,
        discard: None,
        session,
        clock: Clock {
            idle_since: Some(Instant::now()),
            ..Clock::default()
        },
        xact_started: None,
        received: 0,
        sent: 0,
        parses: 0,
        binds: 0,
        prepared: prepared::State {
            enabled: route.mode != PoolMode::Session && route.pool.settings().max_prepared > 0,
            ..prepared::State::default()
        },
        syncs_since_execute: 0,
        local_tx: LocalTx::None,
        learning_set: None,
    };
    // Overload protection answers transaction control and known SETs itself, and
    // puts each transaction in a lane (transaction mode only: in session mode the
    // client keeps its server anyway).
    let protect = route.mode != PoolMode::Session && route.pool.settings().lanes.protection;
    let client_user = link.login.get().map(|l| l.user.clone()).unwrap_or_default();
    // Read once per client: a reload applies to the pool at once and to clients'
    // own limits from their next connection.
    let base_timeouts = route.pool.settings().timeouts;
    let reset_always = route.pool.settings().reset_always;
    let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(far_future()));
    tokio::pin!(timer);
    loop {
        // Idle: wait until the client sends something a server must see.
        loop {
            if let Err(e) = scan_client(client, &mut tx, None) {
                send_error(client, &e).await;
                return "client protocol error";
            }
            if tx.discard.is_some() {
                if let Err(reason) = answer_dropped(client, &mut tx).await {
                    return reason;
                }
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
                        return "client protocol error";
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
                        return "client unexpected eof";
                    }
                    continue;
                }
                prepared::Local::NeedMore => {}
                // A request (or a statement message to rewrite on a server) is waiting.
                prepared::Local::NotThisShape => {
                    if (client.scan.forwardable() > 0 || tx.prepared.stopped) && tx.discard.is_none() {
                        if protect && !tx.prepared.stopped {
                            match answer_without_server(client, &mut tx, route).await {
                                Ok(true) => continue,
                                Ok(false) => {}
                                Err(reason) => return reason,
                            }
                        }
                        break;
                    }
                }
            }
            if tx.terminate {
                return "client close request";
            }
            client.buf.reserve(READ_CHUNK);
            // Inside a transaction block answered locally, the client is idle in
            // transaction as far as it knows.
            let (idle_limit, idle_kind) = match tx.local_tx {
                LocalTx::None => (base_timeouts.client_idle, Expired::ClientIdle),
                _ => (base_timeouts.idle_transaction, Expired::IdleTransaction),
            };
            let read = tokio::select! {
                read = client.rd.read_buf(&mut client.buf) => read,
                _ = sleep_until_opt(idle_limit.map(|t| tokio::time::Instant::now() + t)) => {
                    send_error(client, &ClientError::protocol(idle_kind.text())).await;
                    return idle_kind.text();
                }
                _ = link.kill.killed() => {
                    send_error(client, &ClientError::protocol(Expired::Killed.text())).await;
                    return Expired::Killed.text();
                }
            };
            match read {
                Ok(0) | Err(_) => return "client unexpected eof",
                Ok(_) => {}
            }
        }

        // has_changed is an atomic read; the state is only looked at once it moved.
        if shutdown.has_changed().unwrap_or(true) && shutdown.borrow().stops_transactions() {
            send_error(client, &shutting_down()).await;
            return "pooler shutdown";
        }
        let ticket = if protect {
            classify(route, client, &mut tx, &client_user)
        } else {
            crate::pool::Ticket::default()
        };
        let timeouts = route.pool.settings().lanes.timeouts(ticket.lane, base_timeouts);
        let got = match route.pool.try_acquire(ticket) {
            Some(server) => {
                link.link_now(server.backend_pid, server.backend_key, Arc::clone(&server.target));
                link.linked_to(&server.meta);
                route.pool.stats.assigned(Duration::ZERO);
                Ok(server)
            }
            None => {
                link.waiting();
                let since = Instant::now();
                let got = acquire_watching(client, &mut tx, route, link, &mut shutdown, ticket).await;
                match &got {
                    Ok(server) => {
                        link.linked_to(&server.meta);
                        route.pool.stats.assigned(since.elapsed());
                        route.pool.lane_waited(ticket.lane, since.elapsed());
                    }
                    Err(Waited::Pool(e)) => {
                        let metric = match e {
                            AcquireError::QueueFull(_) => Some("sluice_lane_queue_full_total"),
                            AcquireError::WaitTimeout(_) => Some("sluice_lane_wait_timeouts_total"),
                            AcquireError::Connect(_) => None,
                        };
                        if let Some(metric) = metric {
                            route.pool.lane_count(ticket.lane, metric);
                        }
                        route
                            .pool
                            .stats
                            .wait_timeouts
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
                if got.is_err() {
                    // Served no server: SHOW CLIENTS must not go on listing it as waiting.
                    link.wait_over();
                }
                got
            }
        };
        let mut server = match got {
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
                if let Err(reason) = answer_dropped(client, &mut tx).await {
                    return reason;
                }
                continue;
            }
            // No server could log in: the client hears why, and keeps its connection
            // to retry (a PostgreSQL restart must not disconnect idle clients).
            Err(Waited::Pool(AcquireError::Connect(e))) => {
                tx.discard = Some(ClientError::from(&e).at(Severity::Error));
                if let Err(reason) = answer_dropped(client, &mut tx).await {
                    return reason;
                }
                continue;
            }
            // The lane's queue is full: this request is refused, the client stays.
            Err(Waited::Pool(e @ AcquireError::QueueFull(q))) => {
                tx.learning_set = None;
                tx.discard = Some(
                    ClientError::from(&e)
                        .at(Severity::Error)
                        .detail(crate::overload::explain::wait(&route.pool, Some(q))),
                );
                if let Err(reason) = answer_dropped(client, &mut tx).await {
                    return reason;
                }
                continue;
            }
            Err(Waited::ClientGone) => return "client unexpected eof",
            Err(Waited::Killed) => {
                send_error(client, &ClientError::protocol(Expired::Killed.text())).await;
                return Expired::Killed.text();
            }
            Err(Waited::Shutdown) => {
                send_error(client, &shutting_down()).await;
                return "pooler shutdown";
            }
            Err(Waited::ClientError(e)) => {
                send_error(client, &e).await;
                return "client protocol error";
            }
            Err(Waited::Pool(e)) => {
                let mut error = ClientError::from(&e);
                if let AcquireError::WaitTimeout(q) = e {
                    error = error.detail(crate::overload::explain::wait(&route.pool, Some(q)));
                }
                send_error(client, &error).await;
                return "query_wait_timeout";
            }
        };
        debug!(server = server.id, "linked");

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
                    link.unlink().await;
                    let answered = matches!(outcome, Ok(_) | Err(QueryError::Failed(_)));
                    route.pool.release(server, answered);
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
                    if let Err(reason) = answer_dropped(client, &mut tx).await {
                        return reason;
                    }
                    continue;
                }
            }
        }
        if let Some(sql) = sync {
            let mut out = BytesMut::new();
            let _ = frontend::build::query(&sql, &mut out);
            if server.wr.write_all(&out).await.is_err() {
                link.unlink().await;
                route.pool.release(server, false);
                let e = ClientError::fatal(
                    sluice_wire::sqlstate::CONNECTION_FAILURE,
                    "server closed the connection unexpectedly",
                );
                send_error(client, &e).await;
                return "server conn crashed?";
            }
            swallow = 1;
        }
        // Statement messages that waited for a server are rewritten for this one.
        if tx.prepared.stopped || tx.prepared.clear_requested {
            if let Err(e) = scan_client(client, &mut tx, Some(&mut server)) {
                link.unlink().await;
                route.pool.release(server, true);
                send_error(client, &e).await;
                return "client protocol error";
            }
        }
        let (end, swallow) = {
            let mut link = Link {
                client: &mut *client,
                server: &mut server,
                tx: &mut tx,
                mode: route.mode,
                release: false,
                swallow,
                timeouts,
                timer: timer.as_mut(),
                armed: None,
                timeouts_on: timeouts.any(),
                stats: &route.pool.stats,
                kill: &link.kill,
            };
            let end = poll_fn(|cx| link.poll(cx)).await;
            (end, link.swallow)
        };
        link.unlink().await;
        match end {
            LinkEnd::Release => {
                if let Some(l) = tx.learning_set.take() {
                    if tx.status == TxStatus::Idle {
                        route.pool.remember_set(l.key, l.reported);
                    }
                }
                // Unreported settings changed on this server: back to its defaults
                // (RESET ALL keeps prepared statements, unlike DISCARD ALL).
                let mut ok = !tx.session.dirty || server.simple_query("RESET ALL").await.is_ok();
                if ok && reset_always {
                    if let Some(q) = &route.pool.settings().reset_query {
                        ok = server.simple_query(q).await.is_ok();
                    }
                }
                tx.session.dirty = false;
                tx.prepared.tracker.reset();
                // max_prepared_statements: the least recently used go.
                let victims = server.statements.evict_beyond(route.pool.settings().max_prepared);
                if ok && !victims.is_empty() {
                    let sql: String = victims.iter().map(|v| format!("DEALLOCATE \"{v}\";")).collect();
                    ok = server.simple_query(&sql).await.is_ok();
                }
                route.pool.release(server, ok);
            }
            LinkEnd::Timeout(expired) => {
                // A query still running would keep the server busy for nobody: cancel
                // it and roll back, and keep the server if it comes back clean.
                abandon(route, client, &tx, server, swallow);
                send_error(client, &ClientError::protocol(expired.text())).await;
                return expired.text();
            }
            LinkEnd::Terminate | LinkEnd::ClientGone => {
                let clean =
                    tx.idle() && client.scan.at_boundary() && server.buf.is_empty() && server.scan.at_boundary();
                if clean {
                    finish_server(route, server, true, tx.session.dirty, tx.session.pinned.is_some()).await;
                } else {
                    abandon(route, client, &tx, server, swallow);
                }
                return if matches!(end, LinkEnd::Terminate) {
                    "client close request"
                } else {
                    "client unexpected eof"
                };
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
                route.pool.release(server, false);
                send_error(client, &e).await;
                return "server conn crashed?";
            }
            LinkEnd::ClientError(e) => {
                route.pool.release(server, false);
                send_error(client, &e).await;
                return "client protocol error";
            }
        }
    }
}

/// The client left (or timed out) in the middle of a request or transaction: the
/// server is recovered in the background (see `abandon`) when what was sent to it
/// ends at a message boundary; otherwise, and for servers holding session features
/// or statements whose Parse is still in flight, it is closed, which makes PostgreSQL
/// roll back and free its locks.
fn abandon(route: &Route, client: &ClientConn, tx: &TxTracker, server: ServerConn, swallow: u32) {
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
pub(super) async fn finish_server(route: &Route, mut server: ServerConn, clean: bool, dirty: bool, pinned: bool) {
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

/// `query_wait_notify`: why this client waits, while it still waits.
fn wait_notice(route: &Route) -> ClientError {
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
fn classify(route: &Route, client: &ClientConn, tx: &mut TxTracker, user: &str) -> crate::pool::Ticket {
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

/// Overload protection answers some requests without a server, so that they never
/// queue: `BEGIN` (the block then opens on the server that its first real statement
/// gets, and is classified by that statement), `COMMIT`/`ROLLBACK` of a block that
/// never needed a server, and a lone `SET` whose outcome (the ParameterStatus values
/// PostgreSQL sent) Sluice saw for the same text and the same settings before; the
/// setting is recorded for the client and applied on its next server. Returns true
/// when the request at the front of the buffer was answered.
async fn answer_without_server(client: &mut ClientConn, tx: &mut TxTracker, route: &Route) -> Result<bool, Reason> {
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
            answer_dropped(client, tx).await?;
            return Ok(true);
        }
    }
    let Some(h) = front(client) else {
        return Ok(false);
    };
    if h.tag != frontend::QUERY || client.scan.forwardable() < h.total_len() || tx.pending_rfq == 0 {
        return Ok(false);
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
                    return Ok(false);
                };
                for (name, value) in reported.iter() {
                    backend::parameter_status(&mut out, name, value);
                    tx.session.set_reported(name, value);
                }
                backend::command_complete(&mut out, "SET");
                (TxStatus::Idle, LocalTx::None)
            } else {
                return Ok(false);
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
            None => return Ok(false),
        },
        LocalTx::None => return Ok(false),
    };
    backend::ready_for_query(&mut out, status);
    client.buf.advance(n);
    client.scan.consumed(n);
    tx.local_tx = next;
    tx.ready_for_query(status, &route.pool.stats);
    if tx.session.has_pending() {
        tx.session.ready_for_query(status);
    }
    client.wr.write_all(&out).await.map_err(|_| "client unexpected eof")?;
    Ok(true)
}

/// Drops Flush messages at the front of an idle client's buffer. Nothing the client
/// sent before them is outstanding (its server was released at a ReadyForQuery that
/// answered everything), so PostgreSQL would answer them with no bytes: they need no
/// server, and linking one for them would keep it until the client's next Sync.
fn drop_leading_flushes(client: &mut ClientConn) {
    while let Some(h) = front(client) {
        if h.tag != frontend::FLUSH || h.total_len() > client.scan.forwardable() {
            return;
        }
        let n = h.total_len();
        client.buf.advance(n);
        client.scan.consumed(n);
    }
}

/// What a client that wants a new transaction is told during a shutdown.
fn shutting_down() -> ClientError {
    ClientError::fatal(sluice_wire::sqlstate::ADMIN_SHUTDOWN, "pooler is shutting down")
        .hint("transactions in flight were allowed to finish; reconnect to reach the next pooler instance")
}

enum Waited {
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
async fn acquire_watching(
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

/// Drops requests that will not reach a server (a cancelled wait, a failed login):
/// each request the client had sent (ending in a Query or a Sync) is answered with
/// the error in `tx.discard` and ReadyForQuery, as PostgreSQL answers each request of
/// a pipeline; a request still arriving is dropped up to its end, and nothing sent
/// after it is touched.
async fn answer_dropped(client: &mut ClientConn, tx: &mut TxTracker) -> Result<(), Reason> {
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

#[cfg(test)]
mod tests {
    use super::drops_all_statements;

    #[test]
    fn statements_that_drop_every_prepared_statement() {
        assert!(drops_all_statements(b"  DISCARD ALL"));
        assert!(drops_all_statements(b"deallocate All;"));
        assert!(drops_all_statements(b"\nDEALLOCATE PREPARE ALL"));
        assert!(!drops_all_statements(b"DEALLOCATE s1"));
        assert!(!drops_all_statements(b"DISCARD PLANS"));
        assert!(!drops_all_statements(b"SELECT 'discard all'"));
        assert!(!drops_all_statements(b"discard"));
    }
}
