//! What overload protection reads of a statement's text, as pure functions over a
//! bounded prefix of its bytes: transaction control (`BEGIN`, `COMMIT`), lone `SET`s,
//! comment tags (sqlcommenter and `/* sluice: lane=... */`) and the normalised
//! fingerprint. Nothing here allocates for statements that are none of these, except
//! the fingerprint's text.

/// Bytes of a statement looked at: enough for any tag or `BEGIN ...`, bounded so a
/// 1 MB statement costs the same as a short one.
pub const INSPECT: usize = 1024;

/// Characters of a fingerprint kept for display (SHOW LANES, wait explanations).
const SHOWN: usize = 120;

/// The statement with comments cut out, and the comments' contents.
fn split_comments(sql: &[u8]) -> (Vec<u8>, Vec<&[u8]>) {
    let sql = &sql[..sql.len().min(INSPECT)];
    let mut text = Vec::with_capacity(sql.len());
    let mut comments = Vec::new();
    let mut i = 0;
    while i < sql.len() {
        match sql[i] {
            b'-' if sql.get(i + 1) == Some(&b'-') => {
                let end = memchr::memchr(b'\n', &sql[i..]).map_or(sql.len(), |e| i + e);
                comments.push(&sql[i + 2..end]);
                text.push(b' ');
                i = end;
            }
            b'/' if sql.get(i + 1) == Some(&b'*') => {
                let end = comment_close(sql, i + 2).unwrap_or(sql.len());
                comments.push(&sql[i + 2..end]);
                text.push(b' ');
                i = (end + 2).min(sql.len());
            }
            b'\'' | b'"' => {
                // Quoted text is kept as it is (a `--` inside it is no comment).
                let q = sql[i];
                let end = memchr::memchr(q, &sql[i + 1..]).map_or(sql.len(), |e| i + 2 + e);
                text.extend_from_slice(&sql[i..end]);
                i = end;
            }
            b => {
                text.push(b);
                i += 1;
            }
        }
    }
    (text, comments)
}

/// Whether the statement's first word is one of `words` (ignoring case), or it starts
/// with a comment and so needs the full look: a cheap test before [`plain_words`].
fn may_start_with(sql: &[u8], words: &[&[u8]]) -> bool {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(sql.len());
    let head = &sql[start..];
    if head.starts_with(b"/*") || head.starts_with(b"--") {
        return true;
    }
    let len = head.iter().take_while(|b| b.is_ascii_alphabetic()).count();
    words.iter().any(|w| w.eq_ignore_ascii_case(&head[..len]))
}

/// The statement's words when it is made only of plain words (letters, `_`, commas,
/// an optional trailing `;`), lowercased; None if anything else is in it.
fn plain_words(sql: &[u8]) -> Option<Vec<String>> {
    if sql.len() > 256 {
        return None;
    }
    let (text, _) = split_comments(sql);
    let text = std::str::from_utf8(&text).ok()?;
    let text = text.trim().trim_end_matches(';').trim();
    if !text
        .bytes()
        .all(|b| b.is_ascii_alphabetic() || b == b'_' || b == b',' || b.is_ascii_whitespace())
    {
        return None;
    }
    Some(
        text.split(|c: char| c == ',' || c.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_lowercase)
            .collect(),
    )
}

