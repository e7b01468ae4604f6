//! Configuration from environment variables, as the PgBouncer container images take it,
//! so a docker-compose sidecar switches to Sluice by changing its `image:` line.
//!
//! Settings, lowest precedence first (a later one wins, and a conflict is warned about):
//! 1. edoburu/pgbouncer: every PgBouncer setting upper-cased, no prefix
//!    (`POOL_MODE`, `DEFAULT_POOL_SIZE`, ...; not `USER`, which every shell sets);
//! 2. bitnami/pgbouncer: `PGBOUNCER_<SETTING>`, plus `PGBOUNCER_PORT`,
//!    `PGBOUNCER_BIND_ADDRESS`, `PGBOUNCER_USERLIST_FILE`;
//! 3. Sluice's own `SLUICE_<SETTING>`.
//!
//! The backend: `DATABASE_URL` (or comma-separated `DATABASE_URLS`), else `DB_HOST`,
//! `DB_PORT`, `DB_USER`, `DB_PASSWORD`, `DB_NAME` (edoburu), else `POSTGRESQL_HOST`,
//! `POSTGRESQL_PORT`, `POSTGRESQL_USERNAME`, `POSTGRESQL_PASSWORD`,
//! `POSTGRESQL_DATABASE`, `PGBOUNCER_DATABASE` (bitnami). Its user and password also
//! become a client login (the images write them to userlist.txt).
//!
//! Any of these may instead be given as `<NAME>_FILE`: a file holding the value
//! (Docker secrets).

use std::collections::BTreeMap;

use super::{keys, ConfigError, DatabaseConfig};

/// What the environment contributes.
#[derive(Debug, Default)]
pub struct Overlay {
    /// (setting, value, variable) in the order to apply (later wins).
    pub settings: Vec<(String, String, String)>,
    /// (entry name, entry, variables it came from).
    pub databases: Vec<(String, DatabaseConfig, String)>,
    /// Client logins: (user, password).
    pub secrets: Vec<(String, String)>,
    pub warnings: Vec<String>,
}

/// Which image's conventions the environment follows (for env-only defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// edoburu/pgbouncer: listens on 0.0.0.0:5432.
    Edoburu,
    /// bitnami/pgbouncer: listens on 0.0.0.0:6432.
    Bitnami,
}

/// Backend variables by family.
const EDOBURU_DB: &[&str] = &["DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME"];
const BITNAMI_DB: &[&str] = &[
    "POSTGRESQL_HOST",
    "POSTGRESQL_PORT",
    "POSTGRESQL_USERNAME",
    "POSTGRESQL_PASSWORD",
    "POSTGRESQL_DATABASE",
];
/// bitnami names that are not `PGBOUNCER_<setting>`.
const BITNAMI_EXTRA: &[(&str, Option<&str>)] = &[
    ("PGBOUNCER_PORT", Some("listen_port")),
    ("PGBOUNCER_BIND_ADDRESS", Some("listen_addr")),
    ("PGBOUNCER_USERLIST_FILE", Some("auth_file")),
    ("PGBOUNCER_DATABASE", None),
    ("PGBOUNCER_SET_DATABASE_USER", None),
    ("PGBOUNCER_SET_DATABASE_PASSWORD", None),
];

/// Variables read as values (and so also accepted as `<NAME>_FILE`).
fn is_known(name: &str) -> bool {
    let setting = |s: &str| keys::SETTINGS.iter().any(|k| k.eq_ignore_ascii_case(s));
    (name != "USER" && setting(name))
        || name.strip_prefix("PGBOUNCER_").is_some_and(setting)
        || name.strip_prefix("SLUICE_").is_some_and(setting)
        || ["DATABASE_URL", "DATABASE_URLS"].contains(&name)
        || EDOBURU_DB.contains(&name)
        || BITNAMI_DB.contains(&name)
        || BITNAMI_EXTRA.iter().any(|(n, _)| *n == name)
}

/// True when the environment names a backend: enough to run without a config file.
pub fn configures_backend(env: &[(String, String)]) -> bool {
    env.iter().any(|(k, _)| {
        let k = k.strip_suffix("_FILE").unwrap_or(k);
        ["DATABASE_URL", "DATABASE_URLS", "DB_HOST", "POSTGRESQL_HOST"].contains(&k)
    })
}

/// The conventions the environment follows.
pub fn flavor(env: &[(String, String)]) -> Flavor {
    let bitnami = env
        .iter()
        .any(|(k, _)| k.starts_with("PGBOUNCER_") || k.starts_with("POSTGRESQL_"));
    if bitnami {
        Flavor::Bitnami
    } else {
        Flavor::Edoburu
    }
}

