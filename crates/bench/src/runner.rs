//! Runs a scenario against one target: `users` closed-loop users, started at
//! `spawn_rate`, each loading pages until `duration` is over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use std::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use crate::outcome::Cause;
use crate::report::{PathStats, Row};
use crate::scenario::{Connect, Scenario, Step};

/// Where the load goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// A libpq connection string or URL.
    pub conninfo: String,
}

type Stats = Mutex<Vec<PathStats>>;

fn lock(stats: &Stats) -> std::sync::MutexGuard<'_, Vec<PathStats>> {
    // A panicking user task cannot leave the counters half-written: take them anyway.
    stats.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `scenario` against `target`; returns one report row per path.
pub async fn run(scenario: Arc<Scenario>, target: &Target, seed: u64) -> Vec<Row> {
    let stats = Arc::new(Mutex::new(
        (0..scenario.paths.len())
            .map(|_| PathStats::default())
            .collect::<Vec<_>>(),
    ));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(scenario.duration);
    let mut users = Vec::with_capacity(scenario.users);
    for u in 0..scenario.users {
        if u > 0 && scenario.spawn_rate > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(1.0 / scenario.spawn_rate)).await;
        }
        if Instant::now() >= deadline {
            break;
        }
        let (scenario, stats, conninfo) = (Arc::clone(&scenario), Arc::clone(&stats), target.conninfo.clone());
        users.push(tokio::spawn(async move {
            user(
                &scenario,
                &conninfo,
                &stats,
                started,
                deadline,
                seed ^ (u as u64).wrapping_mul(0x9e37_79b9),
            )
            .await
        }));
    }
    for u in users {
        let _ = u.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = lock(&stats);
    scenario
        .paths
        .iter()
        .zip(stats.iter())
        .map(|(p, s)| Row::new(&target.name, &p.name, s, seconds))
        .collect()
}

async fn user(scenario: &Scenario, conninfo: &str, stats: &Stats, started: Instant, deadline: Instant, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kept: Option<Client> = None;
    let timeout = Duration::from_secs_f64(scenario.request_timeout);
    while Instant::now() < deadline {
        let i = scenario.pick(&mut rng);
        let path = &scenario.paths[i];
        // Rendered before the clock starts: only the database's work is timed.
        let steps: Vec<Step> = path
            .steps
            .iter()
            .map(|s| match s {
                Step::Sql { sql } => Step::Sql {
                    sql: scenario.render(sql, &mut rng),
                },
                t => t.clone(),
            })
            .collect();
        let begin = Instant::now();
        let reuse = path.connect == Connect::Reuse;
        let outcome =
            match tokio::time::timeout(timeout, page(conninfo, &steps, if reuse { kept.take() } else { None })).await {
                Ok((result, client)) => {
                    if reuse && result.is_ok() {
                        kept = client;
                    }
                    result
                }
                // The page's connection is dropped: the pooler ends its transaction.
                Err(_) => Err(Cause::RequestTimeout),
            };
        let micros = begin.elapsed().as_micros() as u64;
        let second = begin.duration_since(started).as_secs() as usize;
        lock(stats)[i].record(second, micros, outcome);
        if path.think > 0.0 {
            let until = (Instant::now() + Duration::from_secs_f64(path.think)).min(deadline);
            tokio::time::sleep_until(until.into()).await;
        }
    }
}

/// Loads one page: connects unless given a connection, runs its steps.
async fn page(conninfo: &str, steps: &[Step], client: Option<Client>) -> (Result<(), Cause>, Option<Client>) {
    let client = match client {
        Some(c) if !c.is_closed() => c,
        _ => match tokio_postgres::connect(conninfo, NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                client
            }
            Err(e) => return (Err(Cause::of(&e)), None),
        },
    };
    for step in steps {
        match step {
            Step::Sql { sql } => {
                if let Err(e) = client.batch_execute(sql).await {
                    return (Err(Cause::of(&e)), Some(client));
                }
            }
            Step::Think { think } => tokio::time::sleep(Duration::from_secs_f64(*think)).await,
        }
    }
    (Ok(()), Some(client))
}