/// A `BEGIN` / `START TRANSACTION` that can be answered without a server and run
/// later, just before the transaction's first real statement: only the forms whose
/// every word PostgreSQL accepts in any state (isolation level, READ ONLY/WRITE,
/// [NOT] DEFERRABLE), so running it later cannot fail where running it now would not.
pub fn is_deferrable_begin(sql: &[u8]) -> bool {
    if !may_start_with(sql, &[b"begin", b"start"]) {
        return false;
    }
    let Some(words) = plain_words(sql) else {
        return false;
    };
    let mut w = words.iter().map(String::as_str).peekable();
    match w.next() {
        Some("begin") => {
            if matches!(w.peek(), Some(&"work") | Some(&"transaction")) {
                w.next();
            }
        }
        Some("start") => {
            if w.next() != Some("transaction") {
                return false;
            }
        }
        _ => return false,
    }
    while let Some(word) = w.next() {
        let ok = match word {
            "isolation" => {
                w.next() == Some("level")
                    && match w.next() {
                        Some("serializable") => true,
                        Some("repeatable") => w.next() == Some("read"),
                        Some("read") => matches!(w.next(), Some("committed") | Some("uncommitted")),
                        _ => false,
                    }
            }
            "read" => matches!(w.next(), Some("only") | Some("write")),
            "not" => w.next() == Some("deferrable"),
            "deferrable" => true,
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// How a plain `COMMIT` / `END` / `ROLLBACK` / `ABORT` ends a transaction block: the
/// command tag PostgreSQL answers with. None for anything else (savepoints, AND CHAIN,
/// PREPARE TRANSACTION).
pub fn ends_block(sql: &[u8]) -> Option<&'static str> {
    if !may_start_with(sql, &[b"commit", b"end", b"rollback", b"abort"]) {
        return None;
    }
    let words = plain_words(sql)?;
    let (first, rest) = words.split_first()?;
    let tag = match first.as_str() {
        "commit" | "end" => "COMMIT",
        "rollback" | "abort" => "ROLLBACK",
        _ => return None,
    };
    match rest {
        [] => Some(tag),
        [w] if w == "work" || w == "transaction" => Some(tag),
        _ => None,
    }
}

/// True when the statement starts with BEGIN or START (a transaction block opens).
pub fn opens_block(sql: &[u8]) -> bool {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(sql.len());
    let head = &sql[start..];
    if head.starts_with(b"/*") || head.starts_with(b"--") {
        // Rare: a leading comment. Cut comments, then look again.
        let (text, _) = split_comments(&sql[..sql.len().min(256)]);
        return !text.starts_with(b"/*") && !text.starts_with(b"--") && opens_block(&text);
    }
    let keyword = |k: &[u8]| head.len() >= k.len() && head[..k.len()].eq_ignore_ascii_case(k);
    keyword(b"begin") || keyword(b"start")
}

/// The text after a leading `BEGIN ...;` in a multi-statement query: the statement
/// that gives a transaction its meaning.
pub fn after_begin(sql: &[u8]) -> &[u8] {
    if !opens_block(sql) {
        return sql;
    }
    match memchr::memchr(b';', &sql[..sql.len().min(256)]) {
        Some(i) if sql[i + 1..].iter().any(|b| !b.is_ascii_whitespace() && *b != 0) => &sql[i + 1..],
        _ => sql,
    }
}

/// A single `SET name ...` of a session setting (not LOCAL, TRANSACTION, ROLE or
/// SESSION AUTHORIZATION), which Sluice may answer itself once it has seen the same
/// text succeed with the same settings before (see `LocalSets`).
pub fn is_lone_set(sql: &[u8]) -> bool {
    if sql.len() > 512 || !sql.get(..3).is_some_and(|p| p.eq_ignore_ascii_case(b"set")) {
        return false;
    }
    let Ok(text) = std::str::from_utf8(sql) else {
        return false;
    };
    let statements = crate::params::split_statements(text);
    if statements.len() != 1 {
        return false;
    }
    let words: Vec<String> = text
        .split_whitespace()
        .take(3)
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let second = words.get(1).map(String::as_str).unwrap_or("");
    let name = second.split('=').next().unwrap_or("");
    !matches!(
        name,
        "" | "local" | "transaction" | "constraints" | "role" | "session" | "tablespace"
    ) && !matches!(
        crate::params::classify(text).as_slice(),
        [] | [crate::params::Effect::Untrackable]
    )
}

/// Tags in the statement's comments: sqlcommenter's `/*key='value',...*/` (values
/// URL-encoded, as Django's and Rails' sqlcommenter write them) and Sluice's plain
/// `/* sluice: lane=reports */`. Keys are lowercased.
pub fn tags(sql: &[u8]) -> Vec<(String, String)> {
    if !has_block_comment(sql) {
        return Vec::new();
    }
    let (_, comments) = split_comments(sql);
    let mut out = Vec::new();
    for c in comments {
        let c = String::from_utf8_lossy(c);
        let c = c.trim();
        if let Some(rest) = c.strip_prefix("sluice:") {
            for pair in rest.split([',', ' ']).filter(|p| !p.is_empty()) {
                if let Some((k, v)) = pair.split_once('=') {
                    out.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
            }
            continue;
        }
        for pair in c.split(',') {
            let Some((k, v)) = pair.split_once('=') else { continue };
            let v = v.trim();
            let Some(v) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) else {
                continue;
            };
            let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
            out.push((decode(k.trim()).to_ascii_lowercase(), decode(v)));
        }
    }
    out
}

/// A statement's shape: lowercased, comments cut, literals and numbers replaced by `?`,
/// whitespace collapsed. Two runs of the same ORM query with other values agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub id: u64,
    /// The start of the normalised text, for people.
    pub text: String,
}

/// Normalises a statement (see [`Fingerprint`]), giving each byte of the result to
/// `emit`: no allocation, at most [`INSPECT`] bytes of input are read.
fn normalize(sql: &[u8], in_block: bool, mut emit: impl FnMut(u8)) {
    let sql = &sql[..sql.len().min(INSPECT)];
    if in_block {
        b"begin;".iter().for_each(|&b| emit(b));
    }
    // Whitespace collapses to one space, written only before the next byte (so none
    // leads or trails).
    let mut owed_space = in_block;
    let mut started = in_block;
    let mut last_word = false;
    fn put(b: u8, owed_space: &mut bool, emit: &mut impl FnMut(u8)) {
        if std::mem::take(owed_space) {
            emit(b' ');
        }
        emit(b);
    }
    let mut i = 0;
    while i < sql.len() {
        let b = sql[i];
        match b {
            b'-' if sql.get(i + 1) == Some(&b'-') => {
                i = memchr::memchr(b'\n', &sql[i..]).map_or(sql.len(), |e| i + e);
                continue;
            }
            b'/' if sql.get(i + 1) == Some(&b'*') => {
                // A comment separates words as a space does.
                i = comment_close(sql, i + 2).map_or(sql.len(), |e| e + 2);
                owed_space = started;
                last_word = false;
                continue;
            }
            b'\'' => {
                i = memchr::memchr(b'\'', &sql[i + 1..]).map_or(sql.len(), |e| i + 2 + e);
                put(b'?', &mut owed_space, &mut emit);
                (started, last_word) = (true, false);
                continue;
            }
            b'0'..=b'9' if !last_word => {
                while i < sql.len() && (sql[i].is_ascii_digit() || sql[i] == b'.') {
                    i += 1;
                }
                put(b'?', &mut owed_space, &mut emit);
                (started, last_word) = (true, false);
                continue;
            }
            b';' | 0 => break,
            b if b.is_ascii_whitespace() => {
                owed_space = started;
                last_word = false;
            }
            b if is_word_byte(b) => {
                // Most of a statement: a run of word bytes, taken in one tight loop.
                put(b.to_ascii_lowercase(), &mut owed_space, &mut emit);
                i += 1;
                let end = i + sql[i..].iter().take_while(|&&b| is_word_byte(b)).count();
                sql[i..end].iter().for_each(|b| emit(b.to_ascii_lowercase()));
                i = end;
                (started, last_word) = (true, true);
                continue;
            }
            b => {
                put(b.to_ascii_lowercase(), &mut owed_space, &mut emit);
                started = true;
                last_word = false;
            }
        }
        i += 1;
    }
}

/// A byte of an identifier, keyword or number.
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Where the `*/` closing a comment whose text starts at `from` is (memchr rather
/// than a memmem finder, which costs more to build than a short search saves).
fn comment_close(sql: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(e) = memchr::memchr(b'*', sql.get(at..)?) {
        if sql.get(at + e + 1) == Some(&b'/') {
            return Some(at + e);
        }
        at += e + 1;
    }
    None
}

/// Whether the statement's inspected prefix has a `/*` comment at all.
fn has_block_comment(sql: &[u8]) -> bool {
    let sql = &sql[..sql.len().min(INSPECT)];
    memchr::memchr_iter(b'/', sql).any(|i| sql.get(i + 1) == Some(&b'*'))
}

/// FNV-1a over the normalised bytes: a byte at a time as [`normalize`] makes them.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, b: u8) {
        self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }

    /// Never 0, which marks "no fingerprint" elsewhere.
    fn id(&self) -> u64 {
        self.0.max(1)
    }
}

