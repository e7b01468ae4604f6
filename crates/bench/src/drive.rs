//! One benchmark session: seed once, draw parameters once, run each (target, users)
//! in turn with the same seed and duration, and write the report files.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::report::{self, Report, LATENCY_MEASURED};
use crate::runner::{self, RunResult, Target};
use crate::scenario::Scenario;
use crate::system::Machine;

/// What to run and where.
pub struct Plan<'a> {
    pub scenario: Scenario,
    /// Runs, in order: each target at each user count.
    pub runs: Vec<(Target, usize)>,
    /// Where setup SQL and `[params]` queries run (PostgreSQL directly); None: no
    /// setup, and the params are read through the first target.
    pub setup: Option<String>,
    /// Connection for sampling `pg_stat_activity` during runs.
    pub monitor: Option<String>,
    pub seed: u64,
    pub command: String,
    pub pooler_settings: Option<String>,
    /// Called between runs (checkpoint).
    pub between: Option<&'a dyn Fn() -> Result<()>>,
}

/// Runs the plan; returns the report.
pub async fn execute(plan: Plan<'_>) -> Result<Report> {
    let mut scenario = plan.scenario;
    let started_at = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    if let (Some(conninfo), Some(sql)) = (&plan.setup, scenario.setup_sql()) {
        let spinner = spinner(format!("seeding {} (setup SQL)", scenario.name));
        let began = std::time::Instant::now();
        let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
            .await
            .context("setup: cannot connect")?;
        tokio::spawn(conn);
        client.batch_execute(&sql).await.context("setup SQL failed")?;
        spinner.finish_and_clear();
        eprintln!("sluice-bench: seeded in {:.0} s", began.elapsed().as_secs_f64());
    }
    let params_on = plan
        .setup
        .clone()
        .or_else(|| plan.runs.first().map(|(t, _)| t.conninfo.clone()))
        .unwrap_or_default();
    let pools = Arc::new(runner::load_params(&scenario, &params_on).await?);
    let mut results: Vec<RunResult> = Vec::new();
    for (i, (target, users)) in plan.runs.iter().enumerate() {
        if i > 0 {
            if let Some(between) = plan.between {
                between()?;
            }
        }
        scenario.users = *users;
        eprintln!(
            "sluice-bench: {} on {} ({} users, {} s)",
            scenario.name, target.name, users, scenario.duration
        );
        let bar =
            ProgressBar::new(scenario.duration.ceil() as u64).with_prefix(format!("{} {users} users", target.name));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>20} [{bar:40}] {pos:>4}/{len} s  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let result = runner::run(
            Arc::new(scenario.clone()),
            Arc::clone(&pools),
            target,
            plan.seed,
            plan.monitor.as_deref(),
            Some(bar),
        )
        .await;
        let (ok, failed) = result.rows.iter().fold((0, 0), |(o, f), r| (o + r.ok, f + r.failed));
        eprintln!(
            "sluice-bench: {} at {users} users: {ok} ok, {failed} failed, CPU busy {:.0} %",
            target.name, result.cpu_busy_average
        );
        results.push(result);
    }
    Ok(Report {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        started_at,
        command: plan.command,
        protocol: scenario.protocol,
        duration_s: scenario.duration,
        request_timeout_s: scenario.request_timeout,
        machine: Machine::describe(),
        pooler_settings: plan.pooler_settings,
        paths: scenario.paths.iter().map(|p| p.name.clone()).collect(),
        runs: results,
        latency_measured: LATENCY_MEASURED,
    })
}

fn spinner(message: String) -> ProgressBar {
    let s = ProgressBar::new_spinner().with_message(message);
    s.enable_steady_tick(std::time::Duration::from_millis(200));
    s
}

/// Writes report.csv, report.json, report.html, samples.csv and each chart as an SVG
/// file (under `charts/`) into `out`.
pub fn write(report: &Report, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let write = |name: &str, text: &str| {
        std::fs::write(out.join(name), text).with_context(|| format!("cannot write {}", out.join(name).display()))
    };
    write("report.csv", &report::csv(&report.rows()))?;
    write("report.json", &serde_json::to_string_pretty(report)?)?;
    let (html, charts) = crate::plot::html(report)?;
    write("report.html", &html)?;
    std::fs::create_dir_all(out.join("charts"))?;
    for c in charts {
        write(&format!("charts/{}", c.file), &c.svg)?;
    }
    write("samples.csv", &report.samples_csv())?;
    Ok(())
}
