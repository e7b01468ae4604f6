//! PgBouncer's `*_tls_protocols` and `*_tls_ciphers` mapped onto what rustls offers:
//! TLS 1.2 and 1.3, and six AEAD TLS 1.2 suites (no CBC, RC4, 3DES or export
//! ciphers exist to turn off). As in PgBouncer, the cipher list only affects TLS 1.2;
//! TLS 1.3 always offers its three suites.

use rustls::crypto::ring::cipher_suite as suite;
use rustls::crypto::CryptoProvider;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

/// What a side's TLS may negotiate.
#[derive(Debug)]
pub struct Policy {
    pub versions: Vec<&'static SupportedProtocolVersion>,
    pub provider: CryptoProvider,
}

/// A TLS 1.2 suite by its OpenSSL name, with the OpenSSL keywords that select it.
struct Tls12Suite {
    openssl: &'static str,
    suite: SupportedCipherSuite,
    keywords: &'static [&'static str],
}

const COMMON: [&str; 9] = [
    "ALL", "DEFAULT", "HIGH", "ECDHE", "EECDH", "kECDHE", "kEECDH", "TLSv1.2", "AEAD",
];

fn tls12_suites() -> [Tls12Suite; 6] {
    [
        Tls12Suite {
            openssl: "ECDHE-ECDSA-AES256-GCM-SHA384",
            suite: suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            keywords: &["ECDSA", "aECDSA", "AES", "AES256", "AESGCM", "SHA384"],
        },
        Tls12Suite {
            openssl: "ECDHE-ECDSA-AES128-GCM-SHA256",
            suite: suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            keywords: &["ECDSA", "aECDSA", "AES", "AES128", "AESGCM", "SHA256"],
        },
        Tls12Suite {
            openssl: "ECDHE-ECDSA-CHACHA20-POLY1305",
            suite: suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            keywords: &["ECDSA", "aECDSA", "CHACHA20", "SHA256"],
        },
        Tls12Suite {
            openssl: "ECDHE-RSA-AES256-GCM-SHA384",
            suite: suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            keywords: &["RSA", "aRSA", "AES", "AES256", "AESGCM", "SHA384"],
        },
        Tls12Suite {
            openssl: "ECDHE-RSA-AES128-GCM-SHA256",
            suite: suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            keywords: &["RSA", "aRSA", "AES", "AES128", "AESGCM", "SHA256"],
        },
        Tls12Suite {
            openssl: "ECDHE-RSA-CHACHA20-POLY1305",
            suite: suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            keywords: &["RSA", "aRSA", "CHACHA20", "SHA256"],
        },
    ]
}

impl Tls12Suite {
    /// True if `word` (one OpenSSL cipher-string word, no operator) selects this suite:
    /// its OpenSSL or IANA name, or a keyword that describes it.
    fn selected_by(&self, word: &str) -> bool {
        word == self.openssl
            || self.suite.suite().as_str() == Some(word)
            || self.keywords.contains(&word)
            || COMMON.contains(&word)
    }
}

/// The OpenSSL name of a TLS 1.2 suite (what PgBouncer shows in SHOW CLIENTS).
pub fn openssl_name(suite: rustls::CipherSuite) -> Option<&'static str> {
    tls12_suites()
        .into_iter()
        .find(|s| s.suite.suite() == suite)
        .map(|s| s.openssl)
}

/// OpenSSL words for ciphers rustls never offers: `!aNULL`, `!MD5`, ... exclude
/// nothing here, and selecting them alone selects nothing.
const ABSENT: &[&str] = &[
    "aNULL", "eNULL", "NULL", "MD5", "RC4", "DES", "3DES", "EXPORT", "EXP", "LOW", "MEDIUM", "PSK", "SRP", "DSS",
    "aDSS", "CAMELLIA", "SEED", "IDEA", "kRSA", "RSAPSK", "DHE", "EDH", "kDHE", "kEDH", "ADH", "AECDH", "SHA1", "SHA",
    "SSLv3", "CBC", "ARIA", "CCM", "CCM8", "aPSK", "kPSK", "ECDHEPSK", "DHEPSK",
];