/// Reads the environment. `env_only`: there is no config file, so a backend is
/// required and the images' listen defaults apply.
pub fn overlay(env: &[(String, String)], env_only: bool) -> Result<Overlay, ConfigError> {
    let mut out = Overlay::default();
    let vars = resolve_files(env, &mut out.warnings)?;
    let get = |name: &str| vars.get(name).map(|(v, _)| v.as_str());
    let source = |name: &str| vars.get(name).map(|(_, s)| s.clone()).unwrap_or_default();

    if env_only {
        let port = match flavor(env) {
            Flavor::Edoburu => "5432",
            Flavor::Bitnami => "6432",
        };
        out.settings
            .push(("listen_addr".into(), "0.0.0.0".into(), "container default".into()));
        out.settings
            .push(("listen_port".into(), port.into(), "container default".into()));
    }

    // Settings, lowest precedence first.
    for setting in keys::SETTINGS {
        let upper = setting.to_ascii_uppercase();
        let mut candidates: Vec<String> = Vec::new();
        if upper != "USER" {
            candidates.push(upper.clone());
        }
        candidates.extend(
            BITNAMI_EXTRA
                .iter()
                .filter(|(_, s)| *s == Some(setting))
                .map(|(n, _)| (*n).to_owned()),
        );
        candidates.push(format!("PGBOUNCER_{upper}"));
        candidates.push(format!("SLUICE_{upper}"));
        let set: Vec<&String> = candidates.iter().filter(|c| get(c).is_some()).collect();
        let distinct: std::collections::BTreeSet<&str> = set.iter().filter_map(|c| get(c)).collect();
        if distinct.len() > 1 {
            let listed: Vec<String> = set.iter().map(|c| format!("{c}={}", get(c).unwrap_or(""))).collect();
            out.warnings.push(format!(
                "{} all set {setting}; using {} (SLUICE_ > PGBOUNCER_ > unprefixed)",
                listed.join(", "),
                set.last().map(|s| s.as_str()).unwrap_or("")
            ));
        }
        for c in set {
            if let Some(v) = get(c) {
                out.settings.push(((*setting).to_owned(), v.to_owned(), source(c)));
            }
        }
    }

    // Unknown-looking variables of our families.
    for (k, _) in env {
        let name = k.strip_suffix("_FILE").filter(|s| is_known(s)).unwrap_or(k);
        let ours = ["SLUICE_", "PGBOUNCER_", "POSTGRESQL_"]
            .iter()
            .any(|p| name.starts_with(p));
        if ours && !is_known(name) && !name.contains("__") && name != "SLUICE_LOG" {
            out.warnings.push(format!(
                "environment variable {k} is not a setting Sluice knows; ignored (a typo?)"
            ));
        }
    }

    // The backend.
    let urls: Vec<String> = match (get("DATABASE_URLS"), get("DATABASE_URL")) {
        (Some(list), url) => {
            if url.is_some() {
                out.warnings
                    .push("both DATABASE_URLS and DATABASE_URL are set; using DATABASE_URLS".into());
            }
            list.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        }
        (None, Some(url)) => vec![url.to_owned()],
        (None, None) => Vec::new(),
    };
    if !urls.is_empty() {
        if get("DB_HOST").is_some() || get("POSTGRESQL_HOST").is_some() {
            out.warnings
                .push("DATABASE_URL is set: DB_* / POSTGRESQL_* backend variables are ignored".into());
        }
        let from = if get("DATABASE_URLS").is_some() {
            source("DATABASE_URLS")
        } else {
            source("DATABASE_URL")
        };
        for url in &urls {
            let b = parse_url(url).map_err(|e| ConfigError::Other(format!("{from}: {e}")))?;
            let alias = match (urls.len(), get("DB_NAME")) {
                (1, Some(name)) => name.to_owned(),
                _ => b.dbname.clone().unwrap_or_else(|| "*".into()),
            };
            out.add_backend(alias, b, from.clone());
        }
    } else if let Some(host) = get("DB_HOST") {
        let b = Backend {
            host: host.to_owned(),
            port: port(get("DB_PORT"), "DB_PORT")?,
            user: get("DB_USER").map(str::to_owned),
            password: get("DB_PASSWORD").map(str::to_owned),
            dbname: get("DB_NAME").map(str::to_owned),
        };
        let alias = b.dbname.clone().unwrap_or_else(|| "*".into());
        out.add_backend(alias, b, "env DB_*".into());
    } else if let Some(host) = get("POSTGRESQL_HOST") {
        let yes = |v: Option<&str>| v.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "yes" | "true" | "1"));
        let dbname = get("POSTGRESQL_DATABASE").unwrap_or("postgres").to_owned();
        let b = Backend {
            host: host.to_owned(),
            port: port(get("POSTGRESQL_PORT"), "POSTGRESQL_PORT")?,
            user: Some(get("POSTGRESQL_USERNAME").unwrap_or("postgres").to_owned()),
            password: get("POSTGRESQL_PASSWORD").map(str::to_owned),
            dbname: Some(dbname.clone()),
        };
        let alias = get("PGBOUNCER_DATABASE").unwrap_or(&dbname).to_owned();
        let (force_user, force_password) = (
            yes(get("PGBOUNCER_SET_DATABASE_USER")),
            yes(get("PGBOUNCER_SET_DATABASE_PASSWORD")),
        );
        let mut entry_backend = b.clone();
        if !force_user {
            entry_backend.user = None;
        }
        if !force_password {
            entry_backend.password = None;
        }
        out.databases
            .push((alias, entry_backend.entry(), "env POSTGRESQL_*".into()));
        // Clients log in as the PostgreSQL user with its password; the server login
        // uses the same secret from the userlist.
        if let (Some(u), Some(p)) = (b.user, b.password) {
            out.secrets.push((u, p));
        }
    } else if env_only {
        return Err(ConfigError::Other(
            "no config file, and the environment names no PostgreSQL: set DATABASE_URL (or DB_HOST, or POSTGRESQL_HOST), or pass a config file".into(),
        ));
    }
    Ok(out)
}

