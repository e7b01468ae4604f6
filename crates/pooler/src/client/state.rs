//! Per-client session state carried from server to server (see [`crate::params`]).

use sluice_wire::backend::TxStatus;

use crate::params::{self, Effect, ParamSet};

/// A statement's effect on session state, waiting for its transaction to end.
#[derive(Debug)]
struct Pending {
    effect: Effect,
    /// ReadyForQuery messages until the request that runs it completes.
    wait: u32,
    /// It failed (error, or its transaction rolled back).
    failed: bool,
}

#[derive(Debug, Default)]
pub struct SessionState {
    /// Reported settings the client believes in: startup values, then ParameterStatus.
    pub desired: ParamSet,
    /// Unreported settings the client SET, in order, replayed on every server it gets.
    pub sets: Vec<(String, String)>,
    /// Effects of statements sent and not yet committed.
    pending: Vec<Pending>,
    /// The linked server ran something that changed unreported state: it must be
    /// `RESET ALL` before another client uses it.
    pub dirty: bool,
    /// A digest of the client's reported settings: a server last brought in line for
    /// the same digest needs no comparison (the common case: every client of an app
    /// has the same settings).
    pub fingerprint: u64,
    /// A session-level feature (LISTEN, temporary tables, ...) the client started:
    /// its server stays with it until it disconnects, then is reset with DISCARD ALL.
    pub pinned: Option<&'static str>,
}

impl SessionState {
    pub fn new(desired: ParamSet, sets: Vec<(String, String)>) -> Self {
        let mut s = SessionState {
            desired,
            sets,
            ..Default::default()
        };
        s.refresh_fingerprint();
        s
    }

    /// A reported setting changed (ParameterStatus while linked).
    pub fn set_reported(&mut self, name: &str, value: &str) {
        self.desired.set(name, value);
        self.refresh_fingerprint();
    }

