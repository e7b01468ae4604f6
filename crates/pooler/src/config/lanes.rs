//! Overload protection's settings: `overload_protection`, `slow_share`,
//! `slow_threshold`, `max_queue_length`, and the `[lanes]` entries, turned into the
//! [`LaneSet`] every pool shares (see docs/overload.md).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{seconds, Config};
use crate::overload::{LaneDef, LaneSet, Rule};

/// One `[lanes]` entry: which requests it takes, and its limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LaneConfig {
    pub application_name: Option<String>,
    pub user: Option<String>,
    /// Comment tags that must all be present: `controller=export,route=/x`.
    pub tag: Option<String>,
    /// A case-insensitive regular expression on the first meaningful statement.
    pub statement: Option<String>,
    pub max_servers: Option<u32>,
    pub reserved_servers: Option<u32>,
    pub priority: Option<i32>,
    pub query_wait_timeout: Option<f64>,
    pub max_queue_length: Option<u32>,
    pub query_timeout: Option<f64>,
    pub transaction_timeout: Option<f64>,
}

/// Keys of a `[lanes]` entry.
pub const KEYS: &[&str] = &[
    "application_name",
    "user",
    "tag",
    "statement",
    "max_servers",
    "reserved_servers",
    "priority",
    "query_wait_timeout",
    "max_queue_length",
    "query_timeout",
    "transaction_timeout",
];

/// The lanes of a configuration, or what is wrong with them.
pub fn build(c: &Config) -> Result<Arc<LaneSet>, String> {
    let protection = match c.overload_protection.trim().to_ascii_lowercase().as_str() {
        "auto" | "on" => true,
        "off" => false,
        other => return Err(format!("overload_protection must be 'auto' or 'off', got '{other}'")),
    };
    if !(c.slow_share > 0.0 && c.slow_share <= 1.0) {
        return Err(format!("slow_share must be in (0, 1], got {}", c.slow_share));
    }
    if !(c.slow_threshold > 0.0 && c.slow_threshold.is_finite()) {
        return Err(format!(
            "slow_threshold must be a number of seconds > 0, got {}",
            c.slow_threshold
        ));
    }
    let mut defs = Vec::new();
    for (name, l) in &c.lanes {
        if name == "fast" || name == "slow" {
            return Err(format!("lane '{name}': the name is taken by an automatic lane"));
        }
        let mut tags = Vec::new();
        for pair in l
            .tag
            .iter()
            .flat_map(|t| t.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair
                .split_once('=')
                .or_else(|| pair.split_once(':'))
                .ok_or_else(|| format!("lane '{name}': tag '{pair}' must be key=value"))?;
            tags.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let statement = match &l.statement {
            Some(p) => Some(
                regex::RegexBuilder::new(p)
                    .case_insensitive(true)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("lane '{name}': statement pattern: {e}"))?,
            ),
            None => None,
        };
        let time = |what: &str, v: Option<f64>| -> Result<Option<Option<std::time::Duration>>, String> {
            match v {
                Some(s) if !(s >= 0.0 && s.is_finite()) => {
                    Err(format!("lane '{name}': {what} must be a number of seconds >= 0"))
                }
                Some(s) => Ok(Some(seconds(s))),
                None => Ok(None),
            }
        };
        defs.push(LaneDef {
            name: name.clone(),
            rule: Rule {
                application_name: l.application_name.clone(),
                user: l.user.clone(),
                tags,
                statement,
            },
            max_servers: l.max_servers.map(|n| n as usize),
            reserved: l.reserved_servers.unwrap_or(0) as usize,
            priority: l.priority.unwrap_or(0),
            wait_timeout: time("query_wait_timeout", l.query_wait_timeout)?,
            max_queue: l.max_queue_length.filter(|&n| n > 0).map(|n| n as usize),
            query_timeout: time("query_timeout", l.query_timeout)?,
            transaction_timeout: time("transaction_timeout", l.transaction_timeout)?,
        });
    }
    Ok(Arc::new(LaneSet::new(
        protection,
        defs,
        c.slow_share,
        std::time::Duration::from_secs_f64(c.slow_threshold),
        (c.max_queue_length > 0).then_some(c.max_queue_length as usize),
    )))
}
