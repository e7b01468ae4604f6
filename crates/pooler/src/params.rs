//! Session state a client expects its servers to have, and the statements that change
//! it. Pure functions: the session loop ([`crate::client`]) applies them.
//!
//! Two kinds of state:
//! - settings PostgreSQL reports with ParameterStatus ([`REPORTED`]): tracked from the
//!   startup packet and from ParameterStatus; a server whose values differ is brought
//!   in line with `SET`s before the client's first message.
//! - other settings changed with `SET`/`RESET` (`statement_timeout`, `search_path`,
//!   ...): recorded per client and replayed on every server it gets; a server that ran
//!   them is `RESET ALL` before another client may use it. Never leaked.

/// Settings PostgreSQL reports with ParameterStatus that Sluice keeps per client.
pub const REPORTED: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "standard_conforming_strings",
    "application_name",
    "IntervalStyle",
];

/// True for the settings every PostgreSQL reports (as opposed to
/// `track_extra_parameters`).
pub fn is_builtin_reported(name: &str) -> bool {
    builtin_reported(name)
}

fn builtin_reported(name: &str) -> bool {
    REPORTED.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// `track_extra_parameters` beyond [`REPORTED`], as configured now.
static EXTRA: std::sync::RwLock<Vec<&'static str>> = std::sync::RwLock::new(Vec::new());

/// Sets `track_extra_parameters` (on start and reload). Names are interned once per
/// distinct name, so reloads do not grow memory.
pub fn set_extra_tracked<'a>(names: impl Iterator<Item = &'a str>) {
    static INTERNED: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut interned = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
    let mut extra = Vec::new();
    for name in names {
        if REPORTED.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            continue;
        }
        let name = match interned.iter().find(|i| i.eq_ignore_ascii_case(name)) {
            Some(i) => *i,
            None => {
                let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
                interned.push(leaked);
                leaked
            }
        };
        extra.push(name);
    }
    *EXTRA.write().unwrap_or_else(|e| e.into_inner()) = extra;
}

/// The canonical spelling of a tracked setting (reported ones and
/// `track_extra_parameters`), if `name` is one.
pub fn reported(name: &str) -> Option<&'static str> {
    REPORTED
        .iter()
        .copied()
        .find(|r| r.eq_ignore_ascii_case(name))
        .or_else(|| {
            EXTRA
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .copied()
                .find(|r| r.eq_ignore_ascii_case(name))
        })
}

/// Name/value pairs, names compared case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamSet(Vec<(String, String)>);

impl ParamSet {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, name: &str, value: &str) {
        match self.0.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            Some(slot) => slot.1 = value.to_owned(),
            None => self.0.push((name.to_owned(), value.to_owned())),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl From<Vec<(String, String)>> for ParamSet {
    fn from(v: Vec<(String, String)>) -> Self {
        ParamSet(v)
    }
}

/// What a statement does to session state, as far as Sluice can tell from its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing Sluice tracks.
    None,
    /// `SET` of a reported setting: ParameterStatus will tell.
    Reported,
    /// `SET name ...` of another setting; replayed as the statement itself.
    Set { name: String, sql: String },
    /// `RESET name`.
    Reset { name: String },
    /// `RESET ALL` or `DISCARD ALL`: back to the server's defaults.
    ResetAll,
    /// Changes session state in a way that cannot be carried over (`set_config`, `DISCARD`
    /// of parts, SETs inside several statements): the server must be reset after use.
    Untrackable,
}

/// Classifies every statement of a simple-query or Parse text. Only short texts are
/// looked at (the caller skips long ones: they are not SETs).
pub fn classify(sql: &str) -> Vec<Effect> {
    split_statements(sql)
        .into_iter()
        .map(classify_one)
        .filter(|e| *e != Effect::None)
        .collect()
}

