//! Frontend (client-to-server) messages. Builders for the server side of a login come
//! from `postgres-protocol`; here are the tags the pooler acts on and parsers for the
//! password messages a client sends to Sluice.

pub use postgres_protocol::message::frontend as build;

pub const QUERY: u8 = b'Q';
pub const PARSE: u8 = b'P';
pub const BIND: u8 = b'B';
pub const DESCRIBE: u8 = b'D';
pub const EXECUTE: u8 = b'E';
pub const CLOSE: u8 = b'C';
pub const SYNC: u8 = b'S';
pub const FLUSH: u8 = b'H';
pub const FUNCTION_CALL: u8 = b'F';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const COPY_FAIL: u8 = b'f';
pub const TERMINATE: u8 = b'X';
/// PasswordMessage, SASLInitialResponse and SASLResponse all use 'p'.
pub const PASSWORD: u8 = b'p';

/// True for the client messages PostgreSQL answers with exactly one ReadyForQuery.
#[inline]
pub fn expects_ready_for_query(tag: u8) -> bool {
    matches!(tag, QUERY | SYNC | FUNCTION_CALL)
}

/// True for the extended-protocol messages that open a batch which only a Sync ends.
/// Flush is not one: it only asks the server to send what it has, creates nothing a
/// Sync must end, and after a Sync (psycopg ends every pipeline with Sync, Flush) or
/// with nothing sent it is answered with no bytes at all.
#[inline]
pub fn opens_extended_batch(tag: u8) -> bool {
    matches!(tag, PARSE | BIND | DESCRIBE | EXECUTE | CLOSE)
}

/// True for every tag a frontend may send after startup.
#[inline]
pub fn is_known_tag(tag: u8) -> bool {
    matches!(
        tag,
        QUERY
            | PARSE
            | BIND
            | DESCRIBE
            | EXECUTE
            | CLOSE
            | SYNC
            | FLUSH
            | FUNCTION_CALL
            | COPY_DATA
            | COPY_DONE
            | COPY_FAIL
            | TERMINATE
            | PASSWORD
    )
}

/// A cleartext or md5 PasswordMessage body: the password as a C string.
pub fn parse_password(body: &[u8]) -> Option<&str> {
    let end = body.iter().position(|&b| b == 0)?;
    if end + 1 != body.len() {
        return None;
    }
    std::str::from_utf8(&body[..end]).ok()
}

/// A SASLInitialResponse body: mechanism name, then length-prefixed data (-1: none).
pub fn parse_sasl_initial(body: &[u8]) -> Option<(&str, &[u8])> {
    let end = body.iter().position(|&b| b == 0)?;
    let mechanism = std::str::from_utf8(&body[..end]).ok()?;
    let rest = &body[end + 1..];
    if rest.len() < 4 {
        return None;
    }
    let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let data = &rest[4..];
    if len < 0 {
        return Some((mechanism, &[]));
    }
    if len as usize != data.len() {
        return None;
    }
    Some((mechanism, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_messages() {
        assert_eq!(parse_password(b"secret\0"), Some("secret"));
        assert_eq!(parse_password(b"secret"), None);
        assert_eq!(parse_password(b"sec\0ret\0"), None);
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend(5i32.to_be_bytes());
        body.extend(b"hello");
        assert_eq!(parse_sasl_initial(&body), Some(("SCRAM-SHA-256", &b"hello"[..])));
        body.push(0);
        assert_eq!(parse_sasl_initial(&body), None);
    }
}