/// [`policy`], with its notes logged as warnings.
pub fn build(side: &str, protocols: &str, ciphers: &str) -> Result<Policy, String> {
    let (policy, notes) = policy(side, protocols, ciphers)?;
    for note in notes {
        tracing::warn!("{note}");
    }
    Ok(policy)
}

/// The protocol versions and cipher suites `protocols` and `ciphers` allow; `side` is
/// the settings' prefix (`client_tls` / `server_tls`) for error messages. Also returns
/// notes for the log (what was asked for and cannot be offered).
pub fn policy(side: &str, protocols: &str, ciphers: &str) -> Result<(Policy, Vec<String>), String> {
    let mut notes = Vec::new();
    let (tls12, tls13) = versions(side, protocols, &mut notes)?;
    let mut versions = Vec::new();
    if tls13 {
        versions.push(&rustls::version::TLS13);
    }
    if tls12 {
        versions.push(&rustls::version::TLS12);
    }
    let chosen = tls12_ciphers(side, ciphers)?;
    if tls12 && !tls13 && chosen.is_empty() {
        return Err(format!(
            "{side}_ciphers = \"{ciphers}\" selects none of the TLS 1.2 suites rustls has ({}), and {side}_protocols allows only TLS 1.2",
            tls12_suites().map(|s| s.openssl).join(", ")
        ));
    }
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|s| match s {
        SupportedCipherSuite::Tls13(_) => tls13,
        SupportedCipherSuite::Tls12(_) => tls12 && chosen.iter().any(|c| c.suite() == s.suite()),
    });
    Ok((Policy { versions, provider }, notes))
}

/// (TLS 1.2 allowed, TLS 1.3 allowed) from libtls syntax: versions and shortcuts
/// separated by commas, colons or spaces, `!` to take one away.
fn versions(side: &str, protocols: &str, notes: &mut Vec<String>) -> Result<(bool, bool), String> {
    let (mut tls12, mut tls13) = (false, false);
    let mut old_asked = false;
    let words: Vec<&str> = protocols
        .split([',', ':', ' ', '\t'])
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return Ok((true, true));
    }
    for word in words {
        let (negate, name) = match word.strip_prefix('!') {
            Some(n) => (true, n),
            None => (false, word),
        };
        let (v12, v13, old) = match name.to_ascii_lowercase().as_str() {
            "all" | "legacy" => (true, true, false),
            "secure" | "default" => (true, true, false),
            "tlsv1.3" => (false, true, false),
            "tlsv1.2" => (true, false, false),
            "tlsv1.0" | "tlsv1.1" | "tlsv1" => (false, false, true),
            _ => {
                return Err(format!(
                    "{side}_protocols: unknown protocol \"{word}\" (tlsv1.0, tlsv1.1, tlsv1.2, tlsv1.3, all, secure, legacy)"
                ))
            }
        };
        if negate {
            tls12 &= !v12;
            tls13 &= !v13;
        } else {
            tls12 |= v12;
            tls13 |= v13;
            old_asked |= old;
        }
    }
    if old_asked {
        notes.push(format!(
            "{side}_protocols = \"{protocols}\": TLS 1.0 and 1.1 are never offered (rustls does not implement them)"
        ));
    }
    if !tls12 && !tls13 {
        return Err(format!(
            "{side}_protocols = \"{protocols}\" leaves no protocol Sluice can offer: allow tlsv1.2 or tlsv1.3"
        ));
    }
    Ok((tls12, tls13))
}

