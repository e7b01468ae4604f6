//! Scenario files (TOML): the seed data, who the users are, what pages ("paths") they
//! load and what each page does to the database.
//!
//! ```toml
//! name = "smoke"
//! users = 20            # concurrent users (closed loop: each waits for its page)
//! spawn_rate = 4.0      # users started per second
//! duration = 60         # seconds
//! request_timeout = 30  # seconds a page may take, like a web worker's timeout
//! drain = 10            # seconds pages running at the end may take; then "unfinished"
//! protocol = "simple"   # simple | extended | prepared
//!
//! [vars]                # row counts, {name} in setup; --var name=N overrides
//! users = 1000
//!
//! setup = "CREATE TABLE ...; INSERT ... FROM generate_series(1, {users}) ..."
//!
//! [params]              # drawn once per page: {user_id} in SQL
//! user_id = [1, 1000]                                   # uniform integer range
//! username = { query = "SELECT username FROM users" }   # uniform over the seed's rows
//!
//! [[path]]
//! name = "login"
//! weight = 5            # relative frequency
//! on_start = true       # every user loads it first (a Locust on_start)
//! think = 1.0           # seconds a user waits after the page
//! connect = "new"       # "new": a connection per page (Django CONN_MAX_AGE=0), or "reuse"
//! steps = [
//!   { sql = "SET TIME ZONE 'UTC'" },
//!   { sql = "SELECT id FROM users WHERE username = {username}", fetch = "user" },
//!   { sql = "UPDATE users SET last_login = now() WHERE id = {user}", for_each = "user" },
//!   { sql = "BEGIN" },
//!   { think = 0.2 },    # application work inside the transaction: idle in transaction
//!   { sql = "COMMIT" },
//! ]
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default = "default_users")]
    pub users: usize,
    #[serde(default = "default_spawn_rate")]
    pub spawn_rate: f64,
    /// Seconds.
    pub duration: f64,
    /// Seconds a page may take before it counts as a timeout.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: f64,
    /// Seconds pages still running at the end of `duration` may take to finish; then
    /// they are stopped and counted as unfinished.
    #[serde(default = "default_drain")]
    pub drain: f64,
    #[serde(default)]
    pub protocol: Protocol,
    /// Integers substituted as `{name}` in `setup` (row counts).
    #[serde(default)]
    pub vars: BTreeMap<String, i64>,
    /// SQL run once, directly on the database, before the load (schema, seed data).
    #[serde(default)]
    pub setup: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
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
fn default_drain() -> f64 {
    10.0
}

/// How statements go over the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Query messages with values inlined as literals (psycopg 3's default, Django).
    #[default]
    Simple,
    /// Parse/Bind/Execute of an unnamed statement per query, values as parameters.
    Extended,
    /// Named statements prepared once per connection and re-executed.
    Prepared,
}

/// Where a `{name}` value comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum ParamSpec {
    /// Uniform over `[low, high]`.
    Range([i64; 2]),
    /// Uniform over the first column of this query's rows, run once before the load.
    Query { query: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSpec {
    pub name: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Every user loads this page once when it starts, before the weighted mix.
    #[serde(default)]
    pub on_start: bool,
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
    Sql {
        sql: String,
        /// Keep the first column of the rows under this name, for `for_each`.
        #[serde(default)]
        fetch: Option<String>,
        /// Run once per value fetched under this name, bound to `{name}` (an ORM's
        /// N+1 queries).
        #[serde(default)]
        for_each: Option<String>,
    },
    Think {
        think: f64,
    },
}

impl Scenario {
    /// Tags every statement the way Django's sqlcommenter middleware does:
    /// `/*controller='<path>',route='%2F<path>%2F'*/` at the end. Transaction control
    /// (BEGIN, COMMIT, ROLLBACK) is left alone: the driver sends it, not the ORM.
    pub fn sqlcommenter(&mut self) {
        for path in &mut self.paths {
            let comment = format!("/*controller='{0}',route='%2F{0}%2F'*/", path.name);
            for step in &mut path.steps {
                if let Step::Sql { sql, .. } = step {
                    let first = sql.split_whitespace().next().unwrap_or("").to_ascii_lowercase();
                    if !matches!(first.as_str(), "begin" | "commit" | "rollback" | "start" | "end") {
                        sql.push(' ');
                        sql.push_str(&comment);
                    }
                }
            }
        }
    }
}

/// A value bound into a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Text(String),
}

