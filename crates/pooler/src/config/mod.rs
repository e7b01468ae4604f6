//! Configuration: PgBouncer's setting names, defaults and semantics.
//!
//! Two file formats reach the same [`Config`]: Sluice's TOML ([`toml_file`]) and
//! PgBouncer's ini ([`ini`], with `%include` and a userlist.txt `auth_file`). Both are
//! first read into [`RawConfig`] (values plus where they came from), checked against
//! the known keys, then typed by figment, with environment variables on top ([`env`]:
//! the PgBouncer images' names and `SLUICE_*`). With no file at all, the environment
//! alone makes the configuration ([`load_env_only`]).

pub mod connstr;
pub mod convert;
pub mod env;
pub mod ini;
pub mod keys;
pub mod lanes;
pub mod toml_file;
pub mod userlist;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::providers::Serialized;
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// PgBouncer's default: a server is linked for the client's whole session.
    #[default]
    Session,
    /// A server is linked for one transaction and released at ReadyForQuery 'I'.
    Transaction,
    /// Accepted for compatibility; behaves as transaction mode with autocommit checks off.
    Statement,
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        })
    }
}

/// PgBouncer's `client_tls_sslmode` / `server_tls_sslmode`, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    #[default]
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::Disable => "disable",
            TlsMode::Allow => "allow",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum AuthType {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[default]
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "plain")]
    Plain,
    #[serde(rename = "trust")]
    Trust,
    /// PgBouncer's `any`: any user name, no password.
    #[serde(rename = "any")]
    Any,
    /// A TLS client certificate whose common name is the user name.
    #[serde(rename = "cert")]
    Cert,
    /// Per connection, from `auth_hba_file` (pg_hba.conf format).
    #[serde(rename = "hba")]
    Hba,
}

impl fmt::Display for AuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthType::ScramSha256 => "scram-sha-256",
            AuthType::Md5 => "md5",
            AuthType::Plain => "plain",
            AuthType::Trust => "trust",
            AuthType::Any => "any",
            AuthType::Cert => "cert",
            AuthType::Hba => "hba",
        })
    }
}

/// One `[databases]` entry: where a client-visible database really lives.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    /// Host name, IP address, or a directory holding PostgreSQL's Unix socket.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// Real database name (default: the entry's name).
    pub dbname: Option<String>,
    /// Forced server user: every client of this database uses it.
    pub user: Option<String>,
    pub password: Option<String>,
    pub pool_size: Option<u32>,
    pub min_pool_size: Option<u32>,
    /// PgBouncer's older name for `reserve_pool_size`.
    pub reserve_pool: Option<u32>,
    pub reserve_pool_size: Option<u32>,
    pub pool_mode: Option<PoolMode>,
    pub max_db_connections: Option<u32>,
    pub connect_query: Option<String>,
    /// auth_query runs as this user for this database's logins (overrides the global).
    pub auth_user: Option<String>,
    /// The database auth_query runs in for this database's logins.
    pub auth_dbname: Option<String>,
    /// This database's own auth_query (PgBouncer 1.22+).
    pub auth_query: Option<String>,
    pub application_name: Option<String>,
    pub client_encoding: Option<String>,
    pub datestyle: Option<String>,
    pub timezone: Option<String>,
    pub server_lifetime: Option<f64>,
}

/// One `[users]` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserConfig {
    /// Client password (plaintext, md5 or SCRAM secret). Sluice's addition for TOML;
    /// `auth_file` entries take precedence.
    pub password: Option<String>,
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<u32>,
    pub reserve_pool_size: Option<u32>,
    pub max_user_connections: Option<u32>,
}

