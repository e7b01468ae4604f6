//! Named prepared statements in transaction mode.
//!
//! A client's statement names mean nothing to the servers it borrows: each transaction
//! may run on another one. So each statement gets a server-side name derived from its
//! text and parameter types ([`server_name`]): clients preparing the same SQL share one
//! server statement, and two clients using one name for different SQL never meet.
//!
//! - [`ClientStatements`]: a client's names → statements, bounded in count and bytes.
//! - [`ServerStatements`]: what one server has prepared, LRU-bounded by
//!   `max_prepared_statements` (the surplus is deallocated when the server is
//!   released).
//! - [`ParseTracker`]: which ParseComplete messages answer a Parse Sluice injected (to
//!   prepare a statement on a server that lacks it), so they are dropped and the
//!   client sees exactly the responses it asked for.
//!
//! The session ([`crate::client`]) rewrites Parse, Bind, Describe and Close at the
//! client's scan point; everything else, unnamed statements included, passes through.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;

/// Distinct statements one client may keep prepared.
pub const MAX_CLIENT_STATEMENTS: usize = 10_000;
/// Bytes of statement text one client may keep prepared.
pub const MAX_CLIENT_STATEMENT_BYTES: usize = 16 * 1024 * 1024;

/// One prepared statement: its server-side name and what re-preparing it takes.
#[derive(Debug)]
pub struct Statement {
    pub server_name: String,
    /// The Parse body after the statement name: query text, parameter type OIDs.
    pub parse_tail: Bytes,
}

/// The server-side name for a Parse body tail: 128 bits of two independently keyed
/// hashes of the text and parameter types, so distinct statements never share a name.
pub fn server_name(parse_tail: &[u8]) -> String {
    let mut a = std::collections::hash_map::DefaultHasher::new();
    let mut b = std::collections::hash_map::DefaultHasher::new();
    0x005e_11ce_u32.hash(&mut b);
    parse_tail.hash(&mut a);
    parse_tail.hash(&mut b);
    format!("sluice_{:016x}{:016x}", a.finish(), b.finish())
}

/// A client's prepared statements by its own names.
#[derive(Debug, Default)]
pub struct ClientStatements {
    map: HashMap<String, Arc<Statement>>,
    bytes: usize,
}

impl ClientStatements {
    pub fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        self.map.get(name)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Records a Parse; fails (with what to do) past the per-client bounds.
    pub fn insert(&mut self, name: &str, parse_tail: Bytes) -> Result<Arc<Statement>, String> {
        let stmt = Arc::new(Statement {
            server_name: server_name(&parse_tail),
            parse_tail,
        });
        if let Some(old) = self.map.remove(name) {
            self.bytes -= old.parse_tail.len();
        }
        if self.map.len() >= MAX_CLIENT_STATEMENTS || self.bytes + stmt.parse_tail.len() > MAX_CLIENT_STATEMENT_BYTES {
            return Err(format!(
                "too many prepared statements on this connection ({} statements, {} bytes of text; limits {MAX_CLIENT_STATEMENTS} and {MAX_CLIENT_STATEMENT_BYTES})",
                self.map.len(),
                self.bytes
            ));
        }
        self.bytes += stmt.parse_tail.len();
        self.map.insert(name.to_owned(), Arc::clone(&stmt));
        Ok(stmt)
    }

    pub fn remove(&mut self, name: &str) {
        if let Some(old) = self.map.remove(name) {
            self.bytes -= old.parse_tail.len();
        }
    }

    /// DEALLOCATE ALL / DISCARD ALL.
    pub fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }
}

/// Statements prepared on one server connection, with a use counter for LRU.
#[derive(Debug, Default)]
pub struct ServerStatements {
    prepared: HashMap<String, u64>,
    tick: u64,
}

impl ServerStatements {
    /// True if `name` is prepared here (and marks it used).
    pub fn has(&mut self, name: &str) -> bool {
        self.tick += 1;
        match self.prepared.get_mut(name) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    pub fn add(&mut self, name: &str) {
        self.tick += 1;
        self.prepared.insert(name.to_owned(), self.tick);
    }

    pub fn len(&self) -> usize {
        self.prepared.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prepared.is_empty()
    }

    /// A Parse for `name` failed or was skipped: the statement does not exist.
    pub fn forget(&mut self, name: &str) {
        self.prepared.remove(name);
    }

    /// The server's statements are gone (DISCARD ALL, DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.prepared.clear();
    }

    /// The least recently used statements beyond `max`, removed from the set; the
    /// caller deallocates them on the server.
    pub fn evict_beyond(&mut self, max: usize) -> Vec<String> {
        if self.prepared.len() <= max {
            return Vec::new();
        }
        let mut by_age: Vec<(u64, String)> = self.prepared.iter().map(|(n, t)| (*t, n.clone())).collect();
        by_age.sort_unstable();
        let victims: Vec<String> = by_age
            .into_iter()
            .take(self.prepared.len() - max)
            .map(|(_, n)| n)
            .collect();
        for v in &victims {
            self.prepared.remove(v);
        }
        victims
    }
}

