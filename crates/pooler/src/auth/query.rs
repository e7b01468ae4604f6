//! `auth_query`: secrets of users not in `auth_file`, looked up in PostgreSQL as
//! `auth_user` (PgBouncer's default reads `pg_authid`: the secret, NULL once
//! `rolvaliduntil` has passed, only for roles that may log in).
//!
//! PgBouncer runs the query for every login (its issue #1302: a connection storm
//! becomes a query storm). Sluice keeps each answer for `auth_query_cache_ttl`
//! seconds, runs one query per user however many logins wait for it, and forgets an
//! answer as soon as a login with it fails (the password may have just changed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use dashmap::DashMap;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;
use sluice_wire::sqlstate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;
use tracing::{debug, warn};

use super::StoredSecret;
use crate::app::App;
use crate::config::{seconds, Config};
use crate::errors::ClientError;
use crate::server::ServerConn;

/// Where a user's secret is looked up: (database the query runs in, user).
pub type LookupKey = (String, String);

/// What auth_query said of a user: its secret, or None (no such user, or a NULL
/// password: no password login).
pub type Answer = Option<Arc<StoredSecret>>;

/// Entries kept at most; past it, expired ones go first, then all.
const MAX_ENTRIES: usize = 100_000;

/// A result larger than this is not a password row.
const MAX_RESULT_BYTES: usize = 64 * 1024;

#[derive(Default)]
pub struct AuthCache {
    /// The lookup logins use, by key: running, or answered within the TTL.
    lookups: DashMap<LookupKey, Arc<Lookup>>,
    /// The newest secret found per key, however old: pools log in with it.
    known: DashMap<LookupKey, Arc<StoredSecret>>,
}

struct Lookup {
    started: Instant,
    /// Set once, by whichever waiting login runs the query first.
    answer: OnceCell<Answer>,
}

/// Who runs the query for logins to `db`, in which database, and which query: the
/// database entry's `auth_user` / `auth_dbname` / `auth_query`, else the global ones.
struct Target<'a> {
    auth_user: &'a str,
    query_db: &'a str,
    sql: &'a str,
}

/// None without an auth_user: auth_query does not apply to `db`.
fn target<'a>(config: &'a Config, db: &'a str) -> Option<Target<'a>> {
    let entry = config.databases.get(db).or_else(|| config.databases.get("*"));
    let pick = |own: Option<&'a String>, global: Option<&'a String>| {
        own.or(global).map(String::as_str).filter(|v| !v.trim().is_empty())
    };
    Some(Target {
        auth_user: pick(entry.and_then(|e| e.auth_user.as_ref()), config.auth_user.as_ref())?,
        query_db: pick(entry.and_then(|e| e.auth_dbname.as_ref()), config.auth_dbname.as_ref()).unwrap_or(db),
        sql: pick(entry.and_then(|e| e.auth_query.as_ref()), Some(&config.auth_query)).unwrap_or_default(),
    })
}

impl AuthCache {
    /// The newest secret found for `user` logging in to `db`, if auth_query applies.
    pub fn known(&self, config: &Config, db: &str, user: &str) -> Option<Arc<StoredSecret>> {
        let t = target(config, db)?;
        self.known
            .get(&(t.query_db.to_owned(), user.to_owned()))
            .map(|s| Arc::clone(&s))
    }

    /// Drops the login-time answer for `key`: the next login asks PostgreSQL again.
    pub fn forget(&self, key: &LookupKey) {
        self.lookups.remove(key);
    }

    fn lookup_for(&self, key: &LookupKey, ttl: Duration) -> Arc<Lookup> {
        if self.lookups.len() >= MAX_ENTRIES {
            self.lookups.retain(|_, l| l.started.elapsed() < ttl);
        }
        let mut slot = self.lookups.entry(key.clone()).or_insert_with(Lookup::new);
        if slot.answer.initialized() && slot.started.elapsed() >= ttl {
            *slot = Lookup::new();
        }
        Arc::clone(&slot)
    }

    fn remember(&self, key: &LookupKey, answer: &Answer) {
        match answer {
            Some(secret) => {
                if self.known.len() >= MAX_ENTRIES {
                    self.known.clear();
                }
                self.known.insert(key.clone(), Arc::clone(secret));
            }
            None => {
                self.known.remove(key);
            }
        }
    }
}

impl Lookup {
    fn new() -> Arc<Lookup> {
        Arc::new(Lookup {
            started: Instant::now(),
            answer: OnceCell::new(),
        })
    }
}

/// Looks `user`'s secret up for a login to `db`: None if auth_query does not apply
/// (no auth_user), else the key (to forget it if the login fails) and the answer.
pub async fn lookup(app: &App, db: &str, user: &str) -> Result<Option<(LookupKey, Answer)>, ClientError> {
    let current = app.current();
    let Some(Target {
        auth_user,
        query_db,
        sql,
    }) = target(&current.config, db)
    else {
        return Ok(None);
    };
    let key = (query_db.to_owned(), user.to_owned());
    let ttl = seconds(current.config.auth_query_cache_ttl).unwrap_or(Duration::ZERO);
    let lookup = current.auth_cache.lookup_for(&key, ttl);
    let answer = lookup
        .answer
        .get_or_try_init(|| async {
            let answer = run(app, query_db, auth_user, sql, user).await?;
            debug!(user, db = %query_db, found = answer.is_some(), "auth_query answered");
            current.auth_cache.remember(&key, &answer);
            Ok::<_, ClientError>(answer)
        })
        .await?
        .clone();
    Ok(Some((key, answer)))
}

