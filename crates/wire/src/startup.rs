//! The startup phase: untagged packets `length (4) | code (4) | payload`.

use bytes::{BufMut, BytesMut};

/// PostgreSQL's own cap (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_PACKET_LEN: u32 = 10_000;
pub const SSL_REQUEST_CODE: u32 = 80877103;
pub const GSSENC_REQUEST_CODE: u32 = 80877104;
pub const CANCEL_REQUEST_CODE: u32 = 80877102;
pub const PROTOCOL_3_0: u32 = 3 << 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, key: i32 },
    Startup(StartupMessage),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartupMessage {
    pub major: u16,
    pub minor: u16,
    /// Parameters in the order the client sent them (`_pq_.` protocol options included).
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    InvalidLength,
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout: expected terminator as last byte")]
    Malformed,
    #[error("invalid startup packet: parameter names and values must be UTF-8")]
    NotUtf8,
}

/// Checks the length field of a startup packet (it includes itself). PostgreSQL
/// rejects anything shorter than the code or longer than 10,000 bytes.
pub fn check_length(len: u32) -> Result<usize, StartupError> {
    if !(8..=MAX_STARTUP_PACKET_LEN).contains(&len) {
        return Err(StartupError::InvalidLength);
    }
    Ok(len as usize - 4)
}

/// Parses the packet after its length field.
pub fn parse(payload: &[u8]) -> Result<StartupPacket, StartupError> {
    if payload.len() < 4 {
        return Err(StartupError::InvalidLength);
    }
    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
    let rest = &payload[4..];
    match code {
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            if rest.len() != 8 {
                return Err(StartupError::InvalidLength);
            }
            let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let key = i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            Ok(StartupPacket::Cancel { pid, key })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            Ok(StartupPacket::Startup(StartupMessage {
                major,
                minor,
                params: parse_params(rest)?,
            }))
        }
    }
}

fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    // name\0value\0 ... \0
    if rest.last() != Some(&0) {
        return Err(StartupError::Malformed);
    }
    let mut params = Vec::new();
    loop {
        let name = take_cstr(&mut rest)?;
        if name.is_empty() {
            break;
        }
        let value = take_cstr(&mut rest)?;
        params.push((name.to_owned(), value.to_owned()));
    }
    if !rest.is_empty() {
        return Err(StartupError::Malformed);
    }
    Ok(params)
}

fn take_cstr<'a>(rest: &mut &'a [u8]) -> Result<&'a str, StartupError> {
    let end = rest.iter().position(|&b| b == 0).ok_or(StartupError::Malformed)?;
    let s = std::str::from_utf8(&rest[..end]).map_err(|_| StartupError::NotUtf8)?;
    *rest = &rest[end + 1..];
    Ok(s)
}

/// Writes a CancelRequest packet (sent by Sluice to a server on a fresh connection).
pub fn write_cancel_request(buf: &mut BytesMut, pid: i32, key: i32) {
    buf.put_u32(16);
    buf.put_u32(CANCEL_REQUEST_CODE);
    buf.put_i32(pid);
    buf.put_i32(key);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut v = code.to_be_bytes().to_vec();
        v.extend_from_slice(rest);
        v
    }

    #[test]
    fn parses_startup_parameters() {
        let p = packet(PROTOCOL_3_0, b"user\0alice\0database\0app\0\0");
        let StartupPacket::Startup(m) = parse(&p).unwrap() else {
            panic!("not a startup message")
        };
        assert_eq!(m.get("user"), Some("alice"));
        assert_eq!(m.get("database"), Some("app"));
        assert_eq!((m.major, m.minor), (3, 0));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(check_length(4), Err(StartupError::InvalidLength));
        assert_eq!(check_length(1_000_000), Err(StartupError::InvalidLength));
        assert!(parse(&packet(PROTOCOL_3_0, b"user\0alice")).is_err());
        assert!(parse(&packet(PROTOCOL_3_0, b"user\0alice\0\0junk\0")).is_err());
        assert_eq!(
            parse(&packet(2 << 16, b"\0")),
            Err(StartupError::UnsupportedProtocol { major: 2, minor: 0 })
        );
        assert!(parse(&packet(CANCEL_REQUEST_CODE, b"1234")).is_err());
        assert!(parse(&packet(PROTOCOL_3_0, b"us\xffer\0x\0\0")).is_err());
    }

    #[test]
    fn parses_special_requests() {
        assert_eq!(parse(&packet(SSL_REQUEST_CODE, b"")), Ok(StartupPacket::SslRequest));
        assert_eq!(
            parse(&packet(GSSENC_REQUEST_CODE, b"")),
            Ok(StartupPacket::GssEncRequest)
        );
        let mut rest = 7i32.to_be_bytes().to_vec();
        rest.extend(9i32.to_be_bytes());
        assert_eq!(
            parse(&packet(CANCEL_REQUEST_CODE, &rest)),
            Ok(StartupPacket::Cancel { pid: 7, key: 9 })
        );
    }
}
