//! SCRAM-SHA-256 (RFC 5802/7677 as PostgreSQL uses it), both sides.
//!
//! [`ScramServer`] checks a client's proof against a stored secret and hands back the
//! client's `ClientKey`; [`ScramClient`] logs in to PostgreSQL with a password or with
//! such keys (SCRAM pass-through: no plaintext password stored anywhere).
//!
//! Channel binding is not offered: clients may send `n,,` or `y,,`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const MECHANISM: &str = "SCRAM-SHA-256";
const NONCE_LEN: usize = 18;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// A stored SCRAM secret: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramSecret {
    pub fn parse(s: &str) -> Option<ScramSecret> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramSecret {
            iterations: iterations.parse().ok()?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }

    /// Derives a secret from a plaintext password (SASLprep-normalised, as PostgreSQL does).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        let (client_key, secret) = Self::derive(password, salt, iterations);
        debug_assert_eq!(<[u8; 32]>::from(Sha256::digest(client_key)), secret.stored_key);
        secret
    }

    /// The password's `ClientKey` and secret for this salt and iteration count.
    fn derive(password: &str, salt: &[u8], iterations: u32) -> ([u8; 32], ScramSecret) {
        let normalized = match stringprep::saslprep(password) {
            Ok(p) => p.into_owned(),
            // PostgreSQL uses the raw bytes when SASLprep fails.
            Err(_) => password.to_owned(),
        };
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(normalized.as_bytes(), salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let secret = ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        };
        (client_key, secret)
    }

    /// True if `client_key` belongs to this secret (`H(ClientKey) = StoredKey`).
    pub fn matches_client_key(&self, client_key: &[u8; 32]) -> bool {
        <[u8; 32]>::from(Sha256::digest(client_key)) == self.stored_key
    }

    /// A secret for a user that does not exist, so the exchange looks the same as for a
    /// real one and fails only at the proof (never reveal which users exist).
    pub fn mock(user: &str, nonce_seed: &[u8]) -> ScramSecret {
        let salt: [u8; 16] = Sha256::digest([user.as_bytes(), nonce_seed].concat())[..16]
            .try_into()
            .unwrap_or([0; 16]);
        let mut stored_key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut stored_key);
        ScramSecret {
            iterations: 4096,
            salt: salt.to_vec(),
            stored_key,
            server_key: stored_key,
        }
    }

    pub fn encode(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("password authentication failed")]
    BadProof,
    #[error("the server's SCRAM secret has another salt or iteration count than the stored one")]
    SecretMismatch,
    #[error("the server's SCRAM signature is wrong: it does not know the password")]
    BadServerSignature,
    #[error("the server ended the exchange: {0}")]
    Server(String),
}