/// A statement ready to send: for the simple protocol the values are inlined as
/// literals; otherwise they are `$n` parameters with an explicit type, so every draw
/// of the same step is one and the same prepared statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub sql: String,
    pub args: Vec<Value>,
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
        s.check(source, text)?;
        Ok(s)
    }

    fn check(&self, source: &str, text: &str) -> Result<()> {
        // Semantic errors point to the line of the path's name.
        let line_of = |needle: &str| {
            text.find(needle)
                .map(|at| text[..at].matches('\n').count() + 1)
                .unwrap_or(0)
        };
        if self.paths.is_empty() {
            bail!("{source}: no [[path]]: nothing to run");
        }
        if self.paths.iter().all(|p| p.weight == 0 && !p.on_start) {
            bail!("{source}: every path has weight 0");
        }
        for p in &self.paths {
            let at = line_of(&format!("\"{}\"", p.name));
            let mut fetched: Vec<&str> = Vec::new();
            for step in &p.steps {
                let Step::Sql { sql, fetch, for_each } = step else {
                    continue;
                };
                if let Some(each) = for_each {
                    if !fetched.contains(&each.as_str()) {
                        bail!(
                            "{source}:{at}: path '{}': for_each = \"{each}\" needs an earlier step with fetch = \"{each}\"",
                            p.name
                        );
                    }
                }
                for name in placeholders(sql) {
                    if !self.params.contains_key(name) && for_each.as_deref() != Some(name) {
                        bail!(
                            "{source}:{at}: path '{}' uses {{{name}}}, which is neither in [params] nor the step's for_each",
                            p.name
                        );
                    }
                }
                if let Some(f) = fetch {
                    fetched.push(f);
                }
            }
        }
        if let Some(setup) = &self.setup {
            if let Some(name) = placeholders(setup).find(|n| !self.vars.contains_key(*n)) {
                bail!(
                    "{source}:{}: setup uses {{{name}}}, which [vars] does not define",
                    line_of(&format!("{{{name}}}"))
                );
            }
        }
        for (name, spec) in &self.params {
            if let ParamSpec::Range([lo, hi]) = spec {
                if lo > hi {
                    bail!("{source}:{}: params.{name}: {lo} > {hi}", line_of(name));
                }
            }
        }
        Ok(())
    }

    /// Keeps only paths without any of `tags`.
    pub fn exclude_tags(&mut self, tags: &[String]) {
        self.paths.retain(|p| !p.tags.iter().any(|t| tags.contains(t)));
    }

    /// The setup SQL with `{var}` replaced by the row counts of `[vars]`.
    pub fn setup_sql(&self) -> Option<String> {
        let setup = self.setup.as_ref()?;
        let mut out = setup.clone();
        for (name, v) in &self.vars {
            out = out.replace(&format!("{{{name}}}"), &v.to_string());
        }
        Some(out)
    }

    /// Picks a path of the weighted mix.
    pub fn pick(&self, rng: &mut impl Rng) -> Option<usize> {
        let total: u32 = self.paths.iter().map(|p| p.weight).sum();
        if total == 0 {
            return None;
        }
        let mut x = rng.gen_range(0..total);
        for (i, p) in self.paths.iter().enumerate() {
            if x < p.weight {
                return Some(i);
            }
            x -= p.weight;
        }
        None
    }
}

/// Values for the `{name}` placeholders of one page.
#[derive(Debug, Default, Clone)]
pub struct Bindings(pub BTreeMap<String, Value>);

/// Parameter values to draw from: ranges, or the rows a query returned.
#[derive(Debug, Default, Clone)]
pub struct Pools(pub BTreeMap<String, Pool>);

#[derive(Debug, Clone)]
pub enum Pool {
    Range(i64, i64),
    Rows(Vec<Value>),
}

impl Pools {
    /// Draws every parameter once: a page's `{user_id}` is the same in all its steps.
    pub fn draw(&self, rng: &mut impl Rng) -> Bindings {
        Bindings(
            self.0
                .iter()
                .filter_map(|(name, pool)| {
                    let v = match pool {
                        Pool::Range(lo, hi) => Value::Int(rng.gen_range(*lo..=*hi)),
                        Pool::Rows(rows) if rows.is_empty() => return None,
                        Pool::Rows(rows) => rows[rng.gen_range(0..rows.len())].clone(),
                    };
                    Some((name.clone(), v))
                })
                .collect(),
        )
    }
}

