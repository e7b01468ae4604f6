//! `sluice-bench run SCENARIO --target NAME=CONNINFO [...]` against running targets;
//! `sluice-bench compare SCENARIO` starts PostgreSQL, PgBouncer and Sluice itself.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use sluice_bench::compare::{self, Kind, PoolBudget, Stack};
use sluice_bench::drive::{self, Plan};
use sluice_bench::runner::Target;
use sluice_bench::scenario::{Protocol, Scenario};

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
        #[command(flatten)]
        common: Common,
        /// NAME=CONNINFO (libpq string or URL); repeat for several targets.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// Run the scenario's setup SQL and [params] queries here first (usually
        /// PostgreSQL directly).
        #[arg(long)]
        setup: Option<String>,
        /// Sample pg_stat_activity here during runs (default: the --setup connection).
        #[arg(long)]
        monitor: Option<String>,
        /// Override the scenario's number of users; a list runs each in turn.
        #[arg(long, value_delimiter = ',')]
        users: Vec<usize>,
    },
    /// Starts a throwaway PostgreSQL, seeds it, starts PgBouncer (if installed) and
    /// Sluice from one pgbouncer.ini, and runs the scenario against each in turn.
    Compare {
        #[command(flatten)]
        common: Common,
        /// User counts to run, each against every target.
        #[arg(long, value_delimiter = ',', default_value = "20,50,100")]
        users: Vec<usize>,
        /// Targets, in order.
        #[arg(long, value_delimiter = ',', default_value = "pgbouncer,sluice")]
        targets: Vec<Kind>,
        #[arg(long, default_value = "transaction")]
        pool_mode: String,
        #[arg(long, default_value_t = 25)]
        pool_size: u32,
        #[arg(long, default_value_t = 5)]
        reserve_pool: u32,
        #[arg(long, default_value_t = 5.0)]
        reserve_pool_timeout: f64,
        /// Seconds (PgBouncer's default, as in the incident).
        #[arg(long, default_value_t = 120)]
        query_wait_timeout: u32,
        /// More pgbouncer.ini settings for both poolers: NAME=VALUE.
        #[arg(long = "set")]
        settings: Vec<String>,
        /// Settings for Sluice only (its own, e.g. overload_protection=off): NAME=VALUE.
        #[arg(long = "sluice-set")]
        sluice_settings: Vec<String>,
        /// A lane for Sluice's `[lanes]` section: NAME=DEFINITION, e.g.
        /// `reports=tag=controller:export max_servers=8`.
        #[arg(long = "sluice-lane")]
        sluice_lanes: Vec<String>,
        /// The sluice binary (default: next to this one, then PATH).
        #[arg(long)]
        sluice: Option<PathBuf>,
        /// The pgbouncer binary (default: PATH, /usr/sbin).
        #[arg(long)]
        pgbouncer: Option<PathBuf>,
    },
}