/// Server-side exchange state. Drive it with the client's two messages.
pub struct ScramServer {
    secret: ScramSecret,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    /// Takes the client-first-message; returns the state and the server-first-message.
    pub fn start(secret: ScramSecret, client_first: &[u8]) -> Result<(ScramServer, String), ScramError> {
        let msg = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = msg.split_once(',').ok_or(ScramError::Malformed("gs2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("channel binding flag")),
        }
        let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed("gs2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed("authorization identity is not supported"));
        }
        let gs2_header = format!("{flag},{authzid},");
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("missing nonce"))?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') {
            return Err(ScramError::Malformed("invalid nonce"));
        }
        let mut raw = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut raw);
        let nonce = format!("{client_nonce}{}", B64.encode(raw));
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&secret.salt), secret.iterations);
        Ok((
            ScramServer {
                secret,
                gs2_header,
                client_first_bare: bare.to_owned(),
                server_first: server_first.clone(),
                nonce,
            },
            server_first,
        ))
    }

    /// Takes the client-final-message; if the proof holds, returns the
    /// server-final-message and the `ClientKey` the proof revealed.
    pub fn finish(self, client_final: &[u8]) -> Result<Verified, ScramError> {
        let msg = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(ScramError::Malformed("missing proof"))?;
        let mut channel = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                channel = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        let channel = B64
            .decode(channel.ok_or(ScramError::Malformed("missing channel binding"))?)
            .map_err(|_| ScramError::Malformed("channel binding encoding"))?;
        if channel != self.gs2_header.as_bytes() {
            return Err(ScramError::Malformed("channel binding does not match"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("proof encoding"))?;
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let client_signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        let diff = computed
            .iter()
            .zip(self.secret.stored_key.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        Ok(Verified {
            server_final: format!("v={}", B64.encode(server_signature)),
            client_key,
        })
    }
}

/// A successful server-side exchange.
#[derive(Debug)]
pub struct Verified {
    pub server_final: String,
    /// `H(ClientKey) = StoredKey`: with the secret's ServerKey it logs in to any server
    /// that stores the same secret.
    pub client_key: [u8; 32],
}

/// What Sluice logs in to PostgreSQL with.
#[derive(Debug, Clone)]
pub enum ClientCredential {
    /// A plaintext password: keys are derived from it with the server's salt.
    Password(String),
    /// Keys learned from a client's proof against `secret` (pass-through). They only
    /// work if the server stores the same secret (same salt and iterations).
    Keys { client_key: [u8; 32], secret: ScramSecret },
}

/// Client-side exchange: [`ScramClient::new`] gives the client-first-message,
/// [`ScramClient::update`] answers the server-first-message, [`ScramClient::finish`]
/// checks the server's signature.
pub struct ScramClient {
    credential: ClientCredential,
    client_first_bare: String,
    nonce: String,
    state: ClientState,
}

enum ClientState {
    Started,
    Sent { auth_message: String, server_key: [u8; 32] },
    Done,
}

impl ScramClient {
    /// Returns the exchange and the client-first-message.
    pub fn new(credential: ClientCredential) -> (ScramClient, String) {
        let mut raw = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut raw);
        let nonce = B64.encode(raw);
        // PostgreSQL takes the user from the startup packet; the SCRAM name stays empty.
        let client_first_bare = format!("n=,r={nonce}");
        let first = format!("n,,{client_first_bare}");
        (
            ScramClient {
                credential,
                client_first_bare,
                nonce,
                state: ClientState::Started,
            },
            first,
        )
    }

    /// Takes the server-first-message; returns the client-final-message.
    pub fn update(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        if !matches!(self.state, ClientState::Started) {
            return Err(ScramError::Malformed("unexpected server-first-message"));
        }
        let msg = std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attr in msg.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = Some(B64.decode(v).map_err(|_| ScramError::Malformed("salt encoding"))?);
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = Some(v.parse::<u32>().map_err(|_| ScramError::Malformed("iteration count"))?);
            }
        }
        let nonce = nonce.ok_or(ScramError::Malformed("missing nonce"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Malformed("server nonce does not extend ours"));
        }
        let salt = salt.ok_or(ScramError::Malformed("missing salt"))?;
        let iterations = iterations
            .filter(|i| *i > 0)
            .ok_or(ScramError::Malformed("iteration count"))?;
        let (client_key, stored_key, server_key) = match &self.credential {
            ClientCredential::Password(password) => {
                let (client_key, derived) = ScramSecret::derive(password, &salt, iterations);
                (client_key, derived.stored_key, derived.server_key)
            }
            ClientCredential::Keys { client_key, secret } => {
                if secret.salt != salt || secret.iterations != iterations {
                    return Err(ScramError::SecretMismatch);
                }
                (*client_key, secret.stored_key, secret.server_key)
            }
        };
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{},{}", self.client_first_bare, msg, without_proof);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = [0u8; 32];
        for i in 0..32 {
            proof[i] = client_key[i] ^ signature[i];
        }
        self.state = ClientState::Sent {
            auth_message,
            server_key,
        };
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final-message: the server proves it knows the secret too.
    pub fn finish(&mut self, server_final: &[u8]) -> Result<(), ScramError> {
        let ClientState::Sent {
            auth_message,
            server_key,
        } = std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return Err(ScramError::Malformed("unexpected server-final-message"));
        };
        let msg = std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        if let Some(e) = msg.strip_prefix("e=") {
            return Err(ScramError::Server(e.to_owned()));
        }
        let given = msg
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v).ok())
            .ok_or(ScramError::Malformed("server signature"))?;
        let expected = hmac(&server_key, auth_message.as_bytes());
        if given.len() != expected.len() || given.iter().zip(expected.iter()).fold(0u8, |a, (x, y)| a | (x ^ y)) != 0 {
            return Err(ScramError::BadServerSignature);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn exchange(secret: ScramSecret, client_password: &[u8]) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(client_password, ChannelBinding::unsupported());
        let (server, server_first) = ScramServer::start(secret, client.message())?;
        client
            .update(server_first.as_bytes())
            .map_err(|_| ScramError::BadProof)?;
        let verified = server.finish(client.message())?;
        client
            .finish(verified.server_final.as_bytes())
            .map_err(|_| ScramError::BadProof)
    }

    /// Our client against our server: returns the ClientKey the server learned.
    fn own_exchange(secret: ScramSecret, credential: ClientCredential) -> Result<[u8; 32], ScramError> {
        let (mut client, first) = ScramClient::new(credential);
        let (server, server_first) = ScramServer::start(secret, first.as_bytes())?;
        let last = client.update(server_first.as_bytes())?;
        let verified = server.finish(last.as_bytes())?;
        client.finish(verified.server_final.as_bytes())?;
        Ok(verified.client_key)
    }

    #[test]
    fn learned_client_key_logs_in_again_without_the_password() {
        let secret = ScramSecret::from_password("hunter2", b"0123456789abcdef", 4096);
        let key = own_exchange(secret.clone(), ClientCredential::Password("hunter2".into())).unwrap();
        assert!(secret.matches_client_key(&key));
        let keys = ClientCredential::Keys {
            client_key: key,
            secret: secret.clone(),
        };
        assert_eq!(own_exchange(secret.clone(), keys.clone()), Ok(key));
        // The same keys against a secret with another salt: caught before any proof.
        let other = ScramSecret::from_password("hunter2", b"another salt....", 4096);
        assert_eq!(own_exchange(other, keys).err(), Some(ScramError::SecretMismatch));
        assert_eq!(
            own_exchange(secret, ClientCredential::Password("wrong".into())).err(),
            Some(ScramError::BadProof)
        );
    }

    #[test]
    fn client_checks_the_server_signature_and_nonce() {
        let secret = ScramSecret::from_password("pw", b"salt", 4096);
        let (mut client, _) = ScramClient::new(ClientCredential::Password("pw".into()));
        assert!(client.update(b"r=someone-elses-nonce,s=c2FsdA==,i=4096").is_err());
        let (mut client, first) = ScramClient::new(ClientCredential::Password("pw".into()));
        let (_, server_first) = ScramServer::start(secret, first.as_bytes()).unwrap();
        client.update(server_first.as_bytes()).unwrap();
        assert_eq!(
            client.finish(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(ScramError::BadServerSignature)
        );
    }

    #[test]
    fn accepts_right_password_against_plaintext_and_stored_secrets() {
        let s = ScramSecret::from_password("hunter2", b"0123456789abcdef", 4096);
        assert_eq!(exchange(s.clone(), b"hunter2"), Ok(()));
        // A secret as PostgreSQL/postgres-protocol store it parses and verifies too.
        let stored = postgres_protocol::password::scram_sha_256(b"hunter2");
        let parsed = ScramSecret::parse(&stored).unwrap();
        assert_eq!(parsed.encode(), stored);
        assert_eq!(exchange(parsed, b"hunter2"), Ok(()));
    }

    #[test]
    fn rejects_wrong_password_and_mock_users() {
        let s = ScramSecret::from_password("hunter2", b"salt", 4096);
        assert_eq!(exchange(s, b"wrong"), Err(ScramError::BadProof));
        assert_eq!(
            exchange(ScramSecret::mock("ghost", b"x"), b"anything"),
            Err(ScramError::BadProof)
        );
    }

    #[test]
    fn rejects_malformed_messages() {
        let s = ScramSecret::from_password("pw", b"salt", 4096);
        assert!(ScramServer::start(s.clone(), b"garbage").is_err());
        assert_eq!(
            ScramServer::start(s.clone(), b"p=tls-server-end-point,,n=,r=abc").err(),
            Some(ScramError::ChannelBinding)
        );
        let (server, _) = ScramServer::start(s, b"n,,n=,r=abc").unwrap();
        assert!(server.finish(b"c=biws,r=wrong,p=AAAA").is_err());
    }
}