/// Splits on `;` outside quotes, double quotes, dollar quotes and comments.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut start) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                i += 1;
                while i < b.len() {
                    if b[i] == q {
                        if b.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'$' => {
                // $tag$ ... $tag$
                if let Some(len) = b[i + 1..].iter().position(|&c| c == b'$') {
                    let tag = &b[i..i + len + 2];
                    if tag[1..tag.len() - 1]
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || *c == b'_')
                    {
                        let body = i + tag.len();
                        match b[body..].windows(tag.len()).position(|w| w == tag) {
                            Some(end) => i = body + end + tag.len() - 1,
                            None => i = b.len(),
                        }
                    }
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b';' => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < sql.len() {
        out.push(&sql[start..]);
    }
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

fn classify_one(stmt: &str) -> Effect {
    let trimmed = stmt.trim();
    let words: Vec<&str> = trimmed.split_whitespace().take(4).collect();
    let first = words.first().map(|w| w.to_ascii_lowercase()).unwrap_or_default();
    match first.as_str() {
        "set" => {
            let second = words.get(1).map(|w| w.to_ascii_lowercase()).unwrap_or_default();
            let name_word = match second.as_str() {
                // Transaction-scoped: gone at COMMIT.
                "local" | "transaction" | "constraints" => return Effect::None,
                "session" => match words.get(2).map(|w| w.to_ascii_lowercase()) {
                    Some(w) if w == "characteristics" => return Effect::Untrackable,
                    Some(w) if w == "authorization" => "session_authorization".to_string(),
                    Some(w) => w,
                    None => return Effect::Untrackable,
                },
                "time" => "timezone".to_string(),
                _ => second.clone(),
            };
            // `SET name=value` without spaces.
            let name = name_word
                .split(['=', ' '])
                .next()
                .unwrap_or_default()
                .trim_matches('"')
                .to_owned();
            if name.is_empty() {
                return Effect::Untrackable;
            }
            // Only the built-in list: an extra tracked name may not be reported by
            // this PostgreSQL, so its SET is also replayed like any other.
            if builtin_reported(&name) {
                return Effect::Reported;
            }
            Effect::Set {
                name,
                sql: trimmed.to_owned(),
            }
        }
        "reset" => {
            let name = words.get(1).map(|w| w.to_ascii_lowercase()).unwrap_or_default();
            match name.as_str() {
                "all" => Effect::ResetAll,
                "" => Effect::Untrackable,
                n if builtin_reported(n) => Effect::Reported,
                n => Effect::Reset { name: n.to_owned() },
            }
        }
        "discard" => match words.get(1).map(|w| w.to_ascii_lowercase()).as_deref() {
            Some("all") => Effect::ResetAll,
            _ => Effect::Untrackable,
        },
        _ if stmt.to_ascii_lowercase().contains("set_config") => Effect::Untrackable,
        _ => Effect::None,
    }
}

/// Cheap test run on every short query: could it change session state? Only then is
/// [`classify`] (which allocates) worth calling.
/// One pass over the bytes; only statement starts (the first, and after each `;`)
/// and underscores (for `set_config`) are looked at closely. False positives only
/// cost a [`classify`].
#[inline]
/// A session-level feature a statement starts, which a server cannot be shared
/// across: the client then keeps its server until it disconnects (see
/// docs/prepared-statements.md). Returns the feature's name.
pub fn pins_session(sql: &[u8]) -> Option<&'static str> {
    for pattern in [&b"advisory_lock"[..], b"ADVISORY_LOCK"] {
        for i in memchr::memmem::find_iter(sql, pattern) {
            // pg_advisory_lock(, pg_advisory_lock_shared(, pg_try_advisory_lock...; the
            // _xact_ variants end with the transaction and are fine.
            if !sql[..i].ends_with(b"xact_") && !sql[..i].ends_with(b"XACT_") {
                return Some("session advisory locks (pg_advisory_lock)");
            }
        }
    }
    let starts = std::iter::once(0).chain(memchr::memchr_iter(b';', sql).map(|i| i + 1));
    for from in starts {
        let rest = &sql[from..];
        let start = rest.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(rest.len());
        // Only the statement's first words are looked at, without allocating: this
        // runs on every short query.
        let head = &rest[start..rest.len().min(start + 64)];
        let word = |w: &[u8]| {
            head.len() >= w.len()
                && head[..w.len()].eq_ignore_ascii_case(w)
                && head
                    .get(w.len())
                    .is_none_or(|b| !b.is_ascii_alphanumeric() && *b != b'_')
        };
        if word(b"listen") {
            return Some("LISTEN");
        }
        if word(b"prepare") {
            return Some("SQL-level PREPARE");
        }
        if word(b"create") {
            let words: Vec<&[u8]> = head
                .split(|b| b.is_ascii_whitespace())
                .filter(|w| !w.is_empty())
                .collect();
            let is = |w: &[u8], k: &[u8]| w.eq_ignore_ascii_case(k);
            let temp = |w: &[u8]| is(w, b"temp") || is(w, b"temporary");
            let scoped = words.get(1).is_some_and(|w| is(w, b"local") || is(w, b"global"));
            if words.get(1).is_some_and(|w| temp(w)) || (scoped && words.get(2).is_some_and(|w| temp(w))) {
                return Some("temporary tables");
            }
        }
        if word(b"declare") {
            let stmt_end = memchr::memchr(b';', rest).unwrap_or(rest.len());
            let text = rest[..stmt_end].to_ascii_lowercase();
            if memchr::memmem::find(&text, b"with hold").is_some() {
                return Some("cursors WITH HOLD");
            }
        }
    }
    None
}

pub fn may_change_session(sql: &[u8]) -> bool {
    let starts_session_keyword = |from: usize| {
        let rest = &sql[from..];
        let start = rest.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(rest.len());
        let head = &rest[start..];
        let starts = |kw: &[u8]| head.len() > kw.len() && head[..kw.len()].eq_ignore_ascii_case(kw);
        starts(b"set") || starts(b"reset") || starts(b"discard")
    };
    if starts_session_keyword(0) {
        return true;
    }
    memchr::memchr2_iter(b';', b'_', sql).any(|i| match sql[i] {
        b';' => starts_session_keyword(i + 1),
        _ => {
            i >= 3
                && sql[i - 3..i].eq_ignore_ascii_case(b"set")
                && sql.get(i + 1..i + 7).is_some_and(|w| w.eq_ignore_ascii_case(b"config"))
        }
    })
}

/// `'value'` with quotes doubled, for SET statements Sluice writes itself.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Parses the startup `options` parameter (`-c name=value`, `--name=value`) into
/// `SET` statements.
pub fn options_to_sets(options: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut words = options.split_whitespace();
    while let Some(w) = words.next() {
        let assignment = if w == "-c" {
            words.next()
        } else if let Some(rest) = w.strip_prefix("--") {
            Some(rest)
        } else {
            w.strip_prefix("-c")
        };
        if let Some((name, value)) = assignment.and_then(|a| a.split_once('=')) {
            let name = name.replace('-', "_");
            out.push((name.clone(), format!("SET {name} = {}", quote_literal(value))));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_features_are_recognised() {
        assert_eq!(pins_session(b"LISTEN jobs"), Some("LISTEN"));
        assert_eq!(pins_session(b"select 1; listen jobs"), Some("LISTEN"));
        assert_eq!(
            pins_session(b"SELECT pg_advisory_lock(42)"),
            Some("session advisory locks (pg_advisory_lock)")
        );
        assert_eq!(
            pins_session(b"SELECT pg_try_advisory_lock_shared(1)"),
            Some("session advisory locks (pg_advisory_lock)")
        );
        assert_eq!(pins_session(b"SELECT pg_advisory_xact_lock(42)"), None);
        assert_eq!(pins_session(b"CREATE TEMP TABLE t (x int)"), Some("temporary tables"));
        assert_eq!(
            pins_session(b"create local temporary table t (x int)"),
            Some("temporary tables")
        );
        assert_eq!(pins_session(b"CREATE TABLE temp (x int)"), None);
        assert_eq!(
            pins_session(b"DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
            Some("cursors WITH HOLD")
        );
        assert_eq!(pins_session(b"DECLARE c CURSOR FOR SELECT 1"), None);
        assert_eq!(pins_session(b"PREPARE q AS SELECT 1"), Some("SQL-level PREPARE"));
        assert_eq!(pins_session(b"SELECT 'listen' AS prepared"), None);
        assert_eq!(pins_session(b"listener"), None);
    }

    fn one(sql: &str) -> Effect {
        let mut v = classify(sql);
        assert!(v.len() <= 1, "{sql}: {v:?}");
        v.pop().unwrap_or(Effect::None)
    }

    #[test]
    fn classifies_session_statements() {
        assert_eq!(one("SET TIME ZONE 'UTC'"), Effect::Reported);
        assert_eq!(one("set application_name = 'x'"), Effect::Reported);
        assert_eq!(one("SET DateStyle TO ISO"), Effect::Reported);
        assert_eq!(
            one("SET statement_timeout = '5s';"),
            Effect::Set {
                name: "statement_timeout".into(),
                sql: "SET statement_timeout = '5s'".into()
            }
        );
        assert_eq!(
            one("  SET SESSION search_path TO app, public"),
            Effect::Set {
                name: "search_path".into(),
                sql: "SET SESSION search_path TO app, public".into()
            }
        );
        assert_eq!(
            one("set work_mem='64MB'"),
            Effect::Set {
                name: "work_mem".into(),
                sql: "set work_mem='64MB'".into()
            }
        );
        assert_eq!(one("SET LOCAL statement_timeout = 1"), Effect::None);
        assert_eq!(one("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"), Effect::None);
        assert_eq!(
            one("RESET statement_timeout"),
            Effect::Reset {
                name: "statement_timeout".into()
            }
        );
        assert_eq!(one("RESET ALL"), Effect::ResetAll);
        assert_eq!(one("discard all;"), Effect::ResetAll);
        assert_eq!(one("DISCARD PLANS"), Effect::Untrackable);
        assert_eq!(one("SELECT set_config('search_path', 'x', false)"), Effect::Untrackable);
        assert_eq!(one("SELECT 1"), Effect::None);
        assert_eq!(
            one("SET SESSION AUTHORIZATION bob"),
            Effect::Set {
                name: "session_authorization".into(),
                sql: "SET SESSION AUTHORIZATION bob".into()
            }
        );
    }

    #[test]
    fn sees_every_statement_of_a_multi_statement_text() {
        assert_eq!(
            classify("BEGIN; SET work_mem = '2MB'; COMMIT"),
            vec![Effect::Set {
                name: "work_mem".into(),
                sql: "SET work_mem = '2MB'".into()
            }]
        );
        assert_eq!(classify("SELECT 1; SET a = 1; RESET b").len(), 2);
        // Semicolons inside quotes, dollar quotes and comments do not split.
        assert_eq!(classify("SELECT ';SET x = 1'"), vec![]);
        assert_eq!(classify("SELECT $f$; set x = 1 $f$"), vec![]);
        assert_eq!(classify("SELECT 1 -- ; set x = 1\n"), vec![]);
        assert!(may_change_session(b"BEGIN; SET work_mem = 1; COMMIT"));
    }

    #[test]
    fn parses_startup_options() {
        assert_eq!(
            options_to_sets("-c statement_timeout=5000 --search-path=app -cwork_mem=4MB"),
            vec![
                (
                    "statement_timeout".to_string(),
                    "SET statement_timeout = '5000'".to_string()
                ),
                ("search_path".to_string(), "SET search_path = 'app'".to_string()),
                ("work_mem".to_string(), "SET work_mem = '4MB'".to_string()),
            ]
        );
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn param_sets_are_case_insensitive() {
        let mut p = ParamSet::default();
        p.set("TimeZone", "UTC");
        p.set("timezone", "Europe/Paris");
        assert_eq!(p.get("TIMEZONE"), Some("Europe/Paris"));
        assert_eq!(p.iter().count(), 1);
        assert_eq!(reported("datestyle"), Some("DateStyle"));
    }
}

#[cfg(test)]
mod precheck_tests {
    use super::*;

    #[test]
    fn precheck_finds_candidates_only() {
        assert!(may_change_session(b"  set x = 1"));
        assert!(may_change_session(b"RESET ALL"));
        assert!(may_change_session(b"select SET_CONFIG('a','b',false)"));
        assert!(!may_change_session(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 1"
        ));
        assert!(!may_change_session(b"settle"[..3].as_ref()));
    }
}
