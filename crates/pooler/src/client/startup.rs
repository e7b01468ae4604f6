//! The startup phase of a client connection: SSL/GSS negotiation (declined for now),
//! the StartupMessage or a CancelRequest, and protocol version negotiation.

use bytes::BytesMut;
use sluice_wire::startup::{self, StartupMessage, StartupPacket};
use sluice_wire::{backend, sqlstate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ClientConn;
use crate::errors::ClientError;

pub enum Startup {
    Login(StartupMessage),
    Cancel { pid: i32, key: i32 },
}

pub const CLOSED_BEFORE_STARTUP: &str = "client closed the connection during startup";

/// Reads packets until a StartupMessage or CancelRequest arrives.
pub async fn read(client: &mut ClientConn) -> Result<Startup, ClientError> {
    let mut ssl_answered = false;
    let mut gss_answered = false;
    loop {
        let payload = read_packet(client).await?;
        match startup::parse(&payload) {
            Ok(StartupPacket::SslRequest) if !ssl_answered => {
                ssl_answered = true;
                write(client, b"N").await?;
            }
            Ok(StartupPacket::GssEncRequest) if !gss_answered => {
                gss_answered = true;
                write(client, b"N").await?;
            }
            Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
                return Err(ClientError::protocol("duplicate SSL or GSSAPI negotiation request"));
            }
            Ok(StartupPacket::Cancel { pid, key }) => return Ok(Startup::Cancel { pid, key }),
            Ok(StartupPacket::Startup(msg)) => {
                negotiate_version(client, &msg).await?;
                return Ok(Startup::Login(msg));
            }
            Err(e @ startup::StartupError::UnsupportedProtocol { .. }) => {
                return Err(ClientError::fatal(sqlstate::FEATURE_NOT_SUPPORTED, e.to_string()));
            }
            Err(e) => return Err(ClientError::protocol(e.to_string())),
        }
    }
}

/// Reads one untagged packet (after the length field). A bad length ends the
/// connection at once, as PostgreSQL does; nothing waits for a login timeout.
async fn read_packet(client: &mut ClientConn) -> Result<BytesMut, ClientError> {
    let closed = || ClientError::protocol(CLOSED_BEFORE_STARTUP);
    while client.buf.len() < 4 {
        if client.rd.read_buf(&mut client.buf).await.map_err(|_| closed())? == 0 {
            return Err(closed());
        }
    }
    let len = u32::from_be_bytes([client.buf[0], client.buf[1], client.buf[2], client.buf[3]]);
    let body_len = startup::check_length(len).map_err(|e| ClientError::protocol(e.to_string()))?;
    while client.buf.len() < 4 + body_len {
        if client.rd.read_buf(&mut client.buf).await.map_err(|_| closed())? == 0 {
            return Err(closed());
        }
    }
    let mut packet = client.buf.split_to(4 + body_len);
    Ok(packet.split_off(4))
}

async fn write(client: &mut ClientConn, bytes: &[u8]) -> Result<(), ClientError> {
    client
        .wr
        .write_all(bytes)
        .await
        .map_err(|e| ClientError::protocol(format!("client write failed: {e}")))
}

/// Protocol 3.x with x > 0, or `_pq_.` options: answer NegotiateProtocolVersion with
/// what we support (3.0, no options), as PostgreSQL does.
async fn negotiate_version(client: &mut ClientConn, msg: &StartupMessage) -> Result<(), ClientError> {
    let options: Vec<&str> = msg
        .params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.as_str())
        .collect();
    if msg.minor == 0 && options.is_empty() {
        return Ok(());
    }
    let mut out = BytesMut::new();
    backend::negotiate_protocol_version(&mut out, 0, &options);
    write(client, &out).await
}
