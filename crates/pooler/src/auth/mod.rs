//! Client authentication: Sluice plays the server side of PostgreSQL's handshake.
//! Secrets come from auth_file or from PostgreSQL ([`query`]).
//!
//! A wrong password and an unknown user look the same to the client, down to the
//! exchange itself: unknown users get a mock challenge and fail at the proof.

pub mod hba;
pub mod query;

use std::sync::Arc;

use bytes::BytesMut;
use dashmap::DashMap;
use rand::RngCore;
use sluice_wire::backend;
use sluice_wire::frontend::{self, PASSWORD};
use sluice_wire::md5;
use sluice_wire::scram::{ScramSecret, ScramServer, MECHANISM};
use sluice_wire::Header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::AuthType;
use crate::errors::ClientError;
use crate::server::ServerCredential;
use crate::stream::{ReadHalf, WriteHalf};

/// Passwords, md5 and SCRAM secrets are all far below this.
const MAX_AUTH_MESSAGE: usize = 8192;

pub struct Handshake<'a> {
    pub rd: &'a mut ReadHalf,
    pub wr: &'a mut WriteHalf,
    pub buf: &'a mut BytesMut,
    /// The verified TLS client certificate's common name, for `cert`.
    pub cert_cn: Option<&'a str>,
}

impl Handshake<'_> {
    async fn send(&mut self, msg: &BytesMut) -> Result<(), ClientError> {
        self.wr
            .write_all(msg)
            .await
            .map_err(|e| ClientError::protocol(format!("client write failed: {e}")))
    }

    /// Reads one password-type message ('p') and returns its body.
    async fn read_password_message(&mut self) -> Result<BytesMut, ClientError> {
        loop {
            let header = Header::parse(self.buf, MAX_AUTH_MESSAGE as u32 + 4)
                .map_err(|_| ClientError::protocol("invalid password packet length"))?;
            if let Some(h) = header {
                if h.tag != PASSWORD {
                    return Err(ClientError::protocol(format!(
                        "expected password response, got message type '{}'",
                        h.tag as char
                    )));
                }
                if self.buf.len() >= h.total_len() {
                    let mut msg = self.buf.split_to(h.total_len());
                    let _ = msg.split_to(5);
                    return Ok(msg);
                }
            }
            let n = self
                .rd
                .read_buf(self.buf)
                .await
                .map_err(|e| ClientError::protocol(format!("client read failed: {e}")))?;
            if n == 0 {
                return Err(ClientError::protocol(
                    "client closed the connection during authentication",
                ));
            }
        }
    }
}

/// What Sluice knows about a user's password, prepared once per config load.
#[derive(Debug, Clone)]
pub struct StoredSecret {
    /// As configured: plaintext, `md5...` or `SCRAM-SHA-256$...`.
    pub raw: String,
    kind: SecretKind,
}

#[derive(Debug, Clone)]
enum SecretKind {
    Plain { scram: ScramSecret },
    Md5,
    Scram(ScramSecret),
}

impl StoredSecret {
    /// Classifies a secret; for a plaintext password the SCRAM secret is derived here,
    /// once, instead of one PBKDF2 per login.
    pub fn new(raw: &str) -> StoredSecret {
        let kind = if md5::is_md5_secret(raw) {
            SecretKind::Md5
        } else if let Some(s) = ScramSecret::parse(raw) {
            SecretKind::Scram(s)
        } else {
            let mut salt = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut salt);
            SecretKind::Plain {
                scram: ScramSecret::from_password(raw, &salt, 4096),
            }
        };
        StoredSecret {
            raw: raw.to_owned(),
            kind,
        }
    }

    /// How a server login for this user proves it: with the password or md5 secret,
    /// or, for a SCRAM secret, with keys learned from a client's login (pass-through).
    pub fn for_server_login(&self, learned: &Arc<LearnedKeys>) -> ServerCredential {
        match &self.kind {
            SecretKind::Plain { .. } | SecretKind::Md5 => ServerCredential::Password(self.raw.clone()),
            SecretKind::Scram(secret) => ServerCredential::Scram {
                secret: secret.clone(),
                learned: Arc::clone(learned),
            },
        }
    }
}

/// `ClientKey`s revealed by clients' SCRAM proofs, by the secret's StoredKey: what
/// SCRAM pass-through logs in to PostgreSQL with. A key is checked against its secret
/// (`H(ClientKey) = StoredKey`), so a changed secret never gets a stale key.
#[derive(Debug, Default)]
pub struct LearnedKeys(DashMap<[u8; 32], [u8; 32]>);

/// Far above any real number of users: a bound, so changing secrets (auth_query) cannot
/// grow the map for ever.
const MAX_LEARNED_KEYS: usize = 100_000;

impl LearnedKeys {
    pub fn remember(&self, secret: &ScramSecret, client_key: [u8; 32]) {
        if self.0.len() >= MAX_LEARNED_KEYS {
            self.0.clear();
        }
        self.0.insert(secret.stored_key, client_key);
    }

    pub fn get(&self, secret: &ScramSecret) -> Option<[u8; 32]> {
        let key = *self.0.get(&secret.stored_key)?;
        secret.matches_client_key(&key).then_some(key)
    }
}