/// Matches ParseComplete messages to the Parses that asked for them, in order, across
/// errors: after an ErrorResponse PostgreSQL skips to the next Sync, so the Parses in
/// between get no answer.
#[derive(Debug, Default)]
pub struct ParseTracker {
    /// Per Parse sent and not yet answered: its segment, whether Sluice injected it,
    /// and the server statement it creates (None: unnamed).
    queue: VecDeque<(u64, bool, Option<String>)>,
    /// Segments (requests ending in Sync/Query/FunctionCall) sent to the server.
    sent: u64,
    /// Segments the server has finished (ReadyForQuery seen).
    done: u64,
}

impl ParseTracker {
    /// True while an injected Parse waits for its ParseComplete.
    #[inline]
    pub fn active(&self) -> bool {
        !self.queue.is_empty()
    }

    /// True while a Parse that creates a named server statement waits for its answer:
    /// whether that statement exists is not known yet.
    pub fn named_in_flight(&self) -> bool {
        self.queue.iter().any(|(_, _, name)| name.is_some())
    }

    /// A Parse was sent (`injected`: by Sluice, to re-prepare a statement), creating
    /// server statement `name` if it succeeds.
    pub fn parse_sent(&mut self, injected: bool, name: Option<&str>) {
        self.queue.push_back((self.sent, injected, name.map(str::to_owned)));
    }

    /// A Sync, Query or FunctionCall was sent: the next Parses belong to a new segment.
    #[inline]
    pub fn segment_sent(&mut self) {
        self.sent += 1;
    }

    /// A Sync the server ignored (sent during COPY FROM STDIN): no segment after all.
    #[inline]
    pub fn segment_ignored(&mut self) {
        self.sent = self.sent.saturating_sub(1);
    }

    /// A ParseComplete arrived: true if it answers an injected Parse (drop it).
    pub fn parse_complete(&mut self) -> bool {
        while self.queue.front().is_some_and(|(seg, ..)| *seg < self.done) {
            self.queue.pop_front();
        }
        self.queue.pop_front().is_some_and(|(_, injected, _)| injected)
    }

    /// An ErrorResponse: the rest of this segment's Parses get no answer, so the
    /// statements they would have created do not exist; returns their names.
    pub fn error(&mut self) -> Vec<String> {
        let done = self.done;
        let mut lost = Vec::new();
        self.queue.retain_mut(|(seg, _, name)| {
            if *seg != done {
                return true;
            }
            lost.extend(name.take());
            false
        });
        lost
    }

    /// A ReadyForQuery: a segment is finished.
    pub fn ready_for_query(&mut self) {
        self.done += 1;
        let done = self.done;
        self.queue.retain(|(seg, ..)| *seg >= done);
    }

    /// The link ended at a ReadyForQuery boundary: start afresh with the next server.
    pub fn reset(&mut self) {
        *self = ParseTracker::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_depend_on_text_and_types_only() {
        let a = server_name(b"select $1\0\0\x01\0\0\0\x17");
        assert_eq!(a, server_name(b"select $1\0\0\x01\0\0\0\x17"));
        assert_ne!(a, server_name(b"select $1\0\0\x01\0\0\0\x14"), "int4 vs int8");
        assert_ne!(a, server_name(b"select $2\0\0\x01\0\0\0\x17"));
        assert!(a.len() < 64, "fits NAMEDATALEN");
    }

    #[test]
    fn client_maps_are_bounded() {
        let mut c = ClientStatements::default();
        for i in 0..MAX_CLIENT_STATEMENTS {
            c.insert(&format!("s{i}"), Bytes::from(format!("select {i}\0\0\0")))
                .unwrap();
        }
        let err = c.insert("one_more", Bytes::from_static(b"select 1\0\0\0")).unwrap_err();
        assert!(err.contains("too many prepared statements"), "{err}");
        // Re-preparing an existing name replaces it and stays within bounds.
        c.insert("s1", Bytes::from_static(b"select 'again'\0\0\0")).unwrap();
        c.clear();
        assert!(c.is_empty());
        let big = Bytes::from(vec![b'x'; MAX_CLIENT_STATEMENT_BYTES + 1]);
        assert!(c.insert("big", big).is_err());
    }

    #[test]
    fn servers_evict_least_recently_used() {
        let mut s = ServerStatements::default();
        for n in ["a", "b", "c"] {
            s.add(n);
        }
        assert!(s.has("a"));
        assert_eq!(s.evict_beyond(2), ["b"]);
        assert!(s.has("a") && s.has("c") && !s.has("b"));
    }

    #[test]
    fn parse_completes_match_their_parses_across_errors() {
        let mut t = ParseTracker::default();
        // Segment 0: injected Parse, client Parse, Sync.
        t.parse_sent(true, Some("a"));
        t.parse_sent(false, None);
        t.segment_sent();
        // Segment 1: client Parse (fails), injected Parse (skipped), Sync.
        t.parse_sent(false, Some("b"));
        t.parse_sent(true, Some("c"));
        t.segment_sent();
        // Segment 2: injected Parse, Sync.
        t.parse_sent(true, Some("d"));
        t.segment_sent();
        assert!(t.parse_complete(), "the injected one is dropped");
        assert!(!t.parse_complete(), "the client's passes");
        t.ready_for_query();
        // Segment 1's client Parse failed: nothing more until Sync, and neither
        // statement exists.
        assert_eq!(t.error(), ["b", "c"]);
        t.ready_for_query();
        assert!(t.parse_complete(), "segment 2's injected Parse");
        t.ready_for_query();
        assert!(!t.active());
    }
}
