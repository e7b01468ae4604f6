//! Backend (server-to-client) messages: builders for what Sluice says to clients, and
//! parsers for the few server messages the pooler must understand.

use bytes::{BufMut, BytesMut};

pub const AUTHENTICATION: u8 = b'R';
pub const PARAMETER_STATUS: u8 = b'S';
pub const BACKEND_KEY_DATA: u8 = b'K';
pub const READY_FOR_QUERY: u8 = b'Z';
pub const ERROR_RESPONSE: u8 = b'E';
pub const NOTICE_RESPONSE: u8 = b'N';
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }
    pub fn as_byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// Writes the tag and a length placeholder; returns the position to patch.
#[inline]
fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_u32(0);
    at
}

#[inline]
fn finish(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    // A NUL inside would end the string early on the client; drop any.
    buf.extend(s.bytes().filter(|&b| b != 0));
    buf.put_u8(0);
}

pub fn auth_ok(buf: &mut BytesMut) {
    let at = begin(buf, AUTHENTICATION);
    buf.put_i32(0);
    finish(buf, at);
}

pub fn auth_cleartext(buf: &mut BytesMut) {
    let at = begin(buf, AUTHENTICATION);
    buf.put_i32(3);
    finish(buf, at);
}

pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    let at = begin(buf, AUTHENTICATION);
    buf.put_i32(5);
    buf.put_slice(&salt);
    finish(buf, at);
}

pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    let at = begin(buf, AUTHENTICATION);
    buf.put_i32(10);
    for m in mechanisms {
        put_cstr(buf, m);
    }
    buf.put_u8(0);
    finish(buf, at);
}

pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    let at = begin(buf, AUTHENTICATION);
    buf.put_i32(11);
    buf.put_slice(data);
    finish(buf, at);
}

pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    let at = begin(buf, AUTHENTICATION);
    buf.put_i32(12);
    buf.put_slice(data);
    finish(buf, at);
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let at = begin(buf, PARAMETER_STATUS);
    put_cstr(buf, name);
    put_cstr(buf, value);
    finish(buf, at);
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, key: i32) {
    let at = begin(buf, BACKEND_KEY_DATA);
    buf.put_i32(pid);
    buf.put_i32(key);
    finish(buf, at);
}

pub fn ready_for_query(buf: &mut BytesMut, status: TxStatus) {
    let at = begin(buf, READY_FOR_QUERY);
    buf.put_u8(status.as_byte());
    finish(buf, at);
}

pub fn negotiate_protocol_version(buf: &mut BytesMut, newest_minor: i32, unrecognized: &[&str]) {
    let at = begin(buf, NEGOTIATE_PROTOCOL_VERSION);
    buf.put_i32(newest_minor);
    buf.put_i32(unrecognized.len() as i32);
    for o in unrecognized {
        put_cstr(buf, o);
    }
    finish(buf, at);
}

/// Severity of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Notice,
    Warning,
    Log,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "FATAL",
            Severity::Error => "ERROR",
            Severity::Notice => "NOTICE",
            Severity::Warning => "WARNING",
            Severity::Log => "LOG",
        }
    }
}

/// The fields Sluice puts in the errors and notices it makes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    pub severity: Severity,
    pub code: &'a str,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
}

impl<'a> ErrorFields<'a> {
    pub fn new(severity: Severity, code: &'a str, message: &'a str) -> Self {
        ErrorFields {
            severity,
            code,
            message,
            detail: None,
            hint: None,
        }
    }
}

fn error_or_notice(buf: &mut BytesMut, tag: u8, f: &ErrorFields<'_>) {
    let at = begin(buf, tag);
    buf.put_u8(b'S');
    put_cstr(buf, f.severity.as_str());
    buf.put_u8(b'V');
    put_cstr(buf, f.severity.as_str());
    buf.put_u8(b'C');
    put_cstr(buf, f.code);
    buf.put_u8(b'M');
    put_cstr(buf, f.message);
    if let Some(d) = f.detail {
        buf.put_u8(b'D');
        put_cstr(buf, d);
    }
    if let Some(h) = f.hint {
        buf.put_u8(b'H');
        put_cstr(buf, h);
    }
    buf.put_u8(0);
    finish(buf, at);
}

pub fn error_response(buf: &mut BytesMut, f: &ErrorFields<'_>) {
    error_or_notice(buf, ERROR_RESPONSE, f)
}

pub fn notice_response(buf: &mut BytesMut, f: &ErrorFields<'_>) {
    error_or_notice(buf, NOTICE_RESPONSE, f)
}

/// Parses a ParameterStatus body: `name\0value\0`.
pub fn parse_parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let mut parts = body.split(|&b| b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name, value))
}

