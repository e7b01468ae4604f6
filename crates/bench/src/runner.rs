//! Runs a scenario against one target: `users` closed-loop users, started at
//! `spawn_rate`, each loading pages until `duration` is over. Every page is timed from
//! the user's point of view (connect, pooler queue, statements, think time inside
//! transactions) and recorded with its outcome.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use rand::SeedableRng;
use serde::Serialize;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, Statement};

use crate::outcome::{Cause, Outcome};
use crate::report::{PathStats, Row};
use crate::scenario::{
    render, Bindings, Connect, ParamSpec, PathSpec, Pool, Pools, Protocol, Rendered, Scenario, Step, Value,
};
use crate::system::{Activity, CpuSampler, Machine};

/// Where the load goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// A libpq connection string or URL.
    pub conninfo: String,
}

/// One page request.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub path: usize,
    /// Seconds since the run started, when the page started.
    pub start_s: f64,
    pub latency_ms: f64,
    pub outcome: Outcome,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub target: String,
    pub users: usize,
    pub seconds: f64,
    pub rows: Vec<Row>,
    #[serde(skip)]
    pub samples: Vec<Sample>,
    /// Per second: what the database's client backends were doing (if monitored).
    pub activity: Vec<Activity>,
    /// Per second: the machine's CPU busy share, 0–100 % of all cores.
    pub cpu_busy_percent: Vec<f64>,
    pub cpu_busy_average: f64,
    pub load_average: String,
}

#[derive(Default)]
struct Collected {
    paths: Vec<PathStats>,
    samples: Vec<Sample>,
}

/// Counts for the progress bar.
#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
}

fn lock(c: &Mutex<Collected>) -> std::sync::MutexGuard<'_, Collected> {
    // A panicking user task cannot leave the counters half-written: take them anyway.
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs each `[params]` query once (on `conninfo`, usually PostgreSQL directly), so
/// every target draws from the same values.
pub async fn load_params(scenario: &Scenario, conninfo: &str) -> Result<Pools> {
    let mut pools = Pools::default();
    let mut client = None;
    for (name, spec) in &scenario.params {
        let pool = match spec {
            ParamSpec::Range([lo, hi]) => Pool::Range(*lo, *hi),
            ParamSpec::Query { query } => {
                if client.is_none() {
                    let (c, conn) = tokio_postgres::connect(conninfo, NoTls)
                        .await
                        .context("cannot connect to run the [params] queries")?;
                    tokio::spawn(conn);
                    client = Some(c);
                }
                let Some(c) = &client else {
                    unreachable!("connected above")
                };
                let rows = c
                    .query(query.as_str(), &[])
                    .await
                    .with_context(|| format!("params.{name}: {query}"))?;
                let values = rows
                    .iter()
                    .map(first_column)
                    .collect::<std::result::Result<Vec<_>, String>>()
                    .map_err(|e| anyhow::anyhow!("params.{name}: {e}"))?;
                if values.is_empty() {
                    anyhow::bail!("params.{name}: the query returned no rows (was the seed loaded? --setup)");
                }
                Pool::Rows(values)
            }
        };
        pools.0.insert(name.clone(), pool);
    }
    Ok(pools)
}

/// The first column as a value: integers and text only, so values bind as
/// `$n::int8` / `$n::text` and inline as literals.
fn first_column(row: &tokio_postgres::Row) -> std::result::Result<Value, String> {
    let ty = row.columns().first().map(|c| c.type_().clone()).ok_or("no columns")?;
    let v = match ty {
        Type::INT2 => row.try_get::<_, i16>(0).map(|v| Value::Int(v.into())),
        Type::INT4 => row.try_get::<_, i32>(0).map(|v| Value::Int(v.into())),
        Type::INT8 => row.try_get::<_, i64>(0).map(Value::Int),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => row.try_get::<_, String>(0).map(Value::Text),
        other => {
            return Err(format!(
                "column type {other} is neither an integer nor text: cast it in the query"
            ))
        }
    };
    v.map_err(|e| e.to_string())
}

