//! The session's side of named prepared statements in transaction mode (see
//! [`crate::statements`]): Parse, Bind, Describe and Close are stopped at the client's
//! scan point and rewritten there, then scanning goes on.
//!
//! - Parse "name": recorded for the client; sent as the statement's server name, or,
//!   when this server already has it, as an unnamed Parse (PostgreSQL answers
//!   ParseComplete in the right place, and nothing is prepared twice).
//! - Bind / Describe of a recorded name: the server name; when the server lacks the
//!   statement, a Parse for it is put in front (its ParseComplete is dropped).
//! - Close "name": forgotten for the client; sent as a Close of a name no server has,
//!   which PostgreSQL answers with CloseComplete (other clients keep using the server
//!   statement).
//! - Unnamed statements and portals, and names the client never prepared with Parse
//!   (SQL `PREPARE`), pass through untouched.

use bytes::{BufMut, Bytes, BytesMut};
use sluice_wire::frontend::{BIND, CLOSE, DESCRIBE, PARSE};
use sluice_wire::Header;

use super::ClientConn;
use crate::errors::ClientError;
use crate::server::ServerConn;
use crate::statements::{ClientStatements, ParseTracker, Statement};

/// A name no server statement has: what a client's Close is turned into.
const NO_STATEMENT: &str = "sluice_closed";

/// Prepared-statement state of one client session.
#[derive(Debug, Default)]
pub struct State {
    /// Rewriting is on (transaction mode with max_prepared_statements > 0).
    pub enabled: bool,
    pub statements: ClientStatements,
    pub tracker: ParseTracker,
    /// The client scan stopped before a Parse/Bind/Describe/Close to rewrite.
    pub stopped: bool,
    /// A ParseComplete at the front of the server buffer answers an injected Parse.
    pub dropping: bool,
    /// The client ran DISCARD ALL / DEALLOCATE ALL: its server's statements are gone.
    pub clear_requested: bool,
    /// Parses sent to servers since the last ReadyForQuery (stats).
    pub server_parses: u32,
    /// Reused buffers for rewritten messages and the buffer they are spliced into:
    /// no allocation per Bind in steady state.
    pub scratch: BytesMut,
    pub spare: BytesMut,
}

/// Messages that may carry a statement name.
#[inline]
pub fn names_statement(tag: u8) -> bool {
    matches!(tag, PARSE | BIND | DESCRIBE | CLOSE)
}

/// What [`rewrite`] did.
pub enum Step {
    /// The message was handled: scanning goes on after it.
    Handled,
    /// More bytes, or a server, are needed first.
    Wait,
}

