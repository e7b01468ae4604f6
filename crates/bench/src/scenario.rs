//! Scenario files (TOML): who the users are, what pages ("paths") they load, and
//! what each page does to the database.
//!
//! ```toml
//! name = "smoke"
//! users = 20            # concurrent users (closed loop: each waits for its page)
//! spawn_rate = 4.0      # users started per second
//! duration = 60         # seconds
//! request_timeout = 30  # seconds a page may take, like a web worker's timeout
//!
//! [params]              # values drawn per request, uniformly: {user_id} in SQL
//! user_id = [1, 1000]
//!
//! [[path]]
//! name = "login"
//! weight = 5            # relative frequency
//! think = 1.0           # seconds a user waits after the page
//! connect = "new"       # "new": a connection per page (Django CONN_MAX_AGE=0), or "reuse"
//! steps = [
//!   { sql = "SET TIME ZONE 'UTC'" },
//!   { sql = "BEGIN" },
//!   { sql = "SELECT id FROM users WHERE id = {user_id}" },
//!   { think = 0.2 },    # application work inside the transaction: idle in transaction
//!   { sql = "COMMIT" },
//! ]
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::Rng;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default = "default_users")]
    pub users: usize,
    #[serde(default = "default_spawn_rate")]
    pub spawn_rate: f64,
    /// Seconds.
    pub duration: f64,
    /// Seconds a page may take before it counts as a timeout.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: f64,
    /// SQL run once, directly on the database, before the load (schema, seed data).
    #[serde(default)]
    pub setup: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, [i64; 2]>,
    #[serde(rename = "path")]
    pub paths: Vec<PathSpec>,
}

fn default_users() -> usize {
    10
}
fn default_spawn_rate() -> f64 {
    10.0
}
fn default_request_timeout() -> f64 {
    30.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSpec {
    pub name: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Seconds a user waits after this page.
    #[serde(default)]
    pub think: f64,
    #[serde(default)]
    pub connect: Connect,
    pub steps: Vec<Step>,
    /// Tags, to leave paths out (`--exclude-tag export`).
    #[serde(default)]
    pub tags: Vec<String>,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Connect {
    /// A new connection for every page, closed after it (Django `CONN_MAX_AGE=0`).
    #[default]
    New,
    /// One connection per user, kept across pages.
    Reuse,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Step {
    Sql { sql: String },
    Think { think: f64 },
}

impl Scenario {
    /// Reads a scenario; errors name the file and line.
    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, source: &str) -> Result<Scenario> {
        let s: Scenario = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|r| text[..r.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(0);
            anyhow::anyhow!("{source}:{line}: {}", e.message())
        })?;
        s.check(source)?;
        Ok(s)
    }

    fn check(&self, source: &str) -> Result<()> {
        if self.paths.is_empty() {
            bail!("{source}: no [[path]]: nothing to run");
        }
        if self.paths.iter().all(|p| p.weight == 0) {
            bail!("{source}: every path has weight 0");
        }
        for p in &self.paths {
            for step in &p.steps {
                if let Step::Sql { sql } = step {
                    for name in placeholders(sql) {
                        if !self.params.contains_key(name) {
                            bail!(
                                "{source}: path '{}' uses {{{name}}}, which [params] does not define",
                                p.name
                            );
                        }
                    }
                }
            }
        }
        for (name, [lo, hi]) in &self.params {
            if lo > hi {
                bail!("{source}: params.{name}: {lo} > {hi}");
            }
        }
        Ok(())
    }

    /// Keeps only paths without any of `tags`.
    pub fn exclude_tags(&mut self, tags: &[String]) {
        self.paths.retain(|p| !p.tags.iter().any(|t| tags.contains(t)));
    }

    /// Picks a path by weight.
    pub fn pick(&self, rng: &mut impl Rng) -> usize {
        let total: u32 = self.paths.iter().map(|p| p.weight).sum();
        let mut x = rng.gen_range(0..total);
        for (i, p) in self.paths.iter().enumerate() {
            if x < p.weight {
                return i;
            }
            x -= p.weight;
        }
        self.paths.len() - 1
    }

    /// `sql` with each `{name}` replaced by a value drawn from `[params]`.
    pub fn render(&self, sql: &str, rng: &mut impl Rng) -> String {
        let mut out = String::with_capacity(sql.len() + 16);
        let mut rest = sql;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else { break };
            let name = &rest[open + 1..open + close];
            match self.params.get(name) {
                Some([lo, hi]) => {
                    out.push_str(&rest[..open]);
                    out.push_str(&rng.gen_range(*lo..=*hi).to_string());
                }
                None => out.push_str(&rest[..open + close + 1]),
            }
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// The `{name}` placeholders of a statement (identifiers only, so SQL braces pass).
fn placeholders(sql: &str) -> impl Iterator<Item = &str> {
    sql.split('{').skip(1).filter_map(|s| {
        let name = &s[..s.find('}')?];
        (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then_some(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
name = "t"
duration = 1
[params]
id = [1, 3]
[[path]]
name = "a"
steps = [{ sql = "SELECT {id}" }, { think = 0.1 }]
"#;

    #[test]
    fn parses_and_renders() {
        let s = Scenario::parse(OK, "t.toml").unwrap();
        assert_eq!(s.paths[0].connect, Connect::New);
        let mut rng = rand::thread_rng();
        for _ in 0..20 {
            let q = s.render("SELECT {id}, '{}'", &mut rng);
            assert!(
                ["SELECT 1, '{}'", "SELECT 2, '{}'", "SELECT 3, '{}'"].contains(&q.as_str()),
                "{q}"
            );
        }
    }

    #[test]
    fn errors_point_to_the_line() {
        let bad = OK.replace("duration = 1", "duration = \"soon\"");
        let e = Scenario::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:3:"), "{e}");
        let bad = OK.replace("steps =", "stepz =");
        let e = Scenario::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:"), "{e}");
        let bad = OK.replace("SELECT {id}", "SELECT {nope}");
        let e = Scenario::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(e.contains("{nope}"), "{e}");
    }
}
