//! TLS to clients (rustls): PgBouncer's `client_tls_*` settings turned into an
//! acceptor. Built when the config loads, so certificates and keys are re-read on
//! every RELOAD / SIGHUP and a bad file is refused like any other config error;
//! connections that already did their handshake keep their session.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{resolve, Config, TlsMode};

/// What the listener does with clients' SSLRequests.
#[derive(Clone)]
pub struct ClientTls {
    pub mode: TlsMode,
    pub acceptor: TlsAcceptor,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Plaintext TCP logins are refused (Unix sockets stay allowed, as in PgBouncer).
    pub fn required(&self) -> bool {
        self.mode >= TlsMode::Require
    }
}

/// The acceptor for `config`, or None with `client_tls_sslmode = disable`. Errors say
/// which setting and file are wrong.
pub fn client(config: &Config, config_path: &Path) -> Result<Option<Arc<ClientTls>>, String> {
    if config.client_tls_sslmode == TlsMode::Disable {
        return Ok(None);
    }
    let mode = config.client_tls_sslmode;
    let need = |key: &str, v: &Option<String>| {
        v.clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("client_tls_sslmode = {mode} needs {key}"))
    };
    let cert_file = resolve(
        config_path,
        &need("client_tls_cert_file", &config.client_tls_cert_file)?,
    );
    let key_file = resolve(config_path, &need("client_tls_key_file", &config.client_tls_key_file)?);
    let certs = CertificateDer::pem_file_iter(&cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("client_tls_cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "client_tls_cert_file {}: no certificate in it",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .map_err(|e| format!("client_tls_key_file {}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?;
    let builder = if mode >= TlsMode::VerifyCa {
        let ca_file = resolve(config_path, &need("client_tls_ca_file", &config.client_tls_ca_file)?);
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&ca_file)
            .map_err(|e| format!("client_tls_ca_file {}: {e}", ca_file.display()))?
        {
            let ca = ca.map_err(|e| format!("client_tls_ca_file {}: {e}", ca_file.display()))?;
            roots
                .add(ca)
                .map_err(|e| format!("client_tls_ca_file {}: {e}", ca_file.display()))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| format!("client_tls_ca_file {}: {e}", ca_file.display()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("client_tls_cert_file / client_tls_key_file do not make a pair: {e}"))?;
    // PostgreSQL 17's direct TLS negotiates ALPN "postgresql"; the SSLRequest path
    // offers it too (libpq 17 checks it when sent).
    server.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Some(Arc::new(ClientTls {
        mode,
        acceptor: TlsAcceptor::from(Arc::new(server)),
    })))
}