/// The TLS 1.2 suites an OpenSSL cipher string selects: PgBouncer's shortcuts select
/// all of them; otherwise words joined by `:` (or `,` / space), `+` inside a word for
/// "all of these", and `!` / `-` to remove. Unknown words are errors, so a typo never
/// leaves a different set than intended.
fn tls12_ciphers(side: &str, ciphers: &str) -> Result<Vec<SupportedCipherSuite>, String> {
    let all = tls12_suites();
    let shortcut = [
        "default", "secure", "compat", "legacy", "insecure", "all", "normal", "fast", "",
    ];
    if shortcut.contains(&ciphers.trim().to_ascii_lowercase().as_str()) {
        return Ok(all.iter().map(|s| s.suite).collect());
    }
    let mut chosen: Vec<bool> = vec![false; all.len()];
    let mut removed: Vec<bool> = vec![false; all.len()];
    for word in ciphers.split([':', ',', ' ']).filter(|w| !w.is_empty()) {
        if word.starts_with('@') {
            continue; // @STRENGTH, @SECLEVEL=n: ordering and levels; rustls orders itself.
        }
        let (op, expr) = match word.as_bytes()[0] {
            b'!' | b'-' => ('-', &word[1..]),
            b'+' => ('+', &word[1..]),
            _ => ('=', word),
        };
        let parts: Vec<&str> = expr.split('+').collect();
        if parts.iter().any(|p| ABSENT.contains(p)) {
            // Selects nothing rustls has (a removal of it is a no-op).
            continue;
        }
        let matching: Vec<bool> = all.iter().map(|s| parts.iter().all(|p| s.selected_by(p))).collect();
        if !matching.iter().any(|m| *m) {
            return Err(format!(
                "{side}_ciphers: \"{expr}\" names no cipher Sluice knows; use OpenSSL names ({}), keywords such as HIGH or ECDHE+AESGCM, or PgBouncer's shortcuts (default, secure, normal, fast, compat, legacy, all)",
                all.iter().map(|s| s.openssl).collect::<Vec<_>>().join(", ")
            ));
        }
        for (i, m) in matching.iter().enumerate() {
            if *m {
                match op {
                    '-' => removed[i] = true,
                    // '+' moves ciphers to the end in OpenSSL: order only.
                    '+' => {}
                    _ => chosen[i] = true,
                }
            }
        }
    }
    Ok(all
        .iter()
        .enumerate()
        .filter(|(i, _)| chosen[*i] && !removed[*i])
        .map(|(_, s)| s.suite)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suites(p: &Policy) -> Vec<String> {
        p.provider
            .cipher_suites
            .iter()
            .filter_map(|s| s.suite().as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn pgbouncer_defaults_offer_everything_rustls_has() {
        let (p, notes) = policy("client_tls", "secure", "fast").unwrap();
        assert_eq!(p.versions.len(), 2);
        assert_eq!(p.provider.cipher_suites.len(), 9);
        assert!(notes.is_empty());
        let (p, notes) = policy("client_tls", "all", "HIGH:!aNULL:!MD5").unwrap();
        assert_eq!(p.provider.cipher_suites.len(), 9);
        assert!(notes.is_empty(), "the shortcut all does not ask for 1.0 by name");
    }

    #[test]
    fn versions_and_names_narrow_the_offer() {
        let (p, _) = policy("client_tls", "tlsv1.3", "fast").unwrap();
        assert_eq!(p.versions, vec![&rustls::version::TLS13]);
        assert!(suites(&p).iter().all(|s| s.starts_with("TLS13_")), "{:?}", suites(&p));
        let (p, _) = policy(
            "server_tls",
            "tlsv1.2",
            "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384",
        )
        .unwrap();
        assert_eq!(p.versions, vec![&rustls::version::TLS12]);
        assert_eq!(
            suites(&p),
            [
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            ]
        );
        let (p, _) = policy("client_tls", "secure,!tlsv1.3", "ECDHE+AESGCM:!aECDSA").unwrap();
        assert_eq!(suites(&p).len(), 2);
        let (_, notes) = policy("client_tls", "tlsv1.1,tlsv1.2", "fast").unwrap();
        assert!(notes[0].contains("never offered"), "{notes:?}");
    }

    #[test]
    fn impossible_or_mistyped_settings_are_errors() {
        assert!(policy("client_tls", "tlsv1.0", "fast")
            .unwrap_err()
            .contains("no protocol"));
        assert!(policy("client_tls", "tls13", "fast")
            .unwrap_err()
            .contains("unknown protocol"));
        assert!(policy("client_tls", "secure", "ECDHE-RSA-AES128-SHA256X")
            .unwrap_err()
            .contains("names no cipher"));
        assert!(policy("server_tls", "tlsv1.2", "ALL:!ECDHE")
            .unwrap_err()
            .contains("selects none"));
    }
}
