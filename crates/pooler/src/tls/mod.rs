//! TLS to clients (rustls): PgBouncer's `client_tls_*` settings turned into an
//! acceptor. Built when the config loads, so certificates and keys are re-read on
//! every RELOAD / SIGHUP and a bad file is refused like any other config error;
//! connections that already did their handshake keep their session.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub mod policy;

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
    let certs = read_certs("client_tls_cert_file", &cert_file)?;
    let key = read_key("client_tls_key_file", &key_file)?;
    let policy = policy::build("client_tls", &config.client_tls_protocols, &config.client_tls_ciphers)?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(policy.provider))
        .with_protocol_versions(&policy.versions)
        .map_err(|e| format!("client_tls_protocols / client_tls_ciphers: {e}"))?;
    let builder = if mode >= TlsMode::VerifyCa {
        let ca_file = resolve(config_path, &need("client_tls_ca_file", &config.client_tls_ca_file)?);
        let roots = read_roots("client_tls_ca_file", &ca_file)?;
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

/// The certificate chain in PEM file `path` (setting `key`), at least one.
fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{key} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{key} {}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// The private key in PEM file `path` (PKCS#8, PKCS#1 or SEC1).
fn read_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{key} {}: {e}", path.display()))
}

/// The CA certificates in PEM file `path`, as trust roots.
fn read_roots(key: &str, path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(key, path)? {
        roots.add(ca).map_err(|e| format!("{key} {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// TLS to PostgreSQL: PgBouncer's `server_tls_*` settings turned into a connector.
#[derive(Clone)]
pub struct ServerTls {
    pub mode: TlsMode,
    pub connector: tokio_rustls::TlsConnector,
    /// The settings and file contents this was built from: two builds from the same
    /// files are equal, so a reload that changes nothing keeps the pools' servers.
    identity: u64,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        self.mode == other.mode && self.identity == other.identity
    }
}

impl ServerTls {
    /// A server answering 'N' to the SSLRequest is refused (else plaintext is used).
    pub fn required(&self) -> bool {
        self.mode >= TlsMode::Require
    }

    /// Does the handshake on `tcp` for `host` (SNI for names; verify-full checks it).
    pub async fn connect(
        &self,
        host: &str,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("server name {host}: {e}")))?;
        self.connector.connect(name, tcp).await
    }
}

/// The connector for `config`, or None with `server_tls_sslmode = disable`.
/// `require` and weaker encrypt without checking the certificate (as libpq and
/// PgBouncer do); `verify-ca` checks the chain against `server_tls_ca_file`;
/// `verify-full` also the host name.
pub fn server(config: &Config, config_path: &Path) -> Result<Option<Arc<ServerTls>>, String> {
    use std::hash::{Hash, Hasher};
    let mode = config.server_tls_sslmode;
    if mode == TlsMode::Disable {
        return Ok(None);
    }
    let mut identity = std::collections::hash_map::DefaultHasher::new();
    mode.hash(&mut identity);
    (&config.server_tls_protocols, &config.server_tls_ciphers).hash(&mut identity);
    let mut read = |key: &str, name: &Option<String>| -> Result<Option<std::path::PathBuf>, String> {
        let Some(name) = name.as_deref().filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        let path = resolve(config_path, name);
        let bytes = std::fs::read(&path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
        bytes.hash(&mut identity);
        Ok(Some(path))
    };
    let ca_file = read("server_tls_ca_file", &config.server_tls_ca_file)?;
    let cert_file = read("server_tls_cert_file", &config.server_tls_cert_file)?;
    let key_file = read("server_tls_key_file", &config.server_tls_key_file)?;
    let policy = policy::build("server_tls", &config.server_tls_protocols, &config.server_tls_ciphers)?;
    let provider = Arc::new(policy.provider);
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&policy.versions)
        .map_err(|e| format!("server_tls_protocols / server_tls_ciphers: {e}"))?;
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = if mode >= TlsMode::VerifyCa {
        let ca_file = ca_file.ok_or_else(|| format!("server_tls_sslmode = {mode} needs server_tls_ca_file"))?;
        let roots = read_roots("server_tls_ca_file", &ca_file)?;
        let webpki =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| format!("server_tls_ca_file {}: {e}", ca_file.display()))?;
        if mode == TlsMode::VerifyFull {
            webpki
        } else {
            Arc::new(verify::ChainOnly(webpki))
        }
    } else {
        Arc::new(verify::EncryptOnly(provider))
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let client = match (cert_file, key_file) {
        (Some(cert_file), Some(key_file)) => {
            let certs = read_certs("server_tls_cert_file", &cert_file)?;
            let key = read_key("server_tls_key_file", &key_file)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("server_tls_cert_file / server_tls_key_file do not make a pair: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("server_tls_cert_file and server_tls_key_file go together".into()),
    };
    Ok(Some(Arc::new(ServerTls {
        mode,
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        identity: identity.finish(),
    })))
}

/// The two certificate checks weaker than rustls' own (which is `verify-full`).
mod verify {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::client::WebPkiServerVerifier;
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

    /// `require` / `prefer` / `allow`: encryption, no certificate check (libpq's and
    /// PgBouncer's meaning). The handshake's signatures are still verified.
    #[derive(Debug)]
    pub struct EncryptOnly(pub Arc<CryptoProvider>);

    impl ServerCertVerifier for EncryptOnly {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// `verify-ca`: the chain must lead to the CA; the host name is not checked.
    #[derive(Debug)]
    pub struct ChainOnly(pub Arc<WebPkiServerVerifier>);

    impl ServerCertVerifier for ChainOnly {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            match self
                .0
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                Err(Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }
}
