//! Server connections: log in to PostgreSQL as a client would, then hand the socket to
//! the pool. After login the connection is only a pair of byte halves and a buffer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use sluice_wire::backend::{parse_error_fields, ParsedError};
use sluice_wire::frame::Scanner;
use sluice_wire::frontend::build;
use sluice_wire::md5;
use sluice_wire::scram::{ClientCredential, ScramClient, ScramError, ScramSecret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::OwnedSemaphorePermit;

mod query;
pub use query::QueryError;

use crate::auth::LearnedKeys;
use crate::params::ParamSet;
use crate::stream::{tune_tcp, Endpoints, ReadHalf, Stream, WriteHalf};

/// Where and as whom a pool logs in.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerTarget {
    /// Host name or address; a value starting with '/' is a Unix socket directory.
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    /// What to log in with; None for trust.
    pub credential: Option<ServerCredential>,
    /// Extra startup parameters (application_name, client_encoding, ...).
    pub params: Vec<(String, String)>,
    pub tcp_keepalive: bool,
    /// TLS to this server (None: plaintext).
    pub tls: Option<Arc<crate::tls::ServerTls>>,
}

/// What a pool logs in to PostgreSQL with.
#[derive(Debug, Clone)]
pub enum ServerCredential {
    /// A plaintext password or an md5 secret.
    Password(String),
    /// SCRAM pass-through: only the stored secret is known; the `ClientKey` comes
    /// from a client's SCRAM login against it ([`LearnedKeys`]).
    Scram {
        secret: ScramSecret,
        learned: Arc<LearnedKeys>,
    },
}

/// Equal when they log in the same way (a reload that keeps the secret keeps the pool's
/// servers).
impl PartialEq for ServerCredential {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (ServerCredential::Password(a), ServerCredential::Password(b)) => a == b,
            (ServerCredential::Scram { secret: a, .. }, ServerCredential::Scram { secret: b, .. }) => a == b,
            _ => false,
        }
    }
}

/// Asks the server for TLS (SSLRequest) and does the handshake if it agrees; a server
/// that declines is used in plaintext unless `server_tls_sslmode` requires TLS.
async fn start_tls(
    t: &ServerTarget,
    mut tcp: TcpStream,
    tls: &crate::tls::ServerTls,
) -> Result<(ReadHalf, WriteHalf), ConnectError> {
    use tokio::io::AsyncReadExt;
    let failed = |reason: String| ConnectError::Io {
        addr: t.describe(),
        reason,
    };
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8u32.to_be_bytes());
    request[4..].copy_from_slice(&sluice_wire::startup::SSL_REQUEST_CODE.to_be_bytes());
    tcp.write_all(&request).await.map_err(|e| failed(e.to_string()))?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(|e| failed(e.to_string()))?;
    match answer[0] {
        b'S' => {
            let session = tls
                .connect(&t.host, tcp)
                .await
                .map_err(|e| failed(format!("TLS handshake failed: {e}")))?;
            Ok(crate::stream::split_tls(session.into()))
        }
        b'N' if !tls.required() => Ok(Stream::Tcp(tcp).into_split()),
        b'N' => Err(failed(format!(
            "the server does not accept TLS, and server_tls_sslmode = {} requires it",
            tls.mode
        ))),
        other => Err(failed(format!("unexpected answer {other:#x} to SSLRequest"))),
    }
}