fn port(v: Option<&str>, name: &str) -> Result<u16, ConfigError> {
    match v {
        None => Ok(5432),
        Some(p) => p
            .trim()
            .parse()
            .map_err(|_| ConfigError::Other(format!("{name}={p} is not a port number"))),
    }
}

impl Overlay {
    /// edoburu style: the entry logs in as the URL's user (forced user), and that
    /// user may log in to Sluice with the same password.
    fn add_backend(&mut self, alias: String, b: Backend, from: String) {
        if let (Some(u), Some(p)) = (&b.user, &b.password) {
            self.secrets.push((u.clone(), p.clone()));
        }
        self.databases.push((alias, b.entry(), from));
    }
}

/// Reads `<NAME>_FILE` variables; returns name → (value, where it came from).
fn resolve_files(
    env: &[(String, String)],
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<String, (String, String)>, ConfigError> {
    let mut vars: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (k, v) in env {
        if is_known(k) {
            vars.insert(k.clone(), (v.clone(), format!("env {k}")));
        }
    }
    for (k, path) in env {
        let Some(stem) = k.strip_suffix("_FILE") else { continue };
        if !is_known(stem) || is_known(k) {
            continue;
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Other(format!("{k}={path}: cannot read the file: {e}")))?;
        let value = text.strip_suffix('\n').unwrap_or(&text);
        let value = value.strip_suffix('\r').unwrap_or(value).to_owned();
        if vars.contains_key(stem) {
            warnings.push(format!("both {stem} and {k} are set; using the file {path}"));
        }
        vars.insert(stem.to_owned(), (value, format!("env {k} ({path})")));
    }
    Ok(vars)
}

/// A PostgreSQL server named by URL or by variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub dbname: Option<String>,
}

impl Backend {
    fn entry(&self) -> DatabaseConfig {
        DatabaseConfig {
            host: Some(self.host.clone()),
            port: Some(self.port),
            dbname: self.dbname.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            ..DatabaseConfig::default()
        }
    }
}