    fn refresh_fingerprint(&mut self) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        // Every tracked setting, track_extra_parameters included.
        for (name, value) in self.desired.iter() {
            if params::reported(name).is_some() {
                name.to_ascii_lowercase().hash(&mut h);
                value.hash(&mut h);
            }
        }
        // Never 0: that marks a server nobody brought in line yet.
        self.fingerprint = h.finish() | 1;
    }

    /// A Query or Parse text the client sent (only short ones are looked at), whose
    /// request completes at the `wait`-th ReadyForQuery from now.
    pub fn saw_statement(&mut self, sql: &[u8], wait: u32) {
        if self.pinned.is_none() {
            self.pinned = params::pins_session(sql);
            if let Some(feature) = self.pinned {
                tracing::info!("{feature} in transaction mode: this client keeps its server until it disconnects");
            }
        }
        if !params::may_change_session(sql) {
            return;
        }
        for effect in params::classify(&String::from_utf8_lossy(sql)) {
            match effect {
                Effect::None | Effect::Reported => {}
                effect => {
                    self.dirty = true;
                    self.pending.push(Pending {
                        effect,
                        wait,
                        failed: false,
                    });
                }
            }
        }
    }

    /// Something is waiting for its transaction to end.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// An ErrorResponse or a ROLLBACK: the running request, and what waits for its
    /// transaction to end, did not take effect.
    pub fn failed(&mut self) {
        for p in self.pending.iter_mut().filter(|p| p.wait <= 1) {
            p.failed = true;
        }
    }

    /// A ReadyForQuery: requests completed; effects whose transaction committed are
    /// kept.
    pub fn ready_for_query(&mut self, status: TxStatus) {
        for p in &mut self.pending {
            p.wait = p.wait.saturating_sub(1);
        }
        match status {
            TxStatus::InTransaction => {}
            TxStatus::Failed => self
                .pending
                .iter_mut()
                .filter(|p| p.wait == 0)
                .for_each(|p| p.failed = true),
            TxStatus::Idle => {
                let (done, waiting): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|p| p.wait == 0);
                self.pending = waiting;
                for p in done.into_iter().filter(|p| !p.failed) {
                    self.apply(p.effect);
                }
            }
        }
    }

    /// Requests dropped before they reached a server (a cancelled wait).
    pub fn forget_pending(&mut self) {
        self.pending.clear();
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Set { name, sql } => {
                self.sets.retain(|(n, _)| n != &name);
                self.sets.push((name, sql));
            }
            Effect::Reset { name } => self.sets.retain(|(n, _)| n != &name),
            Effect::ResetAll => self.sets.clear(),
            Effect::None | Effect::Reported | Effect::Untrackable => {}
        }
    }

    /// The statements that bring `server` in line with this client: tracked settings
    /// that differ, then every recorded SET. None when nothing is needed. Sets
    /// `dirty` when the server must be reset after use: a recorded SET, or a
    /// `track_extra_parameters` setting PostgreSQL may not report (so the next client,
    /// who never set it, could not tell the server has it).
    pub fn sync_query(&mut self, server: &ParamSet) -> Option<String> {
        let mut sql = String::new();
        for (name, value) in self.desired.iter() {
            if params::reported(name).is_some() && server.get(name) != Some(value) {
                sql.push_str(&format!("SET {name} = {};", params::quote_literal(value)));
                if !params::is_builtin_reported(name) {
                    self.dirty = true;
                }
            }
        }
        if !self.sets.is_empty() {
            self.dirty = true;
        }
        for (_, set) in &self.sets {
            sql.push_str(set);
            sql.push(';');
        }
        (!sql.is_empty()).then_some(sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_effect_waits_for_its_own_request() {
        let mut s = SessionState::default();
        // Behind another request (e.g. a Close + Sync): completes at the 2nd RFQ.
        s.saw_statement(b"SET work_mem = '1MB'", 2);
        s.ready_for_query(TxStatus::Idle);
        assert!(s.sets.is_empty(), "the first RFQ answered the other request");
        s.ready_for_query(TxStatus::Idle);
        assert_eq!(s.sets.len(), 1);
        assert!(s.dirty);
    }

    #[test]
    fn rolled_back_and_failed_effects_are_dropped() {
        let mut s = SessionState::default();
        s.saw_statement(b"BEGIN; SET a = 1; ROLLBACK", 1);
        s.failed(); // CommandComplete ROLLBACK
        s.ready_for_query(TxStatus::Idle);
        assert!(s.sets.is_empty());

        // Inside a transaction block: kept only once it commits.
        s.saw_statement(b"SET b = 2", 1);
        s.ready_for_query(TxStatus::InTransaction);
        assert!(s.sets.is_empty() && s.has_pending());
        s.saw_statement(b"SELECT 1/0", 1);
        s.failed();
        s.ready_for_query(TxStatus::Failed);
        s.ready_for_query(TxStatus::Idle); // ROLLBACK
        assert!(s.sets.is_empty() && !s.has_pending());
    }

    #[test]
    fn sync_query_covers_reported_differences_and_recorded_sets() {
        let mut s = SessionState::new(
            vec![
                ("TimeZone".to_string(), "UTC".to_string()),
                ("application_name".to_string(), "a'b".to_string()),
            ]
            .into(),
            vec![("statement_timeout".into(), "SET statement_timeout = '5s'".into())],
        );
        let server: ParamSet = vec![("TimeZone".to_string(), "UTC".to_string())].into();
        assert_eq!(
            s.sync_query(&server).as_deref(),
            Some("SET application_name = 'a''b';SET statement_timeout = '5s';")
        );
        s.sets.clear();
        s.desired.set("application_name", "");
        let server: ParamSet = vec![
            ("TimeZone".to_string(), "UTC".to_string()),
            ("application_name".to_string(), String::new()),
        ]
        .into();
        assert_eq!(s.sync_query(&server), None);
    }
}
