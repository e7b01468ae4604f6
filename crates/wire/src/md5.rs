//! md5 password authentication (PostgreSQL's `md5` method).

use md5::{Digest, Md5};

fn hex_md5(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    let digest = h.finalize();
    let mut s = String::with_capacity(32);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The stored form PostgreSQL and PgBouncer's userlist.txt use: `md5` + md5(password + user).
pub fn stored_secret(user: &str, password: &str) -> String {
    format!("md5{}", hex_md5(&[password.as_bytes(), user.as_bytes()]))
}

/// True when `s` looks like a stored md5 secret.
pub fn is_md5_secret(s: &str) -> bool {
    s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a client must answer to an md5 challenge, given the stored secret.
pub fn expected_response(stored_secret: &str, salt: [u8; 4]) -> String {
    let hash = stored_secret.as_bytes().get(3..).unwrap_or_default();
    format!("md5{}", hex_md5(&[hash, &salt]))
}

/// Constant-time comparison of two responses.
pub fn responses_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_postgres_protocol_client() {
        let salt = [1, 2, 3, 4];
        let secret = stored_secret("alice", "pw");
        assert!(is_md5_secret(&secret));
        let client = postgres_protocol::authentication::md5_hash(b"alice", b"pw", salt);
        assert!(responses_equal(&client, &expected_response(&secret, salt)));
    }
}