/// Parses `postgres://user:password@host:port/dbname` (also `postgresql://`), as
/// dj-database-url and libpq write them: user, password and database name
/// percent-decoded, IPv6 hosts in brackets.
pub fn parse_url(s: &str) -> Result<Backend, String> {
    let url = url::Url::parse(s.trim())
        .map_err(|e| format!("not a URL ({e}); expected postgres://user:password@host:port/dbname"))?;
    if !matches!(url.scheme(), "postgres" | "postgresql" | "pgsql") {
        return Err(format!("scheme '{}' is not postgres:// or postgresql://", url.scheme()));
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("the URL has no host")?
        .trim_matches(['[', ']'])
        .to_owned();
    let user = Some(decode(url.username())).filter(|u| !u.is_empty());
    let password = url.password().map(decode);
    let dbname = Some(decode(url.path().trim_start_matches('/'))).filter(|d| !d.is_empty());
    Ok(Backend {
        host: decode(&host),
        port: url.port().unwrap_or(5432),
        user,
        password,
        dbname,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn urls_with_special_characters_decode() {
        let b = parse_url("postgres://app%40corp:p%40ss%3Aw%2Frd%25%23%3F@db.internal:6543/my%20db").unwrap();
        assert_eq!(b.user.as_deref(), Some("app@corp"));
        assert_eq!(b.password.as_deref(), Some("p@ss:w/rd%#?"));
        assert_eq!((b.host.as_str(), b.port), ("db.internal", 6543));
        assert_eq!(b.dbname.as_deref(), Some("my db"));
        let b = parse_url("postgresql://u@[::1]/x").unwrap();
        assert_eq!((b.host.as_str(), b.port, b.password), ("::1", 5432, None));
        assert!(parse_url("mysql://u@h/x").is_err());
        assert!(parse_url("db:5432").is_err());
    }

    #[test]
    fn precedence_and_conflicts_are_reported() {
        let o = overlay(
            &env(&[
                ("DEFAULT_POOL_SIZE", "10"),
                ("PGBOUNCER_DEFAULT_POOL_SIZE", "20"),
                ("POOL_MODE", "transaction"),
                ("PGBOUNCER_POOL_SIZ", "1"),
                ("USER", "root"),
            ]),
            false,
        )
        .unwrap();
        let sizes: Vec<&str> = o
            .settings
            .iter()
            .filter(|(k, ..)| k == "default_pool_size")
            .map(|(_, v, _)| v.as_str())
            .collect();
        assert_eq!(sizes, ["10", "20"], "applied in order: the bitnami name wins");
        assert!(o
            .warnings
            .iter()
            .any(|w| w.contains("DEFAULT_POOL_SIZE=10") && w.contains("PGBOUNCER_DEFAULT_POOL_SIZE=20")));
        assert!(o.warnings.iter().any(|w| w.contains("PGBOUNCER_POOL_SIZ")));
        assert!(
            !o.settings.iter().any(|(k, ..)| k == "user"),
            "the shell's USER is not a setting"
        );
    }

    #[test]
    fn env_only_needs_a_backend_and_uses_the_images_ports() {
        assert!(overlay(&env(&[("POOL_MODE", "session")]), true).is_err());
        let o = overlay(
            &env(&[("DB_HOST", "db"), ("DB_USER", "app"), ("DB_PASSWORD", "pw")]),
            true,
        )
        .unwrap();
        assert!(o
            .settings
            .contains(&("listen_port".into(), "5432".into(), "container default".into())));
        assert_eq!(o.databases[0].0, "*");
        assert_eq!(o.databases[0].1.user.as_deref(), Some("app"));
        assert_eq!(o.secrets, [("app".to_owned(), "pw".to_owned())]);
        let o = overlay(
            &env(&[
                ("POSTGRESQL_HOST", "db"),
                ("POSTGRESQL_PASSWORD", "pw"),
                ("PGBOUNCER_DATABASE", "app"),
            ]),
            true,
        )
        .unwrap();
        assert!(o
            .settings
            .contains(&("listen_port".into(), "6432".into(), "container default".into())));
        assert_eq!(o.databases[0].0, "app");
        assert_eq!(o.databases[0].1.dbname.as_deref(), Some("postgres"));
        assert_eq!(o.databases[0].1.user, None, "bitnami forces no user unless asked");
        assert_eq!(o.secrets, [("postgres".to_owned(), "pw".to_owned())]);
    }

    #[test]
    fn file_variants_hold_secrets() {
        let dir = std::env::temp_dir().join(format!("sluice-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "s3cret'\"\n").unwrap();
        let o = overlay(
            &env(&[
                ("DB_HOST", "db"),
                ("DB_USER", "app"),
                ("DB_PASSWORD", "ignored"),
                ("DB_PASSWORD_FILE", f.to_str().unwrap()),
            ]),
            true,
        )
        .unwrap();
        assert_eq!(o.secrets, [("app".to_owned(), "s3cret'\"".to_owned())]);
        assert!(o.warnings.iter().any(|w| w.contains("DB_PASSWORD_FILE")));
        let missing = overlay(&env(&[("DB_HOST", "db"), ("DB_PASSWORD_FILE", "/nonexistent/x")]), true);
        assert!(missing.unwrap_err().to_string().contains("DB_PASSWORD_FILE"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