/// The fingerprint's id alone: what the hot path needs (no allocation).
pub fn fingerprint_id(sql: &[u8], in_block: bool) -> u64 {
    let mut h = Fnv::new();
    normalize(sql, in_block, |b| h.add(b));
    h.id()
}

/// The fingerprint of a statement with its text; `in_block` marks the first statement
/// of a transaction block (its holds include the time between statements).
pub fn fingerprint(sql: &[u8], in_block: bool) -> Fingerprint {
    let mut h = Fnv::new();
    let mut text = Vec::new();
    normalize(sql, in_block, |b| {
        h.add(b);
        if text.len() < SHOWN + 4 {
            text.push(b);
        }
    });
    let mut shown = String::from_utf8_lossy(&text).into_owned();
    if shown.len() > SHOWN {
        let mut cut = SHOWN;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        shown.truncate(cut);
        shown.push_str("...");
    }
    Fingerprint {
        id: h.id(),
        text: shown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferrable_begins() {
        for ok in [
            "BEGIN",
            "begin;",
            "BEGIN TRANSACTION",
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
            "begin read write",
            "BEGIN /* sluice: lane=reports */",
            "BEGIN ISOLATION LEVEL READ COMMITTED NOT DEFERRABLE",
        ] {
            assert!(is_deferrable_begin(ok.as_bytes()), "{ok}");
        }
        for no in [
            "BEGIN; SELECT 1",
            "BEGIN ISOLATION LEVEL SOMETHING",
            "BEGINX",
            "START",
            "BEGIN READ",
            "SELECT 1",
            "BEGIN 'x'",
        ] {
            assert!(!is_deferrable_begin(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn block_ends() {
        assert_eq!(ends_block(b"COMMIT"), Some("COMMIT"));
        assert_eq!(ends_block(b"end transaction;"), Some("COMMIT"));
        assert_eq!(ends_block(b"ROLLBACK WORK"), Some("ROLLBACK"));
        assert_eq!(ends_block(b"abort"), Some("ROLLBACK"));
        assert_eq!(ends_block(b"ROLLBACK TO SAVEPOINT a"), None);
        assert_eq!(ends_block(b"COMMIT AND CHAIN"), None);
        assert_eq!(ends_block(b"COMMIT PREPARED 'x'"), None);
    }

    #[test]
    fn lone_sets() {
        assert!(is_lone_set(b"SET TIME ZONE 'UTC'"));
        assert!(is_lone_set(b"set search_path = app, public"));
        assert!(is_lone_set(b"SET statement_timeout=5000"));
        assert!(!is_lone_set(b"SET LOCAL statement_timeout = 5"));
        assert!(!is_lone_set(b"SET ROLE admin"));
        assert!(!is_lone_set(b"SET SESSION AUTHORIZATION x"));
        assert!(!is_lone_set(b"SET TRANSACTION READ ONLY"));
        assert!(!is_lone_set(b"SET a = 1; SELECT 1"));
        assert!(!is_lone_set(b"SELECT 1"));
    }

    #[test]
    fn comment_tags() {
        let sql = b"SELECT 1 /*controller='export',route='%2Fprojects%2F%3Cint%3Aid%3E%2Fexport'*/";
        assert_eq!(
            tags(sql),
            vec![
                ("controller".into(), "export".into()),
                ("route".into(), "/projects/<int:id>/export".into())
            ]
        );
        assert_eq!(
            tags(b"/* sluice: lane=reports */ SELECT 1"),
            vec![("lane".into(), "reports".into())]
        );
        assert!(tags(b"SELECT '/*'").is_empty() || tags(b"SELECT '/*'").iter().all(|(k, _)| k.is_empty()));
        assert!(tags(b"SELECT 1").is_empty());
    }

    #[test]
    fn fingerprints_ignore_values() {
        let a = fingerprint(
            b"SELECT * FROM t WHERE id = 42 AND name = 'x' /*controller='a'*/",
            false,
        );
        let b = fingerprint(b"select *  from t where id = 7 and name = 'yy'", false);
        assert_eq!(a.id, b.id);
        assert_eq!(a.text, "select * from t where id = ? and name = ?");
        assert_ne!(fingerprint(b"select 1", true).id, fingerprint(b"select 1", false).id);
        assert_eq!(fingerprint(b"select col1 from t2", false).text, "select col1 from t2");
        assert_eq!(fingerprint(b"select 'a--b' -- note\n, 2", false).text, "select ? , ?");
        assert_eq!(fingerprint(b"select 1", false).id, fingerprint_id(b"select 1", false));
        // Whitespace and comments neither lead nor trail; a block is marked.
        assert_eq!(fingerprint(b"  /* a * b */ SELECT\n\t1 /* end", false).text, "select ?");
        assert_eq!(fingerprint(b"  SELECT x ;  ", true).text, "begin; select x");
        assert_eq!(fingerprint(b"", true).text, "begin;");
        assert_eq!(fingerprint(b"/**/select/***/1", false).text, "select ?");
        let long = fingerprint(format!("select {}", "a, ".repeat(100)).as_bytes(), false);
        assert!(
            long.text.ends_with("...") && long.text.len() == SHOWN + 3,
            "{}",
            long.text
        );
    }

    #[test]
    fn cheap_first_word_tests_agree_with_the_full_ones() {
        assert_eq!(ends_block(b"/* x */ COMMIT"), Some("COMMIT"));
        assert_eq!(ends_block(b"commitx"), None);
        assert_eq!(ends_block(b"SELECT 1"), None);
        assert!(is_deferrable_begin(b"-- why\nBEGIN"));
        assert!(!is_deferrable_begin(b"BEGINS"));
        assert!(!has_block_comment(b"select 1 / 2"));
        assert!(has_block_comment(b"select 1 /*x*/"));
    }

    #[test]
    fn blocks_open_with_begin_or_start() {
        assert!(opens_block(b"  BEGIN; SELECT 1"));
        assert!(opens_block(b"/* c */ start transaction"));
        assert!(!opens_block(b"SELECT 1"));
        assert!(!opens_block(b"/* begin */ SELECT 1"));
    }

    #[test]
    fn text_after_begin() {
        assert_eq!(after_begin(b"BEGIN; SELECT 1"), b" SELECT 1");
        assert_eq!(after_begin(b"SELECT 1"), b"SELECT 1");
        assert_eq!(after_begin(b"BEGIN;"), b"BEGIN;");
    }
}
