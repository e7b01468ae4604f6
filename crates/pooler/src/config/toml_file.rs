//! Sluice's TOML format: top-level keys are PgBouncer's `[pgbouncer]` settings, and
//! `[databases.NAME]` / `[users.NAME]` / `[lanes.NAME]` tables hold the entries.

use std::path::Path;

use super::{ConfigError, Origin, RawConfig, RawSection};

pub fn read(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        file: path.to_path_buf(),
        message: format!("cannot read config file: {e}"),
    })?;
    parse(&text, path)
}

pub fn parse(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let origin_at = |offset: Option<usize>| Origin {
        file: path.to_path_buf(),
        line: offset.map(line_of).unwrap_or(0),
    };
    // toml_edit keeps spans (for line numbers); toml gives plain values.
    let doc = toml_edit::ImDocument::parse(text).map_err(|e| {
        let line = e.span().map(|s| line_of(s.start)).unwrap_or(0);
        ConfigError::At {
            origin: Origin {
                file: path.to_path_buf(),
                line,
            },
            message: e.message().trim().to_owned(),
        }
    })?;
    let values: toml::Table = toml::from_str(text).map_err(|e| ConfigError::File {
        file: path.to_path_buf(),
        message: e.to_string(),
    })?;

    let mut raw = RawConfig {
        files: vec![path.to_path_buf()],
        ..RawConfig::default()
    };
    for (key, item) in doc.as_table().iter() {
        let key_span = doc.as_table().key(key).and_then(|k| k.span()).map(|s| s.start);
        let origin = origin_at(key_span);
        let value = values.get(key).cloned().unwrap_or(toml::Value::Boolean(false));
        match key {
            "databases" | "users" | "lanes" => {
                let Some(table) = item.as_table_like() else {
                    return Err(ConfigError::at(&origin, format!("'{key}' must be a table")));
                };
                let value_table = value.as_table().cloned().unwrap_or_default();
                let mut sections = Vec::new();
                for (name, entry) in table.iter() {
                    let name_origin = origin_at(table.key(name).and_then(|k| k.span()).map(|s| s.start));
                    let Some(entry_table) = entry.as_table_like() else {
                        return Err(ConfigError::at(&name_origin, format!("{key}.{name} must be a table")));
                    };
                    let entry_values = value_table
                        .get(name)
                        .and_then(|v| v.as_table())
                        .cloned()
                        .unwrap_or_default();
                    let entries = entry_table
                        .iter()
                        .map(|(k, _)| {
                            let o = origin_at(entry_table.key(k).and_then(|k| k.span()).map(|s| s.start));
                            let v = entry_values.get(k).cloned().unwrap_or(toml::Value::Boolean(false));
                            (k.to_owned(), v, o)
                        })
                        .collect();
                    sections.push(RawSection {
                        name: name.to_owned(),
                        origin: name_origin,
                        entries,
                    });
                }
                match key {
                    "databases" => raw.databases = sections,
                    "users" => raw.users = sections,
                    _ => raw.lanes = sections,
                }
            }
            _ => raw.settings.push((key.to_owned(), value, origin)),
        }
    }
    Ok(raw)
}
