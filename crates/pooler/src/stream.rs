//! Byte streams to clients and servers: TCP or Unix sockets, split into owned halves
//! so one task can read one direction while writing the other without locks.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
        }
    }
}

/// A TLS session over TCP: with a client (Sluice is the TLS server) or with
/// PostgreSQL (Sluice is the TLS client).
type TlsStream = tokio_rustls::TlsStream<TcpStream>;

pub enum ReadHalf {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
    /// The TLS reader, and a duplicate of its socket's descriptor registered only to
    /// see the peer close (the reader itself cannot be asked without reading).
    Tls(tokio::io::ReadHalf<TlsStream>, Option<TcpStream>),
    /// Between the halves being taken for a TLS handshake and its result.
    Detached,
}

pub enum WriteHalf {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream>),
    Detached,
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection detached for a TLS handshake")
}

/// What a TLS handshake agreed on.
pub struct TlsInfo {
    pub alpn: Option<Vec<u8>>,
    /// As PgBouncer shows it in SHOW CLIENTS: `TLSv1.3/TLS_AES_256_GCM_SHA384/ECDH=X25519`.
    pub description: String,
    /// The common name of the client certificate, when one was shown and verified.
    pub peer_cn: Option<String>,
}

/// Does the TLS handshake on a TCP connection (after an SSLRequest answered 'S', or
/// at once for direct TLS) and returns the encrypted halves and what was agreed. The
/// halves must be plain TCP.
pub async fn accept_tls(
    rd: ReadHalf,
    wr: WriteHalf,
    acceptor: &tokio_rustls::TlsAcceptor,
) -> io::Result<(ReadHalf, WriteHalf, TlsInfo)> {
    let (ReadHalf::Tcp(r), WriteHalf::Tcp(w)) = (rd, wr) else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "TLS is only offered over TCP",
        ));
    };
    let tcp = r.reunite(w).map_err(|e| io::Error::other(e.to_string()))?;
    let tls = acceptor.accept(tcp).await?;
    let session = tls.get_ref().1;
    let version = session
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("TLS")
        .replace('_', ".");
    // OpenSSL's names, as PgBouncer shows them.
    let suite = session
        .negotiated_cipher_suite()
        .map(|s| s.suite())
        .and_then(|s| crate::tls::policy::openssl_name(s).or(s.as_str()))
        .unwrap_or("")
        .replace("TLS13_", "TLS_");
    let group = match session.negotiated_key_exchange_group().and_then(|g| g.name().as_str()) {
        Some("secp256r1") => "prime256v1",
        Some(name) => name,
        None => "",
    };
    let info = TlsInfo {
        alpn: session.alpn_protocol().map(<[u8]>::to_vec),
        description: format!("{version}/{suite}/ECDH={group}"),
        peer_cn: session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|der| common_name(der)),
    };
    let (rd, wr) = split_tls(tls.into());
    Ok((rd, wr, info))
}

/// The subject's first common name (CN) of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

/// True when a TCP client's first byte opens a TLS handshake (0x16): PostgreSQL 17's
/// direct TLS (`sslnegotiation=direct`), which sends no SSLRequest. Only peeks.
pub async fn starts_with_tls_handshake(rd: &ReadHalf) -> bool {
    let ReadHalf::Tcp(r) = rd else { return false };
    let mut first = [0u8; 1];
    // OwnedReadHalf::peek needs &mut; the underlying socket's peek does not.
    matches!(r.as_ref().peek(&mut first).await, Ok(1) if first[0] == 0x16)
}

/// The halves of a TLS session (they share it behind a lock only TLS needs).
pub fn split_tls(tls: TlsStream) -> (ReadHalf, WriteHalf) {
    let watch = close_watcher(tls.get_ref().0);
    let (r, w) = tokio::io::split(tls);
    (ReadHalf::Tls(r, watch), WriteHalf::Tls(w))
}

/// A duplicate descriptor of `tcp`, registered with the IO driver, never read: its
/// readiness carries the peer-closed bit for [`ReadHalf::peer_closed`]. None if the
/// descriptor cannot be duplicated (the check then says "open").
fn close_watcher(tcp: &TcpStream) -> Option<TcpStream> {
    let dup = socket2::SockRef::from(tcp).try_clone().ok()?;
    let std: std::net::TcpStream = dup.into();
    std.set_nonblocking(true).ok()?;
    TcpStream::from_std(std).ok()
}

impl ReadHalf {
    /// True when the IO driver has seen the peer close the socket (or an error on it).
    /// Never a syscall: the readiness the driver keeps already carries the
    /// peer-closed bit (EPOLLRDHUP), while a plain "readable" flag stays set after most
    /// reads and would cost a read returning EAGAIN on every check.
    /// For TLS, the duplicate descriptor's readiness is asked.
    pub fn peer_closed(&self) -> bool {
        use std::future::Future;
        use tokio::io::Interest;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let ready = match self {
            ReadHalf::Tcp(s) => std::pin::pin!(s.ready(Interest::READABLE)).poll(&mut cx),
            ReadHalf::Unix(s) => std::pin::pin!(s.ready(Interest::READABLE)).poll(&mut cx),
            ReadHalf::Tls(_, Some(watch)) => std::pin::pin!(watch.ready(Interest::READABLE)).poll(&mut cx),
            ReadHalf::Tls(_, None) => return false,
            ReadHalf::Detached => return true,
        };
        match ready {
            Poll::Ready(Ok(r)) => r.is_read_closed() || r.is_error(),
            Poll::Ready(Err(_)) => true,
            Poll::Pending => false,
        }
    }
}

impl AsyncRead for ReadHalf {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Unix(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Tls(s, _) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl AsyncWrite for WriteHalf {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Unix(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Tls(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Detached => Poll::Ready(Err(detached())),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Unix(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Unix(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Detached => Poll::Ready(Err(detached())),
        }
    }
}

/// Sets TCP_NODELAY (latency matters more than segment count for a pooler) and
/// keepalive as PgBouncer's `tcp_keepalive` asks.
pub fn tune_tcp(s: &TcpStream, keepalive: bool) {
    let _ = s.set_nodelay(true);
    if keepalive {
        let _ = socket2::SockRef::from(s).set_keepalive(true);
    }
}

/// Both ends of a connection, for SHOW CLIENTS / SHOW SERVERS.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    pub addr: String,
    pub port: u16,
    pub local_addr: String,
    pub local_port: u16,
}

impl Stream {
    /// The addresses of both ends; Unix sockets show as "unix", port 0 (as PgBouncer).
    pub fn endpoints(&self) -> Endpoints {
        match self {
            Stream::Tcp(s) => {
                let (peer, local) = (s.peer_addr().ok(), s.local_addr().ok());
                Endpoints {
                    addr: peer.map(|a| a.ip().to_string()).unwrap_or_default(),
                    port: peer.map_or(0, |a| a.port()),
                    local_addr: local.map(|a| a.ip().to_string()).unwrap_or_default(),
                    local_port: local.map_or(0, |a| a.port()),
                }
            }
            Stream::Unix(_) => Endpoints {
                addr: "unix".into(),
                local_addr: "unix".into(),
                ..Endpoints::default()
            },
        }
    }
}