/// The effective configuration. Field names are PgBouncer's; times are in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub listen_addr: String,
    pub listen_port: u16,
    pub unix_socket_dir: String,
    pub unix_socket_mode: String,
    pub user: Option<String>,
    pub logfile: Option<String>,
    pub pidfile: Option<String>,
    pub pool_mode: PoolMode,
    pub max_client_conn: u32,
    pub default_pool_size: u32,
    pub min_pool_size: u32,
    pub reserve_pool_size: u32,
    pub reserve_pool_timeout: f64,
    pub max_db_connections: u32,
    pub max_user_connections: u32,
    pub ignore_startup_parameters: String,
    pub auth_type: AuthType,
    pub auth_file: Option<String>,
    /// pg_hba.conf-style rules for `auth_type = hba`.
    pub auth_hba_file: Option<String>,
    /// Users not in auth_file are looked up with `auth_query`, run as this user.
    pub auth_user: Option<String>,
    pub auth_query: String,
    /// The database auth_query runs in (default: the one the client logs in to).
    pub auth_dbname: Option<String>,
    /// Sluice's own: seconds an auth_query answer serves logins (0: ask every time).
    pub auth_query_cache_ttl: f64,
    /// TLS to clients: SSLRequests are accepted unless `disable`; `require` and
    /// stronger refuse plaintext TCP logins; `verify-ca` / `verify-full` also ask for
    /// a client certificate signed by `client_tls_ca_file`.
    pub client_tls_sslmode: TlsMode,
    pub client_tls_key_file: Option<String>,
    pub client_tls_cert_file: Option<String>,
    pub client_tls_ca_file: Option<String>,
    /// TLS versions offered to clients (libtls syntax: `secure`, `tlsv1.3`, ...).
    pub client_tls_protocols: String,
    /// TLS 1.2 cipher suites offered to clients (OpenSSL syntax or a shortcut).
    pub client_tls_ciphers: String,
    /// TLS to PostgreSQL: `allow`/`prefer` use it when the server offers it,
    /// `require` insists (no certificate check), `verify-ca` checks the chain against
    /// `server_tls_ca_file`, `verify-full` also the host name.
    pub server_tls_sslmode: TlsMode,
    pub server_tls_ca_file: Option<String>,
    /// A client certificate for the server (both or neither).
    pub server_tls_cert_file: Option<String>,
    pub server_tls_key_file: Option<String>,
    pub server_tls_protocols: String,
    pub server_tls_ciphers: String,
    pub admin_users: String,
    pub stats_users: String,
    pub log_connections: bool,
    pub log_disconnections: bool,
    pub log_pooler_errors: bool,
    /// Log the averages every stats_period.
    pub log_stats: bool,
    /// Seconds between SHOW STATS averages (and log_stats lines).
    pub stats_period: f64,
    pub verbose: u8,
    /// Idle seconds after which a server is checked with server_check_query before
    /// reuse (0: always; negative: never).
    pub server_check_delay: f64,
    pub server_check_query: String,
    /// Extra parameters tracked per client and synced to servers (comma-separated).
    pub track_extra_parameters: String,
    /// Named prepared statements kept per server connection in transaction mode.
    pub max_prepared_statements: u32,
    /// Sluice's own: address of the HTTP listener for /metrics, /health and /ready
    /// ("" = off).
    pub metrics_addr: String,
    pub server_lifetime: f64,
    pub server_idle_timeout: f64,
    pub server_connect_timeout: f64,
    pub server_login_retry: f64,
    pub client_login_timeout: f64,
    pub query_wait_timeout: f64,
    pub query_wait_notify: f64,
    pub query_timeout: f64,
    pub client_idle_timeout: f64,
    pub idle_transaction_timeout: f64,
    pub transaction_timeout: f64,
    pub cancel_wait_timeout: f64,
    pub server_reset_query: String,
    pub server_reset_query_always: bool,
    pub max_packet_size: u32,
    pub pkt_buf: u32,
    pub listen_backlog: u32,
    pub tcp_keepalive: bool,
    /// Sluice's overload protection: `auto` or `off` (PgBouncer's single queue).
    pub overload_protection: String,
    /// Share of a pool's servers the automatic `slow` lane may hold.
    pub slow_share: f64,
    /// Seconds a kind of transaction holds a server before it counts as slow.
    pub slow_threshold: f64,
    /// Clients that may wait per pool lane (0: no bound).
    pub max_queue_length: u32,
    pub databases: BTreeMap<String, DatabaseConfig>,
    pub users: BTreeMap<String, UserConfig>,
    pub lanes: BTreeMap<String, lanes::LaneConfig>,
}

