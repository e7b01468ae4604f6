//! Where the client stands in the protocol, as far as releasing its server goes:
//! [`TxTracker`] and the two scanners that keep it ([`ClientSide`] over client bytes,
//! [`ServerSide`] over server bytes). No I/O here: the scanners see bytes and headers.

use std::time::{Duration, Instant};

use sluice_wire::backend::{self, TxStatus, READY_FOR_QUERY};
use sluice_wire::frontend::{self, TERMINATE};
use sluice_wire::{FrameError, Header, OnHeader, ScanHandler, Visit};

use super::super::state::SessionState;
use super::super::{prepared, ClientConn};
use crate::app::Route;
use crate::config::PoolMode;
use crate::errors::ClientError;
use crate::params::{self, ParamSet};
use crate::server::ServerConn;
use crate::stats::{PoolStats, Request};

/// CommandComplete.
pub(super) const COMMAND_COMPLETE: u8 = b'C';
/// ParseComplete.
pub(super) const PARSE_COMPLETE: u8 = b'1';

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
    pub(super) fn any(&self) -> bool {
        self.query.is_some()
            || self.client_idle.is_some()
            || self.idle_transaction.is_some()
            || self.transaction.is_some()
    }
}

/// Which timeout fired (or that an admin ended the session), with PgBouncer's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expired {
    Query,
    ClientIdle,
    IdleTransaction,
    Transaction,
    /// KILL / KILL_CLIENT on the admin console.
    Killed,
}

impl Expired {
    pub(super) fn text(self) -> &'static str {
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
pub(super) struct Clock {
    pub(super) request_started: Option<Instant>,
    pub(super) transaction_started: Option<Instant>,
    pub(super) idle_since: Option<Instant>,
}

/// The client's position in the protocol, as far as releasing its server goes.
#[derive(Debug)]
pub(super) struct TxTracker {
    /// Query/Sync/FunctionCall sent whose ReadyForQuery has not come back yet.
    pub(super) pending_rfq: u32,
    /// An extended-protocol message was sent after the last Sync.
    pub(super) in_batch: bool,
    /// The server's transaction status at its last ReadyForQuery.
    pub(super) status: TxStatus,
    /// The client sent Terminate (it stays unforwarded in the buffer).
    pub(super) terminate: bool,
    /// A cancel took the client out of the queue: its pending request is dropped
    /// and answered with ReadyForQuery once complete.
    pub(super) discard: Option<ClientError>,
    /// Session settings carried from server to server.
    pub(super) session: SessionState,
    /// When the current request, transaction and idleness began (timeouts, stats).
    pub(super) clock: Clock,
    /// When the current transaction's first request was sent (SHOW STATS xact_time).
    pub(super) xact_started: Option<Instant>,
    /// Bytes forwarded since the last ReadyForQuery, counted into the pool's stats.
    pub(super) received: u64,
    pub(super) sent: u64,
    /// Parse and Bind messages since the last ReadyForQuery.
    pub(super) parses: u32,
    pub(super) binds: u32,
    /// Named prepared statements in transaction mode.
    pub(super) prepared: prepared::State,
    /// Syncs sent since the last Execute or Query. If that started a COPY FROM
    /// STDIN, PostgreSQL ignores them (no ReadyForQuery): counted off at CopyDone.
    pub(super) syncs_since_execute: u32,
    /// A transaction block Sluice answered without a server (overload protection).
    pub(super) local_tx: LocalTx,
    /// A lone SET running on a server, whose outcome is remembered for the next
    /// client that sends the same text (see [`answer_without_server`]).
    pub(super) learning_set: Option<SetLearning>,
}

/// A transaction block the client opened that no server knows of yet.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) enum LocalTx {
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
pub(super) struct SetLearning {
    pub(super) key: crate::pool::SetKey,
    pub(super) reported: Vec<(String, String)>,
}

impl TxTracker {
    /// A client that just logged in: idle, nothing sent.
    pub(super) fn new(session: SessionState, route: &Route) -> TxTracker {
        TxTracker {
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
        }
    }

    /// The nearest deadline among the configured timeouts, for the current state.
    pub(super) fn deadline(&self, t: &Timeouts) -> Option<(Instant, Expired)> {
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
    pub(super) fn request_starts(&mut self) {
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
    pub(super) fn ready_for_query(&mut self, status: TxStatus, stats: &PoolStats) {
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

    pub(super) fn idle(&self) -> bool {
        self.pending_rfq == 0 && !self.in_batch && self.status == TxStatus::Idle
    }
}

/// Scans client bytes: counts what expects a ReadyForQuery, rejects what is not a
/// frontend message, and stops at Terminate.
pub(super) struct ClientSide<'a>(&'a mut TxTracker);

#[derive(Debug)]
pub(super) enum ScanError {
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
pub(super) fn front(client: &ClientConn) -> Option<Header> {
    Header::parse(&client.buf, client.scan.max_len()).ok().flatten()
}

/// Statement texts up to this length are checked for session-state changes.
pub(super) const MAX_INSPECTED: u32 = 4096;

/// The bytes of a NUL-terminated string at the start of `b`.
pub(super) fn cstr(b: &[u8]) -> &[u8] {
    &b[..memchr::memchr(0, b).unwrap_or(b.len())]
}

/// Scans server bytes: decodes ReadyForQuery and ParameterStatus (and, while a SET
/// waits for its transaction to end, CommandComplete), passes everything else through.
pub(super) struct ServerSide<'a> {
    pub(super) tx: &'a mut TxTracker,
    /// Shown in SHOW SERVERS and wait explanations: held inside a transaction block.
    pub(super) in_transaction: &'a std::sync::atomic::AtomicBool,
    pub(super) server_params: &'a mut ParamSet,
    pub(super) server_synced_for: &'a mut u64,
    pub(super) mode: PoolMode,
    pub(super) client_at_boundary: bool,
    pub(super) release: &'a mut bool,
    pub(super) stats: &'a PoolStats,
    /// Statements that a failed or skipped Parse did not create are forgotten here.
    pub(super) server_statements: &'a mut crate::statements::ServerStatements,
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

/// Scans what the client sent, rewriting statement messages (with the linked
/// server, if any) as they come.
pub(super) fn scan_client(
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
pub(super) fn drops_all_statements(sql: &[u8]) -> bool {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(sql.len());
    let head = &sql[start..];
    let starts = |p: &[u8]| head.len() >= p.len() && head[..p.len()].eq_ignore_ascii_case(p);
    starts(b"discard all") || starts(b"deallocate all") || starts(b"deallocate prepare all")
}

#[cfg(test)]
mod tests {
    use super::drops_all_statements;

    #[test]
    pub(super) fn statements_that_drop_every_prepared_statement() {
        assert!(drops_all_statements(b"  DISCARD ALL"));
        assert!(drops_all_statements(b"deallocate All;"));
        assert!(drops_all_statements(b"\nDEALLOCATE PREPARE ALL"));
        assert!(!drops_all_statements(b"DEALLOCATE s1"));
        assert!(!drops_all_statements(b"DISCARD PLANS"));
        assert!(!drops_all_statements(b"SELECT 'discard all'"));
        assert!(!drops_all_statements(b"discard"));
    }
}