/// Runs `scenario` against `target`.
pub async fn run(
    scenario: Arc<Scenario>,
    pools: Arc<Pools>,
    target: &Target,
    seed: u64,
    monitor: Option<&str>,
    progress: Option<ProgressBar>,
) -> RunResult {
    let collected = Arc::new(Mutex::new(Collected {
        paths: (0..scenario.paths.len()).map(|_| PathStats::default()).collect(),
        samples: Vec::new(),
    }));
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(scenario.duration);
    let sampler = tokio::spawn(sample_machine(monitor.map(str::to_owned), started, deadline));
    let ticker = progress.clone().map(|bar| {
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            loop {
                bar.set_position(started.elapsed().as_secs());
                bar.set_message(format!(
                    "ok {}  failed {}",
                    counters.ok.load(Ordering::Relaxed),
                    counters.failed.load(Ordering::Relaxed)
                ));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    });
    let mut users = Vec::with_capacity(scenario.users);
    for u in 0..scenario.users {
        if u > 0 && scenario.spawn_rate > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(1.0 / scenario.spawn_rate)).await;
        }
        if Instant::now() >= deadline {
            break;
        }
        let user = User {
            scenario: Arc::clone(&scenario),
            pools: Arc::clone(&pools),
            conninfo: target.conninfo.clone(),
            collected: Arc::clone(&collected),
            counters: Arc::clone(&counters),
            started,
            deadline,
        };
        let seed = seed ^ (u as u64).wrapping_mul(0x9e37_79b9);
        users.push(tokio::spawn(async move { user.run(seed).await }));
    }
    for u in users {
        let _ = u.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let (activity, cpu) = sampler.await.unwrap_or_default();
    let mut c = lock(&collected);
    let samples = std::mem::take(&mut c.samples);
    let rows = scenario
        .paths
        .iter()
        .zip(c.paths.iter())
        .map(|(p, s)| Row::new(&target.name, scenario.users, &p.name, s, seconds))
        .collect();
    let cpu_busy_average = if cpu.is_empty() {
        0.0
    } else {
        cpu.iter().sum::<f64>() / cpu.len() as f64
    };
    RunResult {
        target: target.name.clone(),
        users: scenario.users,
        seconds,
        rows,
        samples,
        activity,
        cpu_busy_percent: cpu,
        cpu_busy_average,
        load_average: Machine::load_average(),
    }
}

/// Once a second until `deadline`: CPU busy share, and what the monitored database's
/// client backends are doing.
async fn sample_machine(monitor: Option<String>, started: Instant, deadline: Instant) -> (Vec<Activity>, Vec<f64>) {
    let mut activity = Vec::new();
    let mut cpu = Vec::new();
    let mut sampler = CpuSampler::new();
    let db = match &monitor {
        Some(conninfo) => match tokio_postgres::connect(conninfo, NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                Some(client)
            }
            Err(e) => {
                eprintln!("sluice-bench: cannot monitor pg_stat_activity: {e}");
                None
            }
        },
        None => None,
    };
    let mut tick = tokio::time::interval_at((started + Duration::from_secs(1)).into(), Duration::from_secs(1));
    while Instant::now() < deadline {
        tick.tick().await;
        cpu.push(sampler.busy_percent());
        if let Some(db) = &db {
            let second = started.elapsed().as_secs_f64();
            if let Ok(a) = Activity::sample(db, second).await {
                activity.push(a);
            }
        }
    }
    (activity, cpu)
}

struct User {
    scenario: Arc<Scenario>,
    pools: Arc<Pools>,
    conninfo: String,
    collected: Arc<Mutex<Collected>>,
    counters: Arc<Counters>,
    started: Instant,
    deadline: Instant,
}

impl User {
    async fn run(&self, seed: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut kept: Option<Conn> = None;
        let first: Vec<usize> = (0..self.scenario.paths.len())
            .filter(|i| self.scenario.paths[*i].on_start)
            .collect();
        let mut first = first.into_iter();
        while Instant::now() < self.deadline {
            let Some(i) = first.next().or_else(|| self.scenario.pick(&mut rng)) else {
                return;
            };
            let path = &self.scenario.paths[i];
            let bindings = self.pools.draw(&mut rng);
            let begin = Instant::now();
            let reuse = path.connect == Connect::Reuse;
            let held = if reuse { kept.take() } else { None };
            let timeout = begin + Duration::from_secs_f64(self.scenario.request_timeout);
            let drained = self.deadline + Duration::from_secs_f64(self.scenario.drain);
            let page = page(&self.conninfo, path, &bindings, self.scenario.protocol, held);
            let outcome = match tokio::time::timeout_at(timeout.min(drained).into(), page).await {
                Ok((Ok(()), conn)) => {
                    if reuse {
                        kept = conn;
                    }
                    Outcome::Ok
                }
                Ok((Err(cause), _)) => Outcome::Failed(cause),
                // The page's connection is dropped: the pooler ends its transaction.
                Err(_) if timeout <= drained => Outcome::Failed(Cause::RequestTimeout),
                Err(_) => Outcome::Unfinished,
            };
            self.record(i, begin, outcome);
            if path.think > 0.0 {
                let until = (Instant::now() + Duration::from_secs_f64(path.think)).min(self.deadline);
                tokio::time::sleep_until(until.into()).await;
            }
        }
    }