/// Authenticates `user` by `auth_type`. `secret` is None for unknown users.
/// A SCRAM login against a stored SCRAM secret teaches `learned` the user's ClientKey.
pub async fn authenticate(
    hs: &mut Handshake<'_>,
    auth_type: AuthType,
    user: &str,
    secret: Option<&StoredSecret>,
    learned: &LearnedKeys,
) -> Result<(), ClientError> {
    match auth_type {
        AuthType::Trust | AuthType::Any => Ok(()),
        AuthType::Cert => certificate(hs, user),
        // Resolved to one of the above per connection before authenticating.
        AuthType::Hba => Err(ClientError::protocol("auth_type = hba has no rules loaded")),
        AuthType::Plain => plain(hs, user, secret).await,
        // PgBouncer does SCRAM even under md5 when the stored secret is a SCRAM secret.
        AuthType::Md5 => match secret.map(|s| &s.kind) {
            Some(SecretKind::Scram(_)) => scram(hs, user, secret, learned).await,
            _ => md5_exchange(hs, user, secret).await,
        },
        AuthType::ScramSha256 => scram(hs, user, secret, learned).await,
    }
}

/// `cert`: the client showed a certificate the CA signed (checked in the TLS
/// handshake, `client_tls_sslmode = verify-ca / verify-full`), and its common name is
/// the user name.
fn certificate(hs: &Handshake<'_>, user: &str) -> Result<(), ClientError> {
    use sluice_wire::sqlstate::INVALID_AUTHORIZATION_SPECIFICATION as CODE;
    match hs.cert_cn {
        None => Err(ClientError::fatal(CODE, "TLS client certificate required").hint(
            "cert authentication needs TLS with a client certificate: set client_tls_sslmode = verify-ca and client_tls_ca_file, and connect with sslcert/sslkey",
        )),
        Some(cn) if cn == user => Ok(()),
        Some(cn) => Err(ClientError::fatal(
            CODE,
            format!("certificate authentication failed for user \"{user}\""),
        )
        .hint(format!("the certificate's common name is \"{cn}\": it must be the user name"))),
    }
}

async fn plain(hs: &mut Handshake<'_>, user: &str, secret: Option<&StoredSecret>) -> Result<(), ClientError> {
    let mut out = BytesMut::new();
    backend::auth_cleartext(&mut out);
    hs.send(&out).await?;
    let body = hs.read_password_message().await?;
    let given = frontend::parse_password(&body).ok_or_else(|| ClientError::protocol("invalid password packet"))?;
    let ok = match secret.map(|s| (&s.raw, &s.kind)) {
        Some((p, SecretKind::Plain { .. })) => md5::responses_equal(p, given),
        Some((stored, SecretKind::Md5)) => md5::responses_equal(stored, &md5::stored_secret(user, given)),
        Some((_, SecretKind::Scram(s))) => {
            ScramSecret::from_password(given, &s.salt, s.iterations).stored_key == s.stored_key
        }
        None => false,
    };
    ok.then_some(()).ok_or_else(|| ClientError::password_failed(user))
}

async fn md5_exchange(hs: &mut Handshake<'_>, user: &str, secret: Option<&StoredSecret>) -> Result<(), ClientError> {
    let mut salt = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut salt);
    let mut out = BytesMut::new();
    backend::auth_md5(&mut out, salt);
    hs.send(&out).await?;
    let body = hs.read_password_message().await?;
    let given = frontend::parse_password(&body).ok_or_else(|| ClientError::protocol("invalid password packet"))?;
    let stored = match secret.map(|s| (&s.raw, &s.kind)) {
        Some((p, SecretKind::Plain { .. })) => md5::stored_secret(user, p),
        Some((s, SecretKind::Md5)) => s.clone(),
        _ => return Err(ClientError::password_failed(user)),
    };
    md5::responses_equal(&md5::expected_response(&stored, salt), given)
        .then_some(())
        .ok_or_else(|| ClientError::password_failed(user))
}

async fn scram(
    hs: &mut Handshake<'_>,
    user: &str,
    secret: Option<&StoredSecret>,
    learned: &LearnedKeys,
) -> Result<(), ClientError> {
    let (scram_secret, real) = match secret.map(|s| &s.kind) {
        Some(SecretKind::Scram(s)) | Some(SecretKind::Plain { scram: s }) => (s.clone(), true),
        // An md5 secret cannot answer SCRAM; unknown users get a mock exchange. Both
        // fail like a wrong password.
        Some(SecretKind::Md5) | None => (ScramSecret::mock(user, &mock_seed()), false),
    };
    let mut out = BytesMut::new();
    backend::auth_sasl(&mut out, &[MECHANISM]);
    hs.send(&out).await?;

    let body = hs.read_password_message().await?;
    let (mechanism, data) =
        frontend::parse_sasl_initial(&body).ok_or_else(|| ClientError::protocol("malformed SASLInitialResponse"))?;
    if mechanism != MECHANISM {
        return Err(ClientError::protocol(format!(
            "client selected an invalid SASL authentication mechanism: {mechanism}"
        )));
    }
    let (server, first) = ScramServer::start(scram_secret, data).map_err(|e| ClientError::protocol(e.to_string()))?;
    out.clear();
    backend::auth_sasl_continue(&mut out, first.as_bytes());
    hs.send(&out).await?;

    let body = hs.read_password_message().await?;
    let verified = match server.finish(&body) {
        Ok(v) if real => v,
        Ok(_) | Err(sluice_wire::scram::ScramError::BadProof) => return Err(ClientError::password_failed(user)),
        Err(e) => return Err(ClientError::protocol(e.to_string())),
    };
    if let Some(SecretKind::Scram(stored)) = secret.map(|s| &s.kind) {
        learned.remember(stored, verified.client_key);
    }
    out.clear();
    backend::auth_sasl_final(&mut out, verified.server_final.as_bytes());
    hs.send(&out).await?;
    Ok(())
}

/// A per-process seed, so a mock salt is stable for one user name while running (as a
/// real user's would be) without being predictable across restarts.
fn mock_seed() -> [u8; 16] {
    static SEED: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        let mut s = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut s);
        s
    })
}