impl ServerTarget {
    pub fn describe(&self) -> String {
        if self.host.starts_with('/') {
            format!("{}/.s.PGSQL.{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, thiserror::Error, Clone)]
pub enum ConnectError {
    #[error("could not connect to server {addr}: {reason}")]
    Io { addr: String, reason: String },
    #[error("server login timed out after {0:?} (server_connect_timeout)")]
    Timeout(Duration),
    /// PostgreSQL refused the login; its error is forwarded to clients as it is.
    #[error("server refused login: {} ({})", .0.message, .0.code)]
    Rejected(ParsedError),
    #[error("server login failed: {0}")]
    Protocol(String),
    /// The pool's last login failed and no server is up: the error is reported at
    /// once while a background retry runs (`server_login_retry`).
    #[error("server login has been failing, cached error: {0} (server_login_retry)")]
    Failing(Box<ConnectError>),
}

/// What SHOW SERVERS shows of a server connection; shared with the pool's registry so
/// it is visible while a client holds the connection.
#[derive(Debug)]
pub struct ServerMeta {
    pub id: u64,
    pub backend_pid: i32,
    pub endpoints: Endpoints,
    pub connect_time: SystemTime,
    /// The pool's target generation at login (older: close when released).
    pub target_gen: u64,
    /// Id of the client it is linked to; 0 when idle.
    pub linked_client: AtomicU64,
    /// When it was last linked, in microseconds since the Unix epoch.
    pub request_time_us: AtomicU64,
    /// Its client is inside a transaction block (the last ReadyForQuery said T or E):
    /// the server stays held between the client's statements.
    pub in_transaction: AtomicBool,
    /// The lane of the request it serves (overload protection).
    pub lane: std::sync::atomic::AtomicUsize,
    /// The fingerprint of the transaction it serves (0: none).
    pub fingerprint: AtomicU64,
}

impl ServerMeta {
    /// The server is lent to client `client_id` from now on.
    /// Returns the time, in microseconds since the epoch.
    #[inline]
    pub fn link(&self, client_id: u64) -> u64 {
        let at = unix_micros(SystemTime::now());
        self.linked_client.store(client_id, Ordering::Relaxed);
        self.request_time_us.store(at, Ordering::Relaxed);
        at
    }
}

/// Microseconds since the Unix epoch.
pub fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Tells the server's pool that the connection is gone, however that happened: it
/// leaves the pool's registry (SHOW SERVERS), and a connection dropped while lent to
/// a client (a session task that failed without releasing it) gives its slot back,
/// so no failure can shrink the pool for good.
pub struct Registration(pub Box<dyn FnOnce(Option<crate::pool::Hold>) + Send + Sync>);

impl ServerConn {
    /// Called once, from Drop: `hold` is Some when it was still lent out.
    fn deregister(&mut self) {
        if let Some(Registration(f)) = self.registration.take() {
            f(self.hold.take());
        }
    }
}

impl Drop for ServerConn {
    fn drop(&mut self) {
        self.deregister();
    }
}

/// A logged-in server connection, idle or linked to a client.
pub struct ServerConn {
    pub meta: Arc<ServerMeta>,
    /// Removes `meta` from the pool's registry on drop.
    pub registration: Option<Registration>,
    pub id: u64,
    /// What it logged in to (a reload may point the pool elsewhere).
    pub target: Arc<ServerTarget>,
    /// The pool's target generation at login.
    pub target_gen: u64,
    pub rd: ReadHalf,
    pub wr: WriteHalf,
    /// Bytes read from the server and not yet forwarded.
    pub buf: BytesMut,
    pub scan: Scanner,
    pub created: Instant,
    pub last_used: Instant,
    /// This connection's share of `server_lifetime`, drawn from [0.85, 1.0] at login:
    /// servers opened together (a pool filling up, a restart) do not all expire, and
    /// reconnect, in the same second.
    pub lifetime_share: f64,
    /// The server's own cancel key (clients get Sluice's keys instead).
    pub backend_pid: i32,
    pub backend_key: i32,
    /// The server's current values of reported settings (login, then ParameterStatus).
    pub params: ParamSet,
    /// Fingerprint of the client settings it was last brought in line with (0: none).
    pub synced_for: u64,
    /// Named statements prepared on it (transaction mode).
    pub statements: crate::statements::ServerStatements,
    /// Held while the connection exists: max_db_connections / max_user_connections.
    pub _permits: Vec<OwnedSemaphorePermit>,
    /// For whom it is lent out (None while idle).
    pub hold: Option<crate::pool::Hold>,
}

impl ServerConn {
    /// Opens a connection and logs in, all within `timeout`.
    pub async fn connect(
        id: u64,
        target: Arc<ServerTarget>,
        timeout: Option<Duration>,
        max_packet: u32,
    ) -> Result<ServerConn, ConnectError> {
        let login = Self::connect_inner(id, target, max_packet);
        match timeout {
            Some(t) => tokio::time::timeout(t, login)
                .await
                .unwrap_or(Err(ConnectError::Timeout(t))),
            None => login.await,
        }
    }

    async fn connect_inner(id: u64, target: Arc<ServerTarget>, max_packet: u32) -> Result<ServerConn, ConnectError> {
        let t = &*target;
        let io_err = |e: std::io::Error| ConnectError::Io {
            addr: t.describe(),
            reason: e.to_string(),
        };
        let stream = if t.host.starts_with('/') {
            Stream::Unix(UnixStream::connect(t.describe()).await.map_err(io_err)?)
        } else {
            let s = TcpStream::connect((t.host.as_str(), t.port)).await.map_err(io_err)?;
            tune_tcp(&s, t.tcp_keepalive);
            Stream::Tcp(s)
        };
        let endpoints = stream.endpoints();
        let (mut rd, mut wr) = match (stream, &t.tls) {
            (Stream::Tcp(tcp), Some(tls)) => start_tls(t, tcp, tls).await?,
            (stream, _) => stream.into_split(),
        };

        let mut out = BytesMut::with_capacity(256);
        let mut params: Vec<(&str, &str)> = vec![("user", &t.user), ("database", &t.dbname)];
        params.extend(t.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        build::startup_message(params, &mut out).map_err(|e| ConnectError::Protocol(e.to_string()))?;
        wr.write_all(&out).await.map_err(io_err)?;

        let mut buf = BytesMut::with_capacity(8192);
        let mut scram: Option<ScramClient> = None;
        let mut backend = (0, 0);
        let mut server_params = Vec::new();
        loop {
            let msg = loop {
                match Message::parse(&mut buf) {
                    Ok(Some(m)) => break m,
                    Ok(None) => {
                        if rd.read_buf(&mut buf).await.map_err(io_err)? == 0 {
                            return Err(ConnectError::Protocol(
                                "server closed the connection during login".into(),
                            ));
                        }
                    }
                    Err(e) => return Err(ConnectError::Protocol(format!("bad message from server: {e}"))),
                }
            };
            out.clear();
            match msg {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    let pw = password(t, "a cleartext password")?;
                    build::password_message(pw.as_bytes(), &mut out)
                        .map_err(|e| ConnectError::Protocol(e.to_string()))?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let pw = password(t, "md5")?;
                    let response = if md5::is_md5_secret(pw) {
                        md5::expected_response(pw, body.salt())
                    } else {
                        postgres_protocol::authentication::md5_hash(t.user.as_bytes(), pw.as_bytes(), body.salt())
                    };
                    build::password_message(response.as_bytes(), &mut out)
                        .map_err(|e| ConnectError::Protocol(e.to_string()))?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechs = body.mechanisms();
                    let mut found = false;
                    while let Ok(Some(m)) = fallible_iterator::FallibleIterator::next(&mut mechs) {
                        found |= m == sluice_wire::scram::MECHANISM;
                    }
                    if !found {
                        return Err(ConnectError::Protocol(
                            "server offers no supported SASL mechanism".into(),
                        ));
                    }
                    let (client, first) = ScramClient::new(scram_credential(t)?);
                    build::sasl_initial_response(sluice_wire::scram::MECHANISM, first.as_bytes(), &mut out)
                        .map_err(|e| ConnectError::Protocol(e.to_string()))?;
                    scram = Some(client);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| ConnectError::Protocol("unexpected SASL continue".into()))?;
                    let last = s.update(body.data()).map_err(|e| scram_failed(t, e))?;
                    build::sasl_response(last.as_bytes(), &mut out)
                        .map_err(|e| ConnectError::Protocol(e.to_string()))?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let mut s = scram
                        .take()
                        .ok_or_else(|| ConnectError::Protocol("unexpected SASL final".into()))?;
                    s.finish(body.data()).map_err(|e| scram_failed(t, e))?;
                }
                Message::ParameterStatus(body) => {
                    let name = body.name().map_err(|e| ConnectError::Protocol(e.to_string()))?;
                    let value = body.value().map_err(|e| ConnectError::Protocol(e.to_string()))?;
                    server_params.push((name.to_owned(), value.to_owned()));
                }
                Message::BackendKeyData(body) => backend = (body.process_id(), body.secret_key()),
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(body) => {
                    let mut raw = BytesMut::new();
                    // Re-read the fields from the body bytes we already have.
                    let mut fields = body.fields();
                    while let Ok(Some(f)) = fallible_iterator::FallibleIterator::next(&mut fields) {
                        raw.extend_from_slice(&[f.type_()]);
                        raw.extend_from_slice(f.value_bytes());
                        raw.extend_from_slice(&[0]);
                    }
                    raw.extend_from_slice(&[0]);
                    return Err(ConnectError::Rejected(parse_error_fields(&raw)));
                }
                Message::NoticeResponse(_) => {}
                _ => return Err(ConnectError::Protocol("unexpected message during login".into())),
            }
            if !out.is_empty() {
                wr.write_all(&out).await.map_err(io_err)?;
            }
        }
        let now = Instant::now();
        Ok(ServerConn {
            meta: Arc::new(ServerMeta {
                id,
                backend_pid: backend.0,
                endpoints,
                connect_time: SystemTime::now(),
                target_gen: 0,
                linked_client: AtomicU64::new(0),
                request_time_us: AtomicU64::new(0),
                in_transaction: AtomicBool::new(false),
                lane: std::sync::atomic::AtomicUsize::new(0),
                fingerprint: AtomicU64::new(0),
            }),
            registration: None,
            id,
            target: Arc::clone(&target),
            target_gen: 0,
            rd,
            wr,
            buf,
            scan: Scanner::new(max_packet, 64 * 1024),
            created: now,
            last_used: now,
            lifetime_share: rand::Rng::gen_range(&mut rand::thread_rng(), 0.85..=1.0),
            backend_pid: backend.0,
            backend_key: backend.1,
            params: server_params.into(),
            synced_for: 0,
            statements: Default::default(),
            _permits: Vec::new(),
            hold: None,
        })
    }

    /// True once the connection has outlived its share of `server_lifetime` or idled
    /// past `server_idle_timeout`.
    pub fn expired(&self, now: Instant, lifetime: Option<Duration>, idle_timeout: Option<Duration>) -> bool {
        lifetime.is_some_and(|l| now.duration_since(self.created) >= l.mul_f64(self.lifetime_share))
            || idle_timeout.is_some_and(|t| now.duration_since(self.last_used) >= t)
    }

    /// An idle server that PostgreSQL closed (restart, `pg_terminate_backend`, idle
    /// timeouts), as the IO driver saw it: no syscall.
    pub fn is_dead(&self) -> bool {
        !self.buf.is_empty() || self.rd.peer_closed()
    }

    /// Sends Terminate and drops the socket (best effort; never waits long).
    pub async fn terminate(mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(200), self.wr.write_all(b"X\0\0\0\x04")).await;
    }
}

/// The plaintext password or md5 secret for a server that asks for `method`.
fn password<'a>(t: &'a ServerTarget, method: &str) -> Result<&'a str, ConnectError> {
    match &t.credential {
        Some(ServerCredential::Password(pw)) => Ok(pw),
        Some(ServerCredential::Scram { .. }) => Err(ConnectError::Protocol(format!(
            "server asks for {method} authentication, but only a SCRAM secret is stored for user \"{}\": SCRAM pass-through needs password_encryption = scram-sha-256 on the server (or configure a plaintext password)",
            t.user
        ))),
        None => Err(no_password(t)),
    }
}

