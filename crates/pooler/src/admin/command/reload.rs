//! RELOAD: re-read the config file; SET key = value: change one setting in the
//! running configuration (until the next RELOAD re-reads the file).

use super::Result;
use crate::admin::show::config as config_value;
use crate::admin::{error, Reply, Role};
use crate::app::App;
use crate::errors::ClientError;

pub fn reload(app: &App) -> Result {
    match app.reload() {
        Ok(()) => Ok(Reply::Done("RELOAD".into())),
        Err(e) => {
            tracing::error!("RELOAD failed, keeping the running configuration: {e}");
            Err(
                ClientError::fatal("F0000", "RELOAD failed, see logs for additional details")
                    .at(sluice_wire::backend::Severity::Error)
                    .detail(e.to_string()),
            )
        }
    }
}

/// Settings some drivers SET on connect: accepted and ignored (as PgBouncer).
const FAKE: &[&str] = &[
    "client_encoding",
    "default_transaction_isolation",
    "standard_conforming_strings",
    "datestyle",
    "timezone",
];

pub fn set(app: &App, role: Role, key: &str, value: &str) -> Result {
    if FAKE.iter().any(|k| k.eq_ignore_ascii_case(key)) {
        return Ok(Reply::Notice {
            message: "SET ignored".into(),
            detail: String::new(),
            tag: "SET",
        });
    }
    if role != Role::Admin {
        return Err(error("admin access needed"));
    }
    let key = key.to_ascii_lowercase();
    if !crate::config::keys::SETTINGS.contains(&key.as_str()) {
        return Err(error(format!("unknown configuration parameter: {key}")));
    }
    if !config_value::changeable(&key) {
        return Err(error(format!(
            "{key} cannot be changed while running; edit the config file and restart"
        )));
    }
    match app.set_setting(&key, value) {
        Ok(()) => {
            tracing::info!(key, value, "SET on the console");
            Ok(Reply::Done(format!("SET {key}={value}")))
        }
        Err(e) => Err(error(format!("SET failed: {e}"))),
    }
}