    fn record(&self, path: usize, begin: Instant, outcome: Outcome) {
        let latency = begin.elapsed();
        match outcome {
            Outcome::Ok => self.counters.ok.fetch_add(1, Ordering::Relaxed),
            Outcome::Failed(_) => self.counters.failed.fetch_add(1, Ordering::Relaxed),
            Outcome::Unfinished => 0,
        };
        let start_s = begin.duration_since(self.started).as_secs_f64();
        let mut c = lock(&self.collected);
        c.paths[path].record(start_s as usize, latency.as_micros() as u64, outcome);
        c.samples.push(Sample {
            path,
            start_s,
            latency_ms: latency.as_secs_f64() * 1000.0,
            outcome,
        });
    }
}

/// A connection and the statements prepared on it (`protocol = "prepared"`).
struct Conn {
    client: Client,
    prepared: HashMap<String, Statement>,
}

/// Loads one page: connects unless given a connection, runs its steps.
async fn page(
    conninfo: &str,
    path: &PathSpec,
    bindings: &Bindings,
    protocol: Protocol,
    conn: Option<Conn>,
) -> (std::result::Result<(), Cause>, Option<Conn>) {
    let mut conn = match conn {
        Some(c) if !c.client.is_closed() => c,
        _ => match tokio_postgres::connect(conninfo, NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Conn {
                    client,
                    prepared: HashMap::new(),
                }
            }
            Err(e) => return (Err(Cause::of(&e)), None),
        },
    };
    let mut fetched: HashMap<&str, Vec<Value>> = HashMap::new();
    for step in &path.steps {
        let result = match step {
            Step::Think { think } => {
                tokio::time::sleep(Duration::from_secs_f64(*think)).await;
                Ok(())
            }
            Step::Sql {
                sql,
                for_each: Some(each),
                ..
            } => {
                let values = fetched.get(each.as_str()).cloned().unwrap_or_default();
                let mut result = Ok(());
                for v in &values {
                    let r = render(sql, bindings, Some((each, v)), protocol);
                    if let Err(e) = execute(&mut conn, &r, protocol, false).await {
                        result = Err(e);
                        break;
                    }
                }
                result
            }
            Step::Sql { sql, fetch, .. } => {
                let r = render(sql, bindings, None, protocol);
                match execute(&mut conn, &r, protocol, fetch.is_some()).await {
                    Ok(rows) => {
                        if let Some(name) = fetch {
                            fetched.insert(name, rows);
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(cause) = result {
            return (Err(cause), Some(conn));
        }
    }
    (Ok(()), Some(conn))
}

/// Sends one statement; returns the first column of its rows when `want_rows`.
async fn execute(
    conn: &mut Conn,
    r: &Rendered,
    protocol: Protocol,
    want_rows: bool,
) -> std::result::Result<Vec<Value>, Cause> {
    let params: Vec<&(dyn ToSql + Sync)> = r
        .args
        .iter()
        .map(|v| match v {
            Value::Int(i) => i as &(dyn ToSql + Sync),
            Value::Text(t) => t as &(dyn ToSql + Sync),
        })
        .collect();
    let rows = match protocol {
        Protocol::Simple if !want_rows => {
            // Several statements in one step are one Query message, as the app sent them.
            conn.client.batch_execute(&r.sql).await.map_err(|e| Cause::of(&e))?;
            return Ok(Vec::new());
        }
        Protocol::Simple => {
            let messages = conn.client.simple_query(&r.sql).await.map_err(|e| Cause::of(&e))?;
            return Ok(messages
                .iter()
                .filter_map(|m| match m {
                    // Inlined later as a quoted literal, which PostgreSQL coerces to
                    // the column's type, integer or text.
                    SimpleQueryMessage::Row(row) => row.get(0).map(|v| Value::Text(v.to_owned())),
                    _ => None,
                })
                .collect());
        }
        Protocol::Extended => {
            let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
                .iter()
                .zip(&r.args)
                .map(|(p, v)| {
                    (
                        *p,
                        if matches!(v, Value::Int(_)) {
                            Type::INT8
                        } else {
                            Type::TEXT
                        },
                    )
                })
                .collect();
            conn.client
                .query_typed(&r.sql, &typed)
                .await
                .map_err(|e| Cause::of(&e))?
        }
        Protocol::Prepared => {
            let statement = match conn.prepared.get(&r.sql) {
                Some(s) => s.clone(),
                None => {
                    let s = conn.client.prepare(&r.sql).await.map_err(|e| Cause::of(&e))?;
                    conn.prepared.insert(r.sql.clone(), s.clone());
                    s
                }
            };
            conn.client
                .query(&statement, &params)
                .await
                .map_err(|e| Cause::of(&e))?
        }
    };
    if !want_rows {
        return Ok(Vec::new());
    }
    rows.iter()
        .map(first_column)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            eprintln!("sluice-bench: fetch: {e}");
            Cause::ScenarioError
        })
}