fn no_password(t: &ServerTarget) -> ConnectError {
    ConnectError::Protocol(format!(
        "server asks for a password for user \"{}\" but none is configured (set password= in [databases] or add the user to auth_file)",
        t.user
    ))
}

/// What the SCRAM exchange with the server proves: a password, or keys a client's
/// SCRAM login revealed.
fn scram_credential(t: &ServerTarget) -> Result<ClientCredential, ConnectError> {
    match &t.credential {
        Some(ServerCredential::Password(pw)) if md5::is_md5_secret(pw) => Err(ConnectError::Protocol(format!(
            "server asks for SCRAM but only an md5 secret is configured for user \"{}\"; configure a plaintext password or a SCRAM secret",
            t.user
        ))),
        Some(ServerCredential::Password(pw)) => Ok(ClientCredential::Password(pw.clone())),
        Some(ServerCredential::Scram { secret, learned }) => match learned.get(secret) {
            Some(client_key) => Ok(ClientCredential::Keys {
                client_key,
                secret: secret.clone(),
            }),
            None => Err(ConnectError::Protocol(format!(
                "no client has logged in as \"{}\" with SCRAM yet: SCRAM pass-through learns the keys from a client's login (or configure a plaintext password)",
                t.user
            ))),
        },
        None => Err(no_password(t)),
    }
}

fn scram_failed(t: &ServerTarget, e: ScramError) -> ConnectError {
    match e {
        ScramError::SecretMismatch => ConnectError::Protocol(format!(
            "the SCRAM secret stored for user \"{}\" is not the server's (another salt or iteration count): copy rolpassword from pg_authid into auth_file, or use auth_query",
            t.user
        )),
        e => ConnectError::Protocol(format!("SCRAM: {e}")),
    }
}