/// Handles the message the client scan stopped before. `saw_parse` is shown each
/// Parse's query text (for session-state tracking).
pub fn rewrite(
    client: &mut ClientConn,
    st: &mut State,
    server: Option<&mut ServerConn>,
    saw_parse: &mut dyn FnMut(&[u8]),
) -> Result<Step, ClientError> {
    let at = client.scan.scan_point();
    let header = Header::parse(&client.buf[at..], client.scan.max_len());
    let Some(h) = header.map_err(|e| ClientError::protocol(e.to_string()))? else {
        return Ok(Step::Wait);
    };
    let total = h.total_len();
    let present = (client.buf.len() - at).min(total);
    let complete = present == total;
    let body = &client.buf[at + 5..at + present];
    match h.tag {
        PARSE => {
            if !complete {
                return Ok(Step::Wait);
            }
            let (name, tail) = split_cstr(body).ok_or_else(|| malformed("Parse"))?;
            if name.is_empty() {
                saw_parse(cstr_prefix(tail));
                st.tracker.parse_sent(false, None);
                client.scan.accept(total, 0);
                return Ok(Step::Handled);
            }
            let Some(server) = server else {
                return Ok(Step::Wait);
            };
            saw_parse(cstr_prefix(tail));
            let name = String::from_utf8_lossy(name).into_owned();
            let stmt = st
                .statements
                .insert(&name, Bytes::copy_from_slice(tail))
                .map_err(too_many)?;
            let send_as = if server.statements.has(&stmt.server_name) {
                ""
            } else {
                server.statements.add(&stmt.server_name);
                st.server_parses += 1;
                stmt.server_name.as_str()
            };
            let mut out = BytesMut::with_capacity(total + 64);
            parse_message(&mut out, send_as, &stmt.parse_tail);
            st.tracker.parse_sent(false, Some(send_as).filter(|n| !n.is_empty()));
            replace(client, &mut st.spare, at, total, &out, 0);
            Ok(Step::Handled)
        }
        BIND => {
            let Some((portal_end, name_end)) = two_cstrs(body) else {
                return if complete {
                    Err(malformed("Bind"))
                } else {
                    Ok(Step::Wait)
                };
            };
            let name = &body[portal_end + 1..name_end];
            let stmt = (!name.is_empty()).then(|| lookup(&st.statements, name)).flatten();
            let Some(stmt) = stmt else {
                client.scan.accept(present, total - present);
                return Ok(Step::Handled);
            };
            let Some(server) = server else {
                return Ok(Step::Wait);
            };
            let mut out = std::mem::take(&mut st.scratch);
            out.clear();
            ensure_prepared(server, st, &stmt, &mut out);
            let old_prefix = 5 + name_end + 1;
            let new_len = h.length() as usize - name.len() + stmt.server_name.len();
            out.put_u8(BIND);
            out.put_u32(new_len as u32);
            out.put_slice(&client.buf[at + 5..at + 5 + portal_end + 1]);
            out.put_slice(stmt.server_name.as_bytes());
            out.put_u8(0);
            replace(client, &mut st.spare, at, old_prefix, &out, total - old_prefix);
            st.scratch = out;
            Ok(Step::Handled)
        }
        DESCRIBE | CLOSE => {
            if !complete {
                return Ok(Step::Wait);
            }
            let kind = *body.first().ok_or_else(|| malformed("Describe/Close"))?;
            let name = cstr_prefix(&body[1..]);
            if kind != b'S' || name.is_empty() {
                client.scan.accept(total, 0);
                return Ok(Step::Handled);
            }
            let name = String::from_utf8_lossy(name).into_owned();
            let mut out = BytesMut::with_capacity(128);
            if h.tag == CLOSE {
                st.statements.remove(&name);
                name_message(&mut out, CLOSE, b'S', NO_STATEMENT);
            } else {
                let Some(stmt) = lookup(&st.statements, name.as_bytes()) else {
                    client.scan.accept(total, 0);
                    return Ok(Step::Handled);
                };
                let Some(server) = server else {
                    return Ok(Step::Wait);
                };
                ensure_prepared(server, st, &stmt, &mut out);
                name_message(&mut out, DESCRIBE, b'S', &stmt.server_name);
            }
            replace(client, &mut st.spare, at, total, &out, 0);
            Ok(Step::Handled)
        }
        _ => {
            client.scan.accept(present, total - present);
            Ok(Step::Handled)
        }
    }
}

/// Puts a Parse for `stmt` into `out` if `server` does not have it yet.
fn ensure_prepared(server: &mut ServerConn, st: &mut State, stmt: &Statement, out: &mut BytesMut) {
    if !server.statements.has(&stmt.server_name) {
        parse_message(out, &stmt.server_name, &stmt.parse_tail);
        server.statements.add(&stmt.server_name);
        st.tracker.parse_sent(true, Some(&stmt.server_name));
        st.server_parses += 1;
    }
}

/// Replaces `old_len` bytes at the scan point with `new`, which become forwardable;
/// `remaining` bytes of the same message follow and pass through. The result is built
/// in `spare` and swapped in, so the two buffers' allocations are reused.
fn replace(client: &mut ClientConn, spare: &mut BytesMut, at: usize, old_len: usize, new: &[u8], remaining: usize) {
    spare.clear();
    spare.reserve(client.buf.len() - old_len + new.len());
    spare.extend_from_slice(&client.buf[..at]);
    spare.extend_from_slice(new);
    spare.extend_from_slice(&client.buf[at + old_len..]);
    std::mem::swap(&mut client.buf, spare);
    client.scan.accept(new.len(), remaining);
}

