//! A client connection from accept to close: startup, authentication, routing to a
//! pool, then the session loop ([`session`]).

mod abandon;
mod prepared;
mod session;
mod startup;
mod state;

pub use session::Timeouts;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use sluice_wire::backend::{self, TxStatus};
use sluice_wire::frame::Scanner;
use sluice_wire::sqlstate;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, info_span, Instrument};

use crate::app::{App, Route};
use crate::auth::{self, Handshake};
use crate::config::{seconds, AuthType};
use crate::errors::ClientError;
use crate::params;
use crate::stream::{ReadHalf, Stream, WriteHalf};
use state::SessionState;

/// Bytes and halves of one client connection.
pub struct ClientConn {
    pub rd: ReadHalf,
    pub wr: WriteHalf,
    /// Bytes read from the client and not yet forwarded.
    pub buf: BytesMut,
    pub scan: Scanner,
    /// The TLS session's protocol, cipher and key exchange; None in plaintext.
    pub tls: Option<String>,
    /// The verified client certificate's common name (TLS with a client certificate).
    pub cert_cn: Option<String>,
    /// The client's address; None on a Unix socket.
    pub peer_ip: Option<std::net::IpAddr>,
}

/// Counts the client against max_client_conn while it is connected.
struct ClientSlot<'a>(&'a App);

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts the client in its pool while it is logged in.
struct PoolSlot<'a>(&'a Route);

impl Drop for PoolSlot<'_> {
    fn drop(&mut self) {
        self.0.pool.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a login leads to.
enum LoggedIn {
    Pool(Route, SessionState),
    Admin(crate::admin::Role),
}

/// Serves one accepted connection until it closes.
pub async fn serve(app: Arc<App>, stream: Stream, peer: String) {
    let id = app.next_client_id();
    let endpoints = stream.endpoints();
    let peer_ip = endpoints.addr.parse().ok();
    let span = info_span!("client", id, peer = %peer);
    async move {
        let current = app.current();
        let connected = app.clients.fetch_add(1, Ordering::Relaxed) + 1;
        let _slot = ClientSlot(&app);
        let (rd, wr) = stream.into_split();
        let mut client = ClientConn {
            rd,
            wr,
            buf: BytesMut::with_capacity(4096),
            scan: Scanner::new(current.config.max_packet_size, 64 * 1024),
            tls: None,
            cert_cn: None,
            peer_ip,
        };
        let registration = app.cancels.register(id, endpoints);
        let login = login(&app, &mut client, connected, &registration);
        let login = match seconds(current.config.client_login_timeout) {
            Some(t) => tokio::time::timeout(t, login).await.unwrap_or_else(|_| {
                Err(ClientError::protocol(
                    "client_login_timeout (server down or auth failure)",
                ))
            }),
            None => login.await,
        };
        let (route, session) = match login {
            Ok(Some(LoggedIn::Pool(route, session))) => (route, session),
            Ok(Some(LoggedIn::Admin(role))) => {
                let reason = crate::admin::serve(&app, &mut client, role, &registration.link).await;
                if current.config.log_disconnections {
                    info!(db = crate::admin::ADMIN_DB, "closing because: {reason}");
                }
                return;
            }
            Ok(None) => return,
            // A connection closed before saying anything (port probes, health checks).
            Err(e) if e.message == startup::CLOSED_BEFORE_STARTUP => {
                debug!("{}", e.message);
                return;
            }
            Err(e) => {
                if current.config.log_pooler_errors {
                    info!(code = %e.code, "login failed: {}", e.message);
                }
                send_error(&mut client, &e).await;
                return;
            }
        };
        route.pool.clients.fetch_add(1, Ordering::Relaxed);
        let _pool_slot = PoolSlot(&route);
        let reason = session::run(
            &mut client,
            &route,
            &registration.link,
            app.shutdown.subscribe(),
            session,
        )
        .await;
        if current.config.log_disconnections {
            info!(db = %route.pool.db, user = %route.pool.user, "closing because: {reason}");
        }
    }
    .instrument(span)
    .await
}

/// Startup and authentication. Returns None for a CancelRequest (handled here).
async fn login(
    app: &App,
    client: &mut ClientConn,
    connected: usize,
    registration: &crate::cancel::Registration<'_>,
) -> Result<Option<LoggedIn>, ClientError> {
    let (cancel_pid, cancel_key) = (registration.pid, registration.key);
    let current = app.current();
    let msg = match startup::read(client, current.loaded.client_tls.as_deref()).await? {
        startup::Startup::Login(msg) => msg,
        startup::Startup::Cancel { pid, key } => {
            let timeout = seconds(current.config.cancel_wait_timeout).unwrap_or(std::time::Duration::from_secs(3600));
            app.cancels.cancel(pid, key, timeout).await;
            return Ok(None);
        }
    };
    let user = msg.get("user").filter(|u| !u.is_empty()).ok_or_else(|| {
        ClientError::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            "no PostgreSQL user name specified in startup packet",
        )
    })?;
    let db = msg.get("database").filter(|d| !d.is_empty()).unwrap_or(user);
    let admin = db == crate::admin::ADMIN_DB;
    // The console stays reachable when clients have used up max_client_conn.
    if connected > current.config.max_client_conn as usize && !admin {
        return Err(ClientError::protocol("no more connections allowed (max_client_conn)"));
    }
    if let Some(p) = current.unsupported_parameter(&msg.params) {
        return Err(ClientError::protocol(format!("unsupported startup parameter: {p}"))
            .hint("add it to ignore_startup_parameters in the pooler config"));
    }
    if current.config.log_connections {
        info!(db, user, "login attempt");
    }

    let method = match (current.config.auth_type, &current.loaded.hba) {
        (AuthType::Hba, Some(rules)) => hba_method(rules, client, db, user)?,
        (t, _) => t,
    };
    // auth_file first; users it does not list are looked up with auth_query (not for
    // the console, whose users are Sluice's own).
    let listed = current.secret(user);
    let looked_up = match listed {
        None if !admin && method != AuthType::Any => auth::query::lookup(app, db, user).await?,
        _ => None,
    };
    let secret = listed.or_else(|| looked_up.as_ref().and_then(|(_, answer)| answer.as_deref()));
    if method == AuthType::Trust && secret.is_none() {
        // PgBouncer's trust still requires the user to be known (auth_file, auth_query).
        return Err(ClientError::password_failed(user));
    }
    let mut hs = Handshake {
        rd: &mut client.rd,
        wr: &mut client.wr,
        buf: &mut client.buf,
        cert_cn: client.cert_cn.as_deref(),
    };
    let authenticated = auth::authenticate(&mut hs, method, user, secret, &current.learned_keys).await;
    if let (Err(_), Some((key, _))) = (&authenticated, &looked_up) {
        // The password may have changed since the answer: ask again next time.
        current.auth_cache.forget(key);
    }
    authenticated?;

    if admin {
        let role = crate::admin::role(&current.config, user)?;
        let app_name = msg.get("application_name").unwrap_or_default().to_owned();
        let _ = registration.link.login.set(crate::cancel::ClientLogin {
            db: db.to_owned(),
            user: user.to_owned(),
            application_name: app_name,
            pool: None,
            tls: client.tls.clone().unwrap_or_default(),
        });
        crate::admin::welcome(client, (cancel_pid, cancel_key)).await?;
        return Ok(Some(LoggedIn::Admin(role)));
    }

    let route = app.route(db, user)?;
    if app.db_disabled(db) {
        return Err(ClientError::protocol(format!(
            "database does not allow connections: {db}"
        )));
    }
    let welcome = match route.pool.welcome() {
        Some(w) => w,
        None => {
            // No server has logged in yet: do it now, to show the client real values.
            let server = route
                .pool
                .acquire(crate::pool::Ticket::default())
                .await
                .map_err(|e| ClientError::from(&e))?;
            route.pool.release(server, true);
            route
                .pool
                .welcome()
                .ok_or_else(|| ClientError::fatal(sqlstate::INTERNAL_ERROR, "server parameters are unknown"))?
        }
    };
    route.pool.fill_min();

    // The client's own settings from its startup packet win over the server's; its
    // servers are brought in line before they run anything for it.
    let mut desired = (*welcome).clone();
    for (name, value) in &msg.params {
        if let Some(canonical) = params::reported(name) {
            desired.set(canonical, value);
        }
    }
    let sets = msg.get("options").map(params::options_to_sets).unwrap_or_default();

    let mut out = BytesMut::with_capacity(512);
    backend::auth_ok(&mut out);
    for (name, value) in desired.iter() {
        backend::parameter_status(&mut out, name, value);
    }
    // Sluice's own key: a client never learns a server's cancel key.
    backend::backend_key_data(&mut out, cancel_pid, cancel_key);
    backend::ready_for_query(&mut out, TxStatus::Idle);
    client
        .wr
        .write_all(&out)
        .await
        .map_err(|e| ClientError::protocol(format!("client write failed: {e}")))?;
    let _ = registration.link.login.set(crate::cancel::ClientLogin {
        db: db.to_owned(),
        user: user.to_owned(),
        application_name: desired.get("application_name").unwrap_or_default().to_owned(),
        pool: Some(Arc::clone(&route.pool)),
        tls: client.tls.clone().unwrap_or_default(),
    });
    Ok(Some(LoggedIn::Pool(route, SessionState::new(desired, sets))))
}