/// Parses a ReadyForQuery body.
#[inline]
pub fn parse_ready_for_query(body: &[u8]) -> Option<TxStatus> {
    match body {
        [b] => TxStatus::from_byte(*b),
        _ => None,
    }
}

/// The fields of an ErrorResponse or NoticeResponse body, owned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

/// Parses an ErrorResponse/NoticeResponse body (`(type byte, cstring)* \0`).
pub fn parse_error_fields(body: &[u8]) -> ParsedError {
    let mut out = ParsedError::default();
    let mut rest = body;
    while let Some((&ty, tail)) = rest.split_first() {
        if ty == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match ty {
            b'V' => out.severity = value,
            b'S' if out.severity.is_empty() => out.severity = value,
            b'C' => out.code = value,
            b'M' => out.message = value,
            b'D' => out.detail = Some(value),
            b'H' => out.hint = Some(value),
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Header;

    #[test]
    fn error_roundtrip() {
        let mut buf = BytesMut::new();
        let mut f = ErrorFields::new(Severity::Fatal, "08P01", "query_wait_timeout");
        f.hint = Some("raise the pool size");
        error_response(&mut buf, &f);
        let h = Header::parse(&buf, u32::MAX).unwrap().unwrap();
        assert_eq!(h.tag, b'E');
        assert_eq!(h.total_len(), buf.len());
        let parsed = parse_error_fields(&buf[5..]);
        assert_eq!(parsed.severity, "FATAL");
        assert_eq!(parsed.code, "08P01");
        assert_eq!(parsed.message, "query_wait_timeout");
        assert_eq!(parsed.hint.as_deref(), Some("raise the pool size"));
    }

    #[test]
    fn small_messages() {
        let mut buf = BytesMut::new();
        ready_for_query(&mut buf, TxStatus::InTransaction);
        assert_eq!(&buf[..], b"Z\0\0\0\x05T");
        assert_eq!(parse_ready_for_query(&buf[5..]), Some(TxStatus::InTransaction));
        buf.clear();
        parameter_status(&mut buf, "TimeZone", "UTC");
        assert_eq!(parse_parameter_status(&buf[5..]), Some(("TimeZone", "UTC")));
    }
}

/// Type OIDs of the columns Sluice's admin console sends (as PgBouncer does).
pub mod oid {
    pub const INT4: u32 = 23;
    pub const INT8: u32 = 20;
    pub const TEXT: u32 = 25;
}

/// RowDescription for text-format columns of the given (name, type OID).
pub fn row_description(buf: &mut BytesMut, columns: &[(&str, u32)]) {
    let at = begin(buf, b'T');
    buf.put_i16(columns.len() as i16);
    for (name, type_oid) in columns {
        put_cstr(buf, name);
        buf.put_i32(0); // table
        buf.put_i16(0); // column
        buf.put_u32(*type_oid);
        buf.put_i16(match *type_oid {
            oid::INT4 => 4,
            oid::INT8 => 8,
            _ => -1,
        });
        buf.put_i32(-1); // typmod
        buf.put_i16(0); // text format
    }
    finish(buf, at);
}

/// DataRow of text values; None is SQL NULL.
pub fn data_row<'a>(buf: &mut BytesMut, values: impl ExactSizeIterator<Item = Option<&'a str>>) {
    let at = begin(buf, b'D');
    buf.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(v) => {
                buf.put_i32(v.len() as i32);
                buf.put_slice(v.as_bytes());
            }
            None => buf.put_i32(-1),
        }
    }
    finish(buf, at);
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    let at = begin(buf, b'C');
    put_cstr(buf, tag);
    finish(buf, at);
}

#[cfg(test)]
mod result_tests {
    use super::*;

    #[test]
    fn rows_parse_back_with_postgres_protocol() {
        use fallible_iterator::FallibleIterator;
        use postgres_protocol::message::backend::Message;
        let mut buf = BytesMut::new();
        row_description(&mut buf, &[("database", oid::TEXT), ("cl_active", oid::INT4)]);
        data_row(&mut buf, [Some("app"), None].into_iter());
        command_complete(&mut buf, "SHOW");
        let Ok(Some(Message::RowDescription(rd))) = Message::parse(&mut buf) else {
            panic!("row description")
        };
        let fields: Vec<_> = rd.fields().collect().unwrap();
        assert_eq!(fields[1].name(), "cl_active");
        assert_eq!(fields[1].type_oid(), 23);
        let Ok(Some(Message::DataRow(row))) = Message::parse(&mut buf) else {
            panic!("data row")
        };
        let values: Vec<_> = row.ranges().collect().unwrap();
        assert!(values[1].is_none());
        let Ok(Some(Message::CommandComplete(c))) = Message::parse(&mut buf) else {
            panic!("complete")
        };
        assert_eq!(c.tag().unwrap(), "SHOW");
    }
}