/// A client's statement by name, without allocating for the usual UTF-8 names.
fn lookup(statements: &ClientStatements, name: &[u8]) -> Option<std::sync::Arc<Statement>> {
    match std::str::from_utf8(name) {
        Ok(n) => statements.get(n).cloned(),
        Err(_) => statements.get(&String::from_utf8_lossy(name)).cloned(),
    }
}

fn parse_message(out: &mut BytesMut, name: &str, tail: &[u8]) {
    out.put_u8(PARSE);
    out.put_u32((4 + name.len() + 1 + tail.len()) as u32);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    out.put_slice(tail);
}

fn name_message(out: &mut BytesMut, tag: u8, kind: u8, name: &str) {
    out.put_u8(tag);
    out.put_u32((4 + 1 + name.len() + 1) as u32);
    out.put_u8(kind);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
}

/// A client past its prepared-statement bounds.
fn too_many(e: String) -> ClientError {
    ClientError::protocol(e)
        .hint("close prepared statements you no longer need (or let the driver's statement cache do it)")
}

fn malformed(what: &str) -> ClientError {
    ClientError::protocol(format!("malformed {what} message"))
}

/// (C string, rest after its NUL).
fn split_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memchr(0, b)?;
    Some((&b[..end], &b[end + 1..]))
}

/// The bytes up to the first NUL (all of `b` without one).
fn cstr_prefix(b: &[u8]) -> &[u8] {
    &b[..memchr::memchr(0, b).unwrap_or(b.len())]
}

/// Offsets of the NULs ending the first two C strings (Bind: portal, statement).
fn two_cstrs(b: &[u8]) -> Option<(usize, usize)> {
    let first = memchr::memchr(0, b)?;
    let second = first + 1 + memchr::memchr(0, &b[first + 1..])?;
    Some((first, second))
}

/// What [`answer_locally`] found.
pub enum Local {
    /// Answered: send these bytes.
    Answered(BytesMut),
    /// The request is still arriving.
    NeedMore,
    /// Something else: it needs a server.
    NotThisShape,
}

/// A request made only of named Parses and a Sync (libpq's `PQprepare`, pgbench
/// `-M prepared`), arriving while the client has no server: answered here, with
/// ParseComplete for each and ReadyForQuery, and the statements recorded. Each is
/// prepared on whichever server first runs it. Needing no server matters: a client
/// that prepares synchronously while its siblings hold every server (pgbench's
/// threads) would otherwise wait for them, and they for it.
///
/// The difference: SQL that does not parse is reported at its first Bind or Describe
/// instead of at the Parse.
pub fn answer_locally(
    client: &mut ClientConn,
    st: &mut State,
    saw_parse: &mut dyn FnMut(&[u8]),
) -> Result<Local, ClientError> {
    if client.scan.scan_point() != 0 {
        return Ok(Local::NotThisShape);
    }
    let buf = &client.buf[..];
    let mut at = 0;
    let mut parses: Vec<(String, Bytes)> = Vec::new();
    loop {
        // Past the scan point: these headers were not checked yet.
        let header = Header::whole(&buf[at..], client.scan.max_len());
        let Some(h) = header.map_err(|e| ClientError::protocol(e.to_string()))? else {
            return Ok(Local::NeedMore);
        };
        let end = at + h.total_len();
        match h.tag {
            PARSE => {
                let (name, tail) = split_cstr(&buf[at + 5..end]).ok_or_else(|| malformed("Parse"))?;
                if name.is_empty() {
                    return Ok(Local::NotThisShape);
                }
                parses.push((String::from_utf8_lossy(name).into_owned(), Bytes::copy_from_slice(tail)));
            }
            sluice_wire::frontend::SYNC if !parses.is_empty() => {
                let mut out = BytesMut::with_capacity(5 * parses.len() + 6);
                for (name, tail) in parses {
                    saw_parse(cstr_prefix(&tail));
                    st.statements.insert(&name, tail).map_err(too_many)?;
                    out.put_slice(b"1\0\0\0\x04");
                }
                sluice_wire::backend::ready_for_query(&mut out, sluice_wire::backend::TxStatus::Idle);
                let _ = client.buf.split_to(end);
                return Ok(Local::Answered(out));
            }
            _ => return Ok(Local::NotThisShape),
        }
        at = end;
    }
}