/// `sql` with each `{name}` bound: inlined as a literal for the simple protocol, as a
/// typed `$n` parameter otherwise. Braces that are not a known name pass unchanged.
pub fn render(sql: &str, bindings: &Bindings, extra: Option<(&str, &Value)>, protocol: Protocol) -> Rendered {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut args = Vec::new();
    let mut rest = sql;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        let name = &rest[open + 1..open + close];
        let value = match extra {
            Some((n, v)) if n == name => Some(v),
            _ => bindings.0.get(name),
        };
        out.push_str(&rest[..open]);
        match value {
            None => out.push_str(&rest[open..open + close + 1]),
            Some(v) if protocol == Protocol::Simple => match v {
                Value::Int(i) => {
                    let _ = write!(out, "{i}");
                }
                Value::Text(t) => {
                    out.push('\'');
                    out.push_str(&t.replace('\'', "''"));
                    out.push('\'');
                }
            },
            Some(v) => {
                args.push(v.clone());
                let cast = if matches!(v, Value::Int(_)) { "int8" } else { "text" };
                let _ = write!(out, "${}::{cast}", args.len());
            }
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Rendered { sql: out, args }
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
who = { query = "SELECT name FROM users" }
[[path]]
name = "a"
steps = [
  { sql = "SELECT {id}, '{}' FROM t WHERE name = {who}", fetch = "rows" },
  { sql = "SELECT {rows}", for_each = "rows" },
  { think = 0.1 },
]
"#;

    #[test]
    fn sqlcommenter_tags_statements_but_not_transaction_control() {
        let text = r#"
name = "t"
duration = 1
[[path]]
name = "export"
steps = [{ sql = "BEGIN" }, { sql = "SELECT 1" }, { sql = "COMMIT" }]
"#;
        let mut s = Scenario::parse(text, "t.toml").unwrap();
        s.sqlcommenter();
        let sqls: Vec<&str> = s.paths[0]
            .steps
            .iter()
            .filter_map(|st| match st {
                Step::Sql { sql, .. } => Some(sql.as_str()),
                Step::Think { .. } => None,
            })
            .collect();
        assert_eq!(
            sqls,
            [
                "BEGIN",
                "SELECT 1 /*controller='export',route='%2Fexport%2F'*/",
                "COMMIT"
            ]
        );
    }

    #[test]
    fn parses_and_renders_for_each_protocol() {
        let s = Scenario::parse(OK, "t.toml").unwrap();
        assert_eq!(s.paths[0].connect, Connect::New);
        assert_eq!(s.protocol, Protocol::Simple);
        let pools = Pools(
            [
                ("id".to_string(), Pool::Range(1, 3)),
                ("who".to_string(), Pool::Rows(vec![Value::Text("O'Brien".into())])),
            ]
            .into(),
        );
        let mut rng = rand::thread_rng();
        let Step::Sql { sql, .. } = &s.paths[0].steps[0] else {
            panic!()
        };
        for _ in 0..20 {
            let b = pools.draw(&mut rng);
            let r = render(sql, &b, None, Protocol::Simple);
            assert!(
                (1..=3).any(|i| r.sql == format!("SELECT {i}, '{{}}' FROM t WHERE name = 'O''Brien'")),
                "{r:?}"
            );
            assert!(r.args.is_empty());
        }
        let b = Bindings(
            [
                ("id".to_string(), Value::Int(7)),
                ("who".to_string(), Value::Text("x".into())),
            ]
            .into(),
        );
        let r = render(sql, &b, None, Protocol::Prepared);
        assert_eq!(r.sql, "SELECT $1::int8, '{}' FROM t WHERE name = $2::text");
        assert_eq!(r.args, vec![Value::Int(7), Value::Text("x".into())]);
        let r = render("SELECT {rows}", &b, Some(("rows", &Value::Int(5))), Protocol::Simple);
        assert_eq!(r.sql, "SELECT 5");
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
        assert!(e.starts_with("t.toml:8:") && e.contains("{nope}"), "{e}");
        let bad = OK.replace("for_each = \"rows\"", "for_each = \"row\"");
        let e = Scenario::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:8:") && e.contains("fetch = \"row\""), "{e}");
        let bad = OK.replace("duration = 1", "duration = 1\nsetup = \"SELECT {rows}\"");
        let e = Scenario::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:4:") && e.contains("{rows}"), "{e}");
        let bad = OK
            .replace("protocol", "x")
            .replace("duration = 1", "duration = 1\nprotocol = \"binary\"");
        let e = Scenario::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:4:"), "{e}");
    }
}
