//! The server side of SCRAM-SHA-256 (RFC 5802/7677 as PostgreSQL uses it). The client
//! side, for Sluice's own logins to PostgreSQL, comes from `postgres-protocol`.
//!
//! Channel binding is not offered (no TLS yet): clients may send `n,,` or `y,,`.

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
        let normalized = match stringprep::saslprep(password) {
            Ok(p) => p.into_owned(),
            // PostgreSQL uses the raw bytes when SASLprep fails.
            Err(_) => password.to_owned(),
        };
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(normalized.as_bytes(), salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
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

    /// Takes the client-final-message; returns the server-final-message if the proof holds.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
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
        Ok(format!("v={}", B64.encode(server_signature)))
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
        let server_final = server.finish(client.message())?;
        client.finish(server_final.as_bytes()).map_err(|_| ScramError::BadProof)
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