impl Default for Config {
    /// PgBouncer's defaults.
    fn default() -> Self {
        Config {
            listen_addr: String::new(),
            listen_port: 6432,
            unix_socket_dir: "/tmp".into(),
            unix_socket_mode: "0777".into(),
            user: None,
            logfile: None,
            pidfile: None,
            pool_mode: PoolMode::Session,
            max_client_conn: 100,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: 5.0,
            max_db_connections: 0,
            max_user_connections: 0,
            ignore_startup_parameters: String::new(),
            auth_type: AuthType::Md5,
            auth_file: None,
            auth_hba_file: None,
            auth_user: None,
            auth_query: "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin".into(),
            auth_dbname: None,
            auth_query_cache_ttl: 60.0,
            client_tls_sslmode: TlsMode::Disable,
            client_tls_key_file: None,
            client_tls_cert_file: None,
            client_tls_ca_file: None,
            client_tls_protocols: "secure".into(),
            client_tls_ciphers: "fast".into(),
            server_tls_sslmode: TlsMode::Disable,
            server_tls_ca_file: None,
            server_tls_cert_file: None,
            server_tls_key_file: None,
            server_tls_protocols: "secure".into(),
            server_tls_ciphers: "fast".into(),
            admin_users: String::new(),
            stats_users: String::new(),
            log_connections: true,
            log_disconnections: true,
            log_pooler_errors: true,
            log_stats: true,
            stats_period: 60.0,
            verbose: 0,
            server_check_delay: 30.0,
            server_check_query: "select 1".into(),
            track_extra_parameters: "IntervalStyle".into(),
            max_prepared_statements: 200,
            metrics_addr: String::new(),
            server_lifetime: 3600.0,
            server_idle_timeout: 600.0,
            server_connect_timeout: 15.0,
            server_login_retry: 15.0,
            client_login_timeout: 60.0,
            query_wait_timeout: 120.0,
            query_wait_notify: 5.0,
            query_timeout: 0.0,
            client_idle_timeout: 0.0,
            idle_transaction_timeout: 0.0,
            transaction_timeout: 0.0,
            cancel_wait_timeout: 10.0,
            server_reset_query: "DISCARD ALL".into(),
            server_reset_query_always: false,
            max_packet_size: 2_147_483_647,
            pkt_buf: 4096,
            listen_backlog: 128,
            tcp_keepalive: true,
            overload_protection: "auto".into(),
            slow_share: 2.0 / 3.0,
            slow_threshold: 0.5,
            max_queue_length: 0,
            databases: BTreeMap::new(),
            users: BTreeMap::new(),
            lanes: BTreeMap::new(),
        }
    }
}

/// Converts a PgBouncer time setting (seconds; 0 = off) into a duration.
pub fn seconds(s: f64) -> Option<Duration> {
    (s > 0.0 && s.is_finite()).then(|| Duration::from_secs_f64(s))
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: {message}")]
    At { origin: Origin, message: String },
    #[error("{file}: {message}")]
    File { file: PathBuf, message: String },
    #[error("{0}")]
    Other(String),
}

impl ConfigError {
    pub fn at(origin: &Origin, message: impl Into<String>) -> Self {
        ConfigError::At {
            origin: origin.clone(),
            message: message.into(),
        }
    }
}

