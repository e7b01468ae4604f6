//! PgBouncer's ini format: `[databases]`, `[pgbouncer]`, `[users]`, Sluice's `[lanes]`
//! (and `[peers]`, accepted and ignored), `;`/`#` comment lines, and `%include FILE`.

use std::path::{Path, PathBuf};

use super::{connstr, ConfigError, Origin, RawConfig, RawSection};

const MAX_INCLUDE_DEPTH: usize = 10;

pub fn read(path: &Path) -> Result<RawConfig, ConfigError> {
    let mut raw = RawConfig::default();
    let mut section = String::new();
    read_into(path, &mut raw, &mut section, 0)?;
    Ok(raw)
}

fn read_into(path: &Path, raw: &mut RawConfig, section: &mut String, depth: usize) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        file: path.to_path_buf(),
        message: format!("cannot read config file: {e}"),
    })?;
    raw.files.push(path.to_path_buf());
    for (i, line) in text.lines().enumerate() {
        let origin = Origin {
            file: path.to_path_buf(),
            line: i + 1,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(include) = line.strip_prefix("%include") {
            if depth >= MAX_INCLUDE_DEPTH {
                return Err(ConfigError::at(&origin, "%include nested too deeply"));
            }
            let name = include.trim();
            if name.is_empty() {
                return Err(ConfigError::at(&origin, "%include needs a file name"));
            }
            // PgBouncer resolves includes from the working directory.
            let target = PathBuf::from(name);
            read_into(&target, raw, section, depth + 1).map_err(|e| match e {
                ConfigError::File { message, .. } => {
                    ConfigError::at(&origin, format!("%include {}: {message}", target.display()))
                }
                other => other,
            })?;
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or_else(|| ConfigError::at(&origin, "section header is missing ']'"))?;
            let name = name.trim().to_ascii_lowercase();
            if !matches!(name.as_str(), "databases" | "pgbouncer" | "users" | "peers" | "lanes") {
                return Err(ConfigError::at(&origin, format!("unknown section [{name}]")));
            }
            *section = name;
            continue;
        }
        let (key, value) = split_key_value(line).ok_or_else(|| ConfigError::at(&origin, "expected 'key = value'"))?;
        match section.as_str() {
            "pgbouncer" => raw
                .settings
                .push((key.to_ascii_lowercase(), toml::Value::String(value.to_owned()), origin)),
            "databases" | "users" | "lanes" => {
                let pairs = connstr::parse(value).map_err(|m| ConfigError::at(&origin, m))?;
                let entries = pairs
                    .into_iter()
                    .map(|(k, v)| (k, toml::Value::String(v), origin.clone()))
                    .collect();
                let s = RawSection {
                    name: key,
                    origin,
                    entries,
                };
                match section.as_str() {
                    "databases" => raw.databases.push(s),
                    "users" => raw.users.push(s),
                    _ => raw.lanes.push(s),
                }
            }
            "peers" => {}
            _ => {
                return Err(ConfigError::at(
                    &origin,
                    "setting outside of a section (expected [pgbouncer] first)",
                ))
            }
        }
    }
    Ok(())
}

/// Splits `key = value`; a key may be double-quoted (`"my db" = host=...`).
fn split_key_value(line: &str) -> Option<(String, &str)> {
    if let Some(rest) = line.strip_prefix('"') {
        let mut key = String::new();
        let mut chars = rest.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if chars.peek().map(|(_, c)| *c) == Some('"') {
                    chars.next();
                    key.push('"');
                    continue;
                }
                let value = rest[i + 1..].trim_start().strip_prefix('=')?;
                return Some((key, value.trim()));
            }
            key.push(c);
        }
        return None;
    }
    let (k, v) = line.split_once('=')?;
    let k = k.trim();
    if k.is_empty() {
        return None;
    }
    Some((k.to_owned(), v.trim()))
}
