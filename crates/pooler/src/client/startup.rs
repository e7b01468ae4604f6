//! The startup phase of a client connection: SSL negotiation (TLS when
//! `client_tls_sslmode` allows it; GSS encryption is declined), the StartupMessage or
//! a CancelRequest, and protocol version negotiation.

use bytes::BytesMut;
use sluice_wire::startup::{self, StartupMessage, StartupPacket};
use sluice_wire::{backend, sqlstate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ClientConn;
use crate::errors::ClientError;
use crate::stream::{ReadHalf, WriteHalf};
use crate::tls::ClientTls;

pub enum Startup {
    Login(StartupMessage),
    Cancel { pid: i32, key: i32 },
}

pub const CLOSED_BEFORE_STARTUP: &str = "client closed the connection during startup";

/// Reads packets until a StartupMessage or CancelRequest arrives, doing the TLS
/// handshake on the way when the client asks and `tls` allows it.
pub async fn read(client: &mut ClientConn, tls: Option<&ClientTls>) -> Result<Startup, ClientError> {
    let mut ssl_answered = false;
    let mut gss_answered = false;
    if let Some(tls) = tls {
        if crate::stream::starts_with_tls_handshake(&client.rd).await {
            handshake(client, tls, true).await?;
            ssl_answered = true;
        }
    }
    loop {
        let payload = read_packet(client).await?;
        match startup::parse(&payload) {
            Ok(StartupPacket::SslRequest) if !ssl_answered => {
                ssl_answered = true;
                // Bytes behind an SSLRequest came before encryption and may have been
                // injected by a man in the middle (CVE-2021-23214): refuse them.
                if !client.buf.is_empty() {
                    return Err(ClientError::protocol("received unencrypted data after SSL request"));
                }
                // TLS over TCP only: a Unix socket is declined, as PgBouncer does.
                match tls.filter(|_| matches!(client.rd, ReadHalf::Tcp(_))) {
                    Some(tls) => {
                        write(client, b"S").await?;
                        handshake(client, tls, false).await?;
                    }
                    None => write(client, b"N").await?,
                }
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
                if tls.is_some_and(ClientTls::required) && matches!(client.rd, ReadHalf::Tcp(_)) {
                    return Err(ClientError::protocol("SSL required")
                        .hint("client_tls_sslmode requires TLS: connect with sslmode=require or stronger"));
                }
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

/// Does the TLS handshake; the client's halves become the TLS ones. Direct TLS must
/// agree on ALPN "postgresql", as PostgreSQL 17 requires (it is how a client shows
/// it meant to speak PostgreSQL to this port).
async fn handshake(client: &mut ClientConn, tls: &ClientTls, direct: bool) -> Result<(), ClientError> {
    let rd = std::mem::replace(&mut client.rd, ReadHalf::Detached);
    let wr = std::mem::replace(&mut client.wr, WriteHalf::Detached);
    let (rd, wr, info) = crate::stream::accept_tls(rd, wr, &tls.acceptor)
        .await
        .map_err(|e| ClientError::protocol(format!("TLS handshake failed: {e}")))?;
    client.rd = rd;
    client.wr = wr;
    client.tls = Some(info.description);
    client.cert_cn = info.peer_cn;
    if direct && info.alpn.as_deref() != Some(b"postgresql".as_slice()) {
        return Err(ClientError::protocol(
            "received direct SSL connection request without ALPN protocol negotiation extension",
        ));
    }
    tracing::debug!(direct, "TLS established");
    Ok(())
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