/// The method `auth_hba_file` chooses for this connection, or PostgreSQL's refusal.
fn hba_method(rules: &auth::hba::HbaRules, client: &ClientConn, db: &str, user: &str) -> Result<AuthType, ClientError> {
    use auth::hba::Method;
    let connection = auth::hba::Connection {
        peer: client.peer_ip,
        tls: client.tls.is_some(),
        database: db,
        user,
    };
    // PostgreSQL's wording, so clients and log searches recognise it.
    let host = client.peer_ip.map_or("[local]".to_owned(), |ip| ip.to_string());
    let encryption = if client.tls.is_some() {
        "SSL encryption"
    } else {
        "no encryption"
    };
    let refused = |what: &str| {
        ClientError::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            format!("{what} for host \"{host}\", user \"{user}\", database \"{db}\", {encryption}"),
        )
    };
    match rules.decide(&connection) {
        None => Err(refused("no pg_hba.conf entry")
            .hint("no line of auth_hba_file matches this connection: add one (Sluice's, not PostgreSQL's)")),
        Some(d) => match d.method {
            Method::Reject => {
                Err(refused("pg_hba.conf rejects connection").hint(format!("auth_hba_file line {} rejects it", d.line)))
            }
            Method::Trust => Ok(AuthType::Trust),
            Method::Md5 => Ok(AuthType::Md5),
            Method::ScramSha256 => Ok(AuthType::ScramSha256),
            Method::Password => Ok(AuthType::Plain),
            Method::Cert => Ok(AuthType::Cert),
        },
    }
}

/// Best effort: the client may already be gone.
pub(crate) async fn send_error(client: &mut ClientConn, e: &ClientError) {
    let mut out = BytesMut::new();
    e.write(&mut out);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.wr.write_all(&out)).await;
    let _ = client.wr.shutdown().await;
}