#[derive(Args)]
struct Common {
    /// Scenario file (benches/scenarios/*.toml).
    scenario: PathBuf,
    /// Override the scenario's duration, seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Override the scenario's protocol.
    #[arg(long, value_enum)]
    protocol: Option<Protocol>,
    /// Override a row count of the scenario's [vars]: NAME=N.
    #[arg(long = "var")]
    vars: Vec<String>,
    /// Leave out paths with these tags (e.g. export).
    #[arg(long = "exclude-tag")]
    exclude_tags: Vec<String>,
    /// Tag every statement as Django's sqlcommenter middleware does
    /// (`/*controller='<path>',route='...'*/`).
    #[arg(long)]
    sqlcommenter: bool,
    /// Directory for report.{csv,json,html} and samples.csv.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

impl Common {
    fn scenario(&self) -> Result<Scenario> {
        let mut s = Scenario::load(&self.scenario)?;
        s.exclude_tags(&self.exclude_tags);
        if self.sqlcommenter {
            s.sqlcommenter();
        }
        if s.paths.is_empty() {
            bail!("--exclude-tag left no paths to run");
        }
        if let Some(d) = self.duration {
            s.duration = d;
        }
        if let Some(p) = self.protocol {
            s.protocol = p;
        }
        for v in &self.vars {
            let (name, value) = v.split_once('=').context("--var: expected NAME=N")?;
            if !s.vars.contains_key(name) {
                bail!("--var {name}: the scenario's [vars] has no '{name}'");
            }
            let n = value
                .parse()
                .with_context(|| format!("--var {name}: '{value}' is not an integer"))?;
            s.vars.insert(name.to_owned(), n);
        }
        Ok(s)
    }
}

fn main() -> Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (report, out) = match Cli::parse().cmd {
        Cmd::Run {
            common,
            targets,
            setup,
            monitor,
            users,
        } => {
            let scenario = common.scenario()?;
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
            let users = if users.is_empty() { vec![scenario.users] } else { users };
            let runs = users
                .iter()
                .flat_map(|u| targets.iter().map(move |t| (t.clone(), *u)))
                .collect();
            let plan = Plan {
                scenario,
                runs,
                monitor: monitor.or_else(|| setup.clone()),
                setup,
                seed: common.seed,
                command,
                pooler_settings: None,
                between: None,
            };
            (runtime.block_on(drive::execute(plan))?, common.out)
        }
        Cmd::Compare {
            common,
            users,
            targets,
            pool_mode,
            pool_size,
            reserve_pool,
            reserve_pool_timeout,
            query_wait_timeout,
            settings,
            sluice_settings,
            sluice_lanes,
            sluice,
            pgbouncer,
        } => {
            let scenario = common.scenario()?;
            let name_value = |flag: &str, s: &String| match s.split_once('=') {
                Some((k, v)) => Ok(format!("{} = {}", k.trim(), v.trim())),
                None => bail!("{flag} {s}: expected NAME=VALUE"),
            };
            let budget = PoolBudget {
                sluice_extra: sluice_settings
                    .iter()
                    .map(|s| name_value("--sluice-set", s))
                    .collect::<Result<_>>()?,
                sluice_lanes: sluice_lanes
                    .iter()
                    .map(|s| name_value("--sluice-lane", s))
                    .collect::<Result<_>>()?,
                pool_mode,
                default_pool_size: pool_size,
                reserve_pool_size: reserve_pool,
                reserve_pool_timeout,
                query_wait_timeout,
                extra: settings.iter().map(|s| name_value("--set", s)).collect::<Result<_>>()?,
                ..PoolBudget::default()
            };
            let mut targets = targets;
            let pgbouncer = compare::find_pgbouncer(pgbouncer);
            if pgbouncer.is_none() && targets.contains(&Kind::Pgbouncer) {
                eprintln!(
                    "sluice-bench: PgBouncer is not installed (apt-get install -y pgbouncer): comparing without it"
                );
                targets.retain(|k| *k != Kind::Pgbouncer);
            }
            let sluice = if targets.contains(&Kind::Sluice) {
                compare::find_sluice(sluice)?
            } else {
                PathBuf::new()
            };
            let mut stack = Stack::start_postgres(users.iter().copied().max().unwrap_or(0))?;
            stack.start_poolers(&targets, &budget, &sluice, pgbouncer.as_deref())?;
            let report = runtime.block_on(drive::execute(Plan {
                scenario,
                runs: users
                    .iter()
                    .flat_map(|u| stack.targets(&targets).into_iter().map(move |t| (t, *u)))
                    .collect(),
                setup: Some(stack.direct_conninfo()),
                monitor: Some(stack.admin_conninfo.clone()),
                seed: common.seed,
                command,
                pooler_settings: Some(stack.ini.clone()),
                between: Some(&|| stack.settle()),
            }))?;
            (report, common.out)
        }
    };
    print!("{}", report.table());
    drive::write(&report, &out)?;
    eprintln!(
        "sluice-bench: report.html, report.csv, report.json, samples.csv and charts/ in {}",
        out.display()
    );
    Ok(())
}