/// A config file read but not yet typed: each value with where it came from.
#[derive(Debug, Default)]
pub struct RawConfig {
    pub settings: Vec<(String, toml::Value, Origin)>,
    pub databases: Vec<RawSection>,
    pub users: Vec<RawSection>,
    pub lanes: Vec<RawSection>,
    /// Users and secrets read from an ini's `auth_file` happen later; TOML may carry them.
    pub files: Vec<PathBuf>,
}

/// One `[databases]` or `[users]` entry.
#[derive(Debug)]
pub struct RawSection {
    pub name: String,
    pub origin: Origin,
    pub entries: Vec<(String, toml::Value, Origin)>,
}

impl RawConfig {
    /// Rejects unknown keys, naming the file and line.
    fn check_keys(&self) -> Result<(), ConfigError> {
        for (key, _, origin) in &self.settings {
            if !keys::SETTINGS.contains(&key.as_str()) {
                return Err(ConfigError::at(origin, format!("unknown setting '{key}'")));
            }
        }
        for (sections, known, what) in [
            (&self.databases, keys::DATABASE, "database"),
            (&self.users, keys::USER, "user"),
            (&self.lanes, lanes::KEYS, "lane"),
        ] {
            for s in sections {
                for (key, _, origin) in &s.entries {
                    if !known.contains(&key.as_str()) {
                        return Err(ConfigError::at(
                            origin,
                            format!("unknown {what} parameter '{key}' in entry '{}'", s.name),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn origin_of(&self, key_path: &[String]) -> Option<&Origin> {
        match key_path {
            [k] => self.settings.iter().find(|(n, ..)| n == k).map(|(.., o)| o),
            [section, name, rest @ ..] => {
                let list = match section.as_str() {
                    "databases" => &self.databases,
                    "users" => &self.users,
                    "lanes" => &self.lanes,
                    _ => return None,
                };
                let s = list.iter().find(|s| &s.name == name)?;
                match rest {
                    [k, ..] => s.entries.iter().find(|(n, ..)| n == k).map(|(.., o)| o),
                    [] => Some(&s.origin),
                }
            }
            _ => None,
        }
    }

    fn to_table(&self) -> toml::Table {
        let mut top = toml::Table::new();
        for (k, v, _) in &self.settings {
            top.insert(k.clone(), v.clone());
        }
        for (key, sections) in [
            ("databases", &self.databases),
            ("users", &self.users),
            ("lanes", &self.lanes),
        ] {
            let mut t = toml::Table::new();
            for s in sections {
                let mut entry = toml::Table::new();
                for (k, v, _) in &s.entries {
                    entry.insert(k.clone(), v.clone());
                }
                t.insert(s.name.clone(), toml::Value::Table(entry));
            }
            top.insert(key.into(), toml::Value::Table(t));
        }
        top
    }
}

/// A loaded configuration with everything needed to run it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub path: PathBuf,
    /// Client secrets from `auth_file` (and TOML `[users]` passwords).
    pub secrets: BTreeMap<String, String>,
    /// Settings present in the file that Sluice does not act on yet.
    pub ignored: Vec<(String, Origin)>,
    /// Where each setting's value came from ("file:line", "env NAME"); absent = default.
    pub sources: BTreeMap<String, String>,
    /// Environment variables that conflict or look mistyped, for the log.
    pub warnings: Vec<String>,
    /// Overload protection's lanes, shared by every pool.
    pub lanes: Arc<crate::overload::LaneSet>,
    /// TLS to clients (None: `client_tls_sslmode = disable`), certificates read at load.
    pub client_tls: Option<Arc<crate::tls::ClientTls>>,
    /// TLS to PostgreSQL (None: `server_tls_sslmode = disable`).
    pub server_tls: Option<Arc<crate::tls::ServerTls>>,
    /// `auth_hba_file`'s rules, read at load when `auth_type = hba`.
    pub hba: Option<Arc<crate::auth::hba::HbaRules>>,
}

/// Where a config comes from: the file, and the environment that overrides it.
pub struct Source<'a> {
    pub path: &'a Path,
    /// Environment variables (name, value); `SLUICE_*` override file settings.
    pub env: Vec<(String, String)>,
}

/// Loads a TOML or ini file (by extension: `.ini` is PgBouncer's format).
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    load_from(Source {
        path,
        env: std::env::vars().collect(),
    })
}

pub fn load_from(source: Source<'_>) -> Result<Loaded, ConfigError> {
    let path = source.path;
    let is_ini = path.extension().map(|e| e.eq_ignore_ascii_case("ini")).unwrap_or(false);
    let raw = if is_ini {
        ini::read(path)?
    } else {
        toml_file::read(path)?
    };
    raw.check_keys()?;
    build(raw, path, &source.env, false)
}

/// The configuration from the environment alone (no file): the PgBouncer container
/// images' variables ([`env`]). `path` names where a reload would look (nothing is
/// read from it).
pub fn load_env_only(env: Vec<(String, String)>) -> Result<Loaded, ConfigError> {
    build(RawConfig::default(), Path::new(ENV_ONLY), &env, true)
}

/// The `path` of a configuration made from the environment alone.
pub const ENV_ONLY: &str = "<environment>";

/// Types a read file with the environment on top.
fn build(raw: RawConfig, path: &Path, env: &[(String, String)], env_only: bool) -> Result<Loaded, ConfigError> {
    let overlay = env::overlay(env, env_only)?;
    let mut sources: BTreeMap<String, String> = raw
        .settings
        .iter()
        .map(|(k, _, o)| (k.clone(), o.to_string()))
        .collect();
    let mut figment =
        Figment::from(Serialized::defaults(Config::default())).merge(Serialized::defaults(raw.to_table()));
    for (key, value, from) in &overlay.settings {
        figment = figment.merge(Serialized::global(key, value.as_str()));
        sources.insert(key.clone(), from.clone());
    }
    // SLUICE_DATABASES__APP__HOST=db: one key of a database (or user) entry.
    for (k, v) in env {
        let Some(name) = k.strip_prefix("SLUICE_").filter(|n| n.contains("__")) else {
            continue;
        };
        let key = name.to_ascii_lowercase().replace("__", ".");
        figment = figment.merge(Serialized::global(&key, v.as_str()));
        sources.insert(key.clone(), format!("env {k}"));
    }
    let mut config: Config = figment.extract_lossy().map_err(|e| {
        let origin = raw.origin_of(&e.path);
        let message = e.to_string();
        match (origin, e.path.first().and_then(|k| sources.get(k))) {
            (Some(o), _) => ConfigError::at(o, message),
            (None, Some(from)) if from.starts_with("env") => ConfigError::Other(format!("{from}: {message}")),
            _ => ConfigError::File {
                file: path.to_path_buf(),
                message,
            },
        }
    })?;
    for (name, entry, from) in &overlay.databases {
        config.databases.insert(name.clone(), entry.clone());
        sources.insert(format!("databases.{name}"), from.clone());
    }
    // PgBouncer: an empty `pidfile =` or `logfile =` means none (its test suite and
    // some packaged configs write them so).
    for file in [&mut config.pidfile, &mut config.logfile] {
        if file.as_deref().is_some_and(|f| f.trim().is_empty()) {
            *file = None;
        }
    }
    validate(&config, path)?;
    let lanes = lanes::build(&config).map_err(|message| ConfigError::File {
        file: path.to_path_buf(),
        message,
    })?;
    let client_tls = crate::tls::client(&config, path).map_err(|message| ConfigError::File {
        file: path.to_path_buf(),
        message,
    })?;
    let server_tls = crate::tls::server(&config, path).map_err(|message| ConfigError::File {
        file: path.to_path_buf(),
        message,
    })?;
    let hba = hba_rules(&config, path).map_err(|message| ConfigError::File {
        file: path.to_path_buf(),
        message,
    })?;

    let ignored = raw
        .settings
        .iter()
        .filter(|(k, ..)| !keys::IMPLEMENTED.contains(&k.as_str()))
        .map(|(k, _, o)| (k.clone(), o.clone()))
        .collect();

    let mut secrets = BTreeMap::new();
    for (name, user) in &config.users {
        if let Some(p) = &user.password {
            secrets.insert(name.clone(), p.clone());
        }
    }
    if let Some(auth_file) = &config.auth_file {
        let auth_path = resolve(path, auth_file);
        for (user, secret) in userlist::read(&auth_path)? {
            secrets.insert(user, secret);
        }
    }
    for (user, password) in overlay.secrets {
        secrets.insert(user, password);
    }
    Ok(Loaded {
        config,
        path: path.to_path_buf(),
        secrets,
        ignored,
        sources,
        warnings: overlay.warnings,
        lanes,
        client_tls,
        server_tls,
        hba,
    })
}

/// `auth_hba_file`'s rules when `auth_type = hba` (None otherwise).
pub fn hba_rules(config: &Config, path: &Path) -> Result<Option<Arc<crate::auth::hba::HbaRules>>, String> {
    if config.auth_type != AuthType::Hba {
        return Ok(None);
    }
    let file = config
        .auth_hba_file
        .as_deref()
        .filter(|f| !f.is_empty())
        .ok_or("auth_type = hba needs auth_hba_file (a file in pg_hba.conf format)")?;
    let rules = crate::auth::hba::HbaRules::load(&resolve(path, file))?;
    Ok(Some(Arc::new(rules)))
}

/// Resolves a path named in a config file. PgBouncer takes relative paths from the
/// working directory; Sluice does too, but falls back to the config file's folder.
pub fn resolve(config_path: &Path, name: &str) -> PathBuf {
    let p = PathBuf::from(name);
    if p.is_absolute() || p.exists() {
        return p;
    }
    config_path.parent().map(|dir| dir.join(&p)).unwrap_or(p)
}

pub(crate) fn validate(c: &Config, path: &Path) -> Result<(), ConfigError> {
    let err = |m: String| ConfigError::File {
        file: path.to_path_buf(),
        message: m,
    };
    if c.listen_addr.is_empty() && c.unix_socket_dir.is_empty() {
        return Err(err(
            "neither listen_addr nor unix_socket_dir is set: Sluice would accept no connections".into(),
        ));
    }
    if u32::from_str_radix(c.unix_socket_mode.trim_start_matches("0o"), 8).is_err() {
        return Err(err(format!(
            "unix_socket_mode '{}' is not an octal file mode",
            c.unix_socket_mode
        )));
    }
    for (t, v) in [
        ("reserve_pool_timeout", c.reserve_pool_timeout),
        ("query_wait_timeout", c.query_wait_timeout),
        ("server_connect_timeout", c.server_connect_timeout),
        ("client_login_timeout", c.client_login_timeout),
        ("server_lifetime", c.server_lifetime),
        ("server_idle_timeout", c.server_idle_timeout),
        ("server_login_retry", c.server_login_retry),
        ("query_timeout", c.query_timeout),
        ("query_wait_notify", c.query_wait_notify),
        ("client_idle_timeout", c.client_idle_timeout),
        ("idle_transaction_timeout", c.idle_transaction_timeout),
        ("transaction_timeout", c.transaction_timeout),
        ("cancel_wait_timeout", c.cancel_wait_timeout),
        ("stats_period", c.stats_period),
        ("auth_query_cache_ttl", c.auth_query_cache_ttl),
    ] {
        if !(v >= 0.0 && v.is_finite()) {
            return Err(err(format!("{t} must be a number of seconds >= 0, got {v}")));
        }
    }
    if c.max_packet_size < 1024 {
        return Err(err("max_packet_size must be at least 1024".into()));
    }
    Ok(())
}

/// Splits a PgBouncer comma-separated list (`admin_users = a, b`).
pub fn list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty())
}

#[cfg(test)]
mod tests;