/// Runs the query on a server of the (query_db, auth_user) pool.
async fn run(app: &App, query_db: &str, auth_user: &str, sql: &str, user: &str) -> Result<Answer, ClientError> {
    let route = app.route(query_db, auth_user)?;
    let mut server = route
        .pool
        .acquire(crate::pool::Ticket::default())
        .await
        .map_err(|e| ClientError::from(&e))?;
    let result = server.query_one_param(sql, user).await;
    // A server the query left idle and in sync goes back to the pool.
    route
        .pool
        .release(server, !matches!(result, Err(QueryFailed::Connection(_))));
    let rows = result.map_err(|e| {
        warn!(auth_user, db = query_db, "auth_query failed: {e}");
        e.to_client()
    })?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    match (row.first(), row.get(1)) {
        (Some(None), _) => Err(QueryFailed::Result("auth_query response contained null user name".into()).to_client()),
        (Some(Some(_)), Some(Some(secret))) => Ok(Some(Arc::new(StoredSecret::new(secret)))),
        // A NULL password: the user exists but cannot log in with one.
        _ => Ok(None),
    }
}

#[derive(Debug, thiserror::Error)]
enum QueryFailed {
    /// PostgreSQL answered with an error (the server stays usable).
    #[error("{0}")]
    Server(String),
    #[error("{0}")]
    Result(String),
    #[error("server connection failed: {0}")]
    Connection(String),
}

impl QueryFailed {
    fn to_client(&self) -> ClientError {
        ClientError::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            format!("auth_query failed: {self}"),
        )
        .hint("check auth_user's password in auth_file and its right to run auth_query (docs/authentication.md)")
    }
}

impl ServerConn {
    /// Runs `sql` with one text parameter in the extended protocol (the user name is
    /// never spliced into SQL) and returns the rows as text. PgBouncer's rule: two
    /// columns.
    async fn query_one_param(&mut self, sql: &str, param: &str) -> Result<Vec<Vec<Option<String>>>, QueryFailed> {
        let mut out = BytesMut::new();
        let encode = |e: std::io::Error| QueryFailed::Connection(e.to_string());
        frontend::parse("", sql, std::iter::empty(), &mut out).map_err(encode)?;
        frontend::bind(
            "",
            "",
            [0i16],
            [param],
            |p: &str, buf: &mut BytesMut| {
                buf.extend_from_slice(p.as_bytes());
                Ok(IsNull::No)
            },
            [0i16],
            &mut out,
        )
        .map_err(|_| QueryFailed::Result("cannot encode the user name".into()))?;
        frontend::describe(b'P', "", &mut out).map_err(encode)?;
        frontend::execute("", 0, &mut out).map_err(encode)?;
        frontend::sync(&mut out);
        self.wr
            .write_all(&out)
            .await
            .map_err(|e| QueryFailed::Connection(e.to_string()))?;

        let mut rows = Vec::new();
        let mut failed = None;
        let mut size = 0usize;
        loop {
            let msg = loop {
                match Message::parse(&mut self.buf) {
                    Ok(Some(m)) => break m,
                    Ok(None) => {
                        let n = self
                            .rd
                            .read_buf(&mut self.buf)
                            .await
                            .map_err(|e| QueryFailed::Connection(e.to_string()))?;
                        size += n;
                        if n == 0 || size > MAX_RESULT_BYTES {
                            return Err(QueryFailed::Connection("closed or too much data".into()));
                        }
                    }
                    Err(e) => return Err(QueryFailed::Connection(e.to_string())),
                }
            };
            match msg {
                Message::RowDescription(d) => {
                    let n = fallible_iterator::FallibleIterator::count(d.fields()).unwrap_or(0);
                    if n != 2 && failed.is_none() {
                        failed = Some(QueryFailed::Result(format!(
                            "expected 2 columns from auth_query, not {n}"
                        )));
                    }
                }
                Message::DataRow(row) => {
                    let buf = row.buffer();
                    let mut values = Vec::new();
                    let mut ranges = row.ranges();
                    while let Ok(Some(r)) = fallible_iterator::FallibleIterator::next(&mut ranges) {
                        values.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(values);
                }
                Message::ErrorResponse(body) => {
                    let mut text = String::new();
                    let mut fields = body.fields();
                    while let Ok(Some(f)) = fallible_iterator::FallibleIterator::next(&mut fields) {
                        if f.type_() == b'M' {
                            text = String::from_utf8_lossy(f.value_bytes()).into_owned();
                        }
                    }
                    failed.get_or_insert(QueryFailed::Server(text));
                }
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }
}
