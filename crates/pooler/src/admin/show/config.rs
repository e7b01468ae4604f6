//! SHOW CONFIG: every setting with its value, default and whether SET / RELOAD can
//! change it while running.

use crate::admin::result::ResultSet;
use crate::app::App;
use crate::config::{keys, Config};

/// Settings that only take effect at the next start.
pub const RESTART_ONLY: &[&str] = &[
    "listen_addr",
    "listen_port",
    "unix_socket_dir",
    "unix_socket_mode",
    "unix_socket_group",
    "user",
    "logfile",
    "pidfile",
    "pkt_buf",
    "listen_backlog",
    "max_db_connections",
    "max_user_connections",
    "so_reuseport",
    "peer_id",
    "service_name",
    "syslog",
    "syslog_ident",
    "syslog_facility",
    "metrics_addr",
];

pub fn changeable(key: &str) -> bool {
    !RESTART_ONLY.contains(&key)
}

/// A setting's value as PgBouncer prints it: integral seconds without a fraction,
/// booleans as 1/0.
pub fn format_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", *f as i64),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => if *b { "1" } else { "0" }.to_owned(),
        other => other.to_string(),
    }
}

fn table(c: &Config) -> toml::Table {
    toml::Table::try_from(c).unwrap_or_default()
}

/// A setting's current value (None for a setting Sluice accepts but does not keep).
pub fn value_of(c: &Config, key: &str) -> Option<String> {
    table(c).get(key).map(format_value)
}

pub fn config(app: &App) -> ResultSet {
    let current = app.current();
    let (values, defaults) = (table(&current.config), table(&Config::default()));
    let mut keys: Vec<&str> = keys::SETTINGS.to_vec();
    keys.sort_unstable();
    let mut r = ResultSet::new("ssss", &["key", "value", "default", "changeable"]);
    for key in keys {
        let shown = |t: &toml::Table| t.get(key).map(format_value).unwrap_or_default();
        r.push(vec![
            key.into(),
            shown(&values).into(),
            shown(&defaults).into(),
            if changeable(key) { "yes" } else { "no" }.into(),
        ]);
    }
    r
}
