//! `sluice convert pgbouncer.ini > pooler.toml`: the same configuration in Sluice's
//! TOML, comments carried along. Values are typed as Sluice reads them (PgBouncer's
//! `0`/`1` booleans become `false`/`true`, numbers stay numbers); `[databases]` and
//! `[users]` connection strings become tables.

use super::{connstr, Config};

/// Converts ini text; `source` names the file in the header comment.
pub fn ini_to_toml(text: &str, source: &str) -> Result<String, String> {
    let defaults = toml::Table::try_from(Config::default()).map_err(|e| e.to_string())?;
    let mut top = format!("# Converted from {source} by `sluice convert`.\n");
    let mut tables = String::new();
    let mut section = String::new();
    // Comments wait for the line they precede, so they land in the right place.
    let mut pending: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let t = line.trim();
        if t.is_empty() {
            pending.push(String::new());
            continue;
        }
        if let Some(c) = t.strip_prefix(';').or_else(|| t.strip_prefix('#')) {
            pending.push(format!("#{c}"));
            continue;
        }
        if let Some(inc) = t.strip_prefix("%include") {
            pending.push(format!(
                "# %include{inc}: convert that file too and paste its settings here"
            ));
            continue;
        }
        if t.starts_with('[') {
            section = t.trim_matches(['[', ']']).trim().to_ascii_lowercase();
            flush(
                &mut pending,
                if section == "pgbouncer" { &mut top } else { &mut tables },
            );
            continue;
        }
        let (key, value) = t
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| format!("{source}:{line_no}: expected key = value"))?;
        match section.as_str() {
            "pgbouncer" => {
                flush(&mut pending, &mut top);
                let key = key.to_ascii_lowercase();
                top.push_str(&format!("{key} = {}\n", typed(&key, value, defaults.get(&key))));
            }
            "databases" | "users" => {
                flush(&mut pending, &mut tables);
                tables.push_str(&format!("[{section}.{}]\n", table_key(key)));
                let pairs = connstr::parse(value).map_err(|e| format!("{source}:{line_no}: {e}"))?;
                for (k, v) in pairs {
                    let k = k.to_ascii_lowercase();
                    tables.push_str(&format!("{k} = {}\n", typed(&k, &v, None)));
                }
                tables.push('\n');
            }
            "peers" => {
                pending.push(format!("# [peers] {key} = {value}  (peering is not supported)"));
            }
            other => return Err(format!("{source}:{line_no}: unknown section [{other}]")),
        }
    }
    flush(&mut pending, &mut tables);
    let mut out = top;
    if !tables.trim().is_empty() {
        out.push('\n');
        out.push_str(tables.trim_start_matches('\n'));
    }
    Ok(out)
}

fn flush(pending: &mut Vec<String>, into: &mut String) {
    for c in pending.drain(..) {
        into.push_str(&c);
        into.push('\n');
    }
}

/// A TOML value of the type Sluice reads for `key` (guessed from the value when the
/// key is not one Sluice keeps).
fn typed(key: &str, value: &str, default: Option<&toml::Value>) -> String {
    let unquoted = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
        .unwrap_or(value);
    let number = || {
        unquoted
            .parse::<i64>()
            .map(|n| n.to_string())
            .or_else(|_| unquoted.parse::<f64>().map(|f| toml::Value::Float(f).to_string()))
            .ok()
    };
    let as_string = || toml::Value::String(unquoted.to_owned()).to_string();
    match default {
        Some(toml::Value::Boolean(_)) => match unquoted.to_ascii_lowercase().as_str() {
            "1" | "yes" | "on" | "true" => "true".into(),
            _ => "false".into(),
        },
        Some(toml::Value::Integer(_)) | Some(toml::Value::Float(_)) => number().unwrap_or_else(as_string),
        Some(_) => as_string(),
        // Database and user entries: these keys are numbers, everything else text.
        None if matches!(
            key,
            "port"
                | "pool_size"
                | "min_pool_size"
                | "reserve_pool"
                | "reserve_pool_size"
                | "max_db_connections"
                | "max_user_connections"
                | "server_lifetime"
        ) =>
        {
            number().unwrap_or_else(as_string)
        }
        None => as_string(),
    }
}

/// A TOML table key, quoted when it is not a bare key (`"*"`).
pub fn table_key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_owned()
    } else {
        toml::Value::String(k.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_tables_and_comments_carry_over() {
        let ini = "; top comment\n[databases]\n; the app\napp = host=db port=5433 dbname=app_prod password='it''s'\n* = host=db\n\n[pgbouncer]\nlisten_port = 6432\n; pooling\npool_mode = transaction\nlog_connections = 0\nreserve_pool_timeout = 2.5\nadmin_users = ops, admin\n\n[users]\nbatch = pool_mode=session pool_size=3\n";
        let toml_text = ini_to_toml(ini, "x.ini").unwrap();
        let parsed: toml::Table = toml_text.parse().unwrap_or_else(|e| panic!("{e}\n{toml_text}"));
        assert_eq!(parsed["listen_port"].as_integer(), Some(6432));
        assert_eq!(parsed["log_connections"].as_bool(), Some(false));
        assert_eq!(parsed["reserve_pool_timeout"].as_float(), Some(2.5));
        assert_eq!(parsed["admin_users"].as_str(), Some("ops, admin"));
        assert_eq!(parsed["databases"]["app"]["port"].as_integer(), Some(5433));
        assert_eq!(parsed["databases"]["app"]["password"].as_str(), Some("it's"));
        assert_eq!(parsed["databases"]["*"]["host"].as_str(), Some("db"));
        assert_eq!(parsed["users"]["batch"]["pool_size"].as_integer(), Some(3));
        assert!(toml_text.contains("# top comment"));
        assert!(toml_text.contains("# pooling\npool_mode"), "{toml_text}");
        assert!(toml_text.contains("# the app\n[databases.app]"), "{toml_text}");
    }
}
