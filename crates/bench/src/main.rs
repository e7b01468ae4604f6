//! `sluice-bench run SCENARIO --target NAME=CONNINFO [...]`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use sluice_bench::report::{self, Row};
use sluice_bench::runner::{self, Target};
use sluice_bench::scenario::Scenario;

#[derive(Parser)]
#[command(name = "sluice-bench", version, about = "Capacity benchmarks for PostgreSQL poolers")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs a scenario against each target in turn, with the same seed.
    Run {
        /// Scenario file (benches/scenarios/*.toml).
        scenario: PathBuf,
        /// NAME=CONNINFO (libpq string or URL); repeat for several targets.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// Run the scenario's setup SQL here first (usually PostgreSQL directly).
        #[arg(long)]
        setup: Option<String>,
        /// Override the scenario's number of users.
        #[arg(long)]
        users: Option<usize>,
        /// Override the scenario's duration, seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// Leave out paths with these tags (e.g. export).
        #[arg(long = "exclude-tag")]
        exclude_tags: Vec<String>,
        /// Directory for report.csv and report.json.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

fn main() -> Result<()> {
    let Cmd::Run {
        scenario,
        targets,
        setup,
        users,
        duration,
        exclude_tags,
        out,
        seed,
    } = Cli::parse().cmd;
    let mut s = Scenario::load(&scenario)?;
    s.exclude_tags(&exclude_tags);
    if let Some(u) = users {
        s.users = u;
    }
    if let Some(d) = duration {
        s.duration = d;
    }
    let targets: Vec<Target> = targets
        .iter()
        .map(|t| match t.split_once('=') {
            Some((name, conninfo)) if !name.is_empty() && !name.contains(' ') => Ok(Target {
                name: name.to_owned(),
                conninfo: conninfo.to_owned(),
            }),
            _ => bail!("--target {t}: expected NAME=CONNINFO"),
        })
        .collect::<Result<_>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let rows: Vec<Row> = runtime.block_on(async {
        if let (Some(conninfo), Some(sql)) = (&setup, &s.setup) {
            let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
                .await
                .context("--setup: cannot connect")?;
            tokio::spawn(conn);
            client.batch_execute(sql).await.context("setup SQL failed")?;
        }
        let s = Arc::new(s);
        let mut rows = Vec::new();
        for t in &targets {
            eprintln!(
                "sluice-bench: {} on {} ({} users, {} s)",
                s.name, t.name, s.users, s.duration
            );
            rows.extend(runner::run(Arc::clone(&s), t, seed).await);
        }
        Ok::<_, anyhow::Error>(rows)
    })?;
    print!("{}", report::table(&rows));
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("report.csv"), report::csv(&rows))?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let json = serde_json::json!({ "scenario": scenario, "load_average": load.trim(), "rows": rows });
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&json)?)?;
    eprintln!("sluice-bench: report.csv and report.json in {}", out.display());
    Ok(())
}
