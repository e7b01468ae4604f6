//! sluice-bench against a real PostgreSQL through Sluice: failures are classified
//! from what the pooler and the server really said.

mod support;

use std::sync::Arc;

use anyhow::Result;
use sluice_bench::runner::{load_params, run, Target};
use sluice_bench::scenario::Scenario;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_classified_from_real_errors_and_the_report_has_its_shape() -> Result<()> {
    let pg = postgres()?;
    // Pool of 1, a 1 s queue limit, and a client holding the only server.
    let s = Sluice::start(
        &pg,
        "auth_type = \"md5\"\npool_mode = \"transaction\"\ndefault_pool_size = 1\nquery_wait_timeout = 1\nquery_wait_notify = 0",
        "",
    )?;
    let (u, p) = PLAIN_USER;
    let holder = connect(&s.url(u, p, "app")).await?;
    holder.batch_execute("BEGIN; SELECT 1").await?;
    let scenario = Scenario::parse(
        r#"
name = "classify"
users = 3
spawn_rate = 100
duration = 2.5
request_timeout = 5
[params]
id = [1, 100]
[[path]]
name = "short"
think = 0.1
steps = [{ sql = "SELECT v FROM items WHERE id = {id}" }]
"#,
        "classify.toml",
    )?;
    let target = Target {
        name: "sluice".into(),
        conninfo: s.url(u, p, "app"),
    };
    let pools = Arc::new(load_params(&scenario, &target.conninfo).await?);
    let rows = run(Arc::new(scenario), pools, &target, 1, None, None).await.rows;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert!(r.requests >= 3, "{r:?}");
    assert_eq!(r.ok, 0, "nothing can succeed while the only server is held: {r:?}");
    assert_eq!(r.failures["query_wait_timeout"], r.failed, "{r:?}");
    holder.batch_execute("COMMIT").await?;

    // A page slower than request_timeout is a timeout; a failing statement a server
    // error; the others succeed with latencies.
    let scenario = Scenario::parse(
        r#"
name = "mixed"
users = 2
spawn_rate = 100
duration = 2
request_timeout = 0.5
[[path]]
name = "slow"
steps = [{ sql = "BEGIN" }, { think = 0.2 }, { sql = "SELECT pg_sleep(1)" }, { sql = "COMMIT" }]
[[path]]
name = "broken"
steps = [{ sql = "SELECT 1/0" }]
[[path]]
name = "fine"
connect = "reuse"
steps = [{ sql = "SELECT 1" }]
"#,
        "mixed.toml",
    )?;
    // Straight to PostgreSQL: the pool of 1 above would turn everything into waits.
    let direct = Target {
        name: "direct".into(),
        conninfo: format!("host=127.0.0.1 port={} user={u} password={p} dbname=app", pg.port()),
    };
    let pools = Arc::new(load_params(&scenario, &direct.conninfo).await?);
    let rows = run(Arc::new(scenario), pools, &direct, 2, None, None).await.rows;
    let by = |name: &str| {
        rows.iter()
            .find(|r| r.path == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name}"))
    };
    let slow = by("slow");
    assert!(
        slow.failed > 0 && slow.failures["request_timeout"] == slow.failed,
        "{slow:?}"
    );
    let broken = by("broken");
    assert!(
        broken.failed > 0 && broken.failures["server_error"] == broken.failed,
        "{broken:?}"
    );
    let fine = by("fine");
    assert!(
        fine.ok > 0 && fine.failed == 0 && fine.p50_ms > 0.0 && fine.p99_ms >= fine.p50_ms,
        "{fine:?}"
    );
    let csv = sluice_bench::report::csv(&rows);
    assert!(csv.starts_with("target,users,path,requests,ok,failed,query_wait_timeout,pooler_error,server_error,request_timeout,connection_error,scenario_error,unfinished,p50_ms"), "{csv}");
    assert_eq!(csv.lines().count(), 4);
    Ok(())
}

/// The CI smoke run: `compare` on the django-incident scenario with a tiny seed, for
/// seconds, through every target this machine has; checks the report's shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_smoke_run_writes_every_report_file() -> Result<()> {
    use sluice_bench::compare::{find_pgbouncer, Kind, PoolBudget, Stack};
    use sluice_bench::drive::{execute, write, Plan};

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/scenarios/django-incident.toml");
    let mut scenario = Scenario::load(&path)?;
    for (name, n) in [
        ("users", 200),
        ("projects", 30),
        ("work_items_per_project", 4),
        ("price_items_per_work_item", 2),
        ("audit_rows", 2000),
    ] {
        scenario.vars.insert(name.into(), n);
    }
    // The export thinks for 120 s and the cost summary for 3 s: leave them out of a
    // seconds-long run.
    scenario.exclude_tags(&["export".into()]);
    scenario.paths.retain(|p| p.name != "cost_summary");
    scenario.duration = 4.0;
    scenario.spawn_rate = 50.0;
    for p in &mut scenario.paths {
        p.think = 0.05;
    }
    let paths: Vec<String> = scenario.paths.iter().map(|p| p.name.clone()).collect();

    let pgbouncer = find_pgbouncer(None);
    let mut kinds = vec![Kind::Direct, Kind::Sluice];
    if pgbouncer.is_some() {
        kinds.insert(1, Kind::Pgbouncer);
    } else {
        eprintln!("pgbouncer not installed: comparing direct and sluice only");
    }
    let mut stack = Stack::start_postgres(10)?;
    let budget = PoolBudget {
        default_pool_size: 3,
        reserve_pool_size: 1,
        ..PoolBudget::default()
    };
    stack.start_poolers(
        &kinds,
        &budget,
        std::path::Path::new(env!("CARGO_BIN_EXE_sluice")),
        pgbouncer.as_deref(),
    )?;
    assert!(stack.ini.contains("default_pool_size = 3") && stack.ini.contains("query_wait_timeout = 120"));
    let runs = [4, 6]
        .iter()
        .flat_map(|u| stack.targets(&kinds).into_iter().map(move |t| (t, *u)))
        .collect();
    let report = execute(Plan {
        scenario,
        runs,
        setup: Some(stack.direct_conninfo()),
        monitor: Some(stack.admin_conninfo.clone()),
        seed: 7,
        command: "test".into(),
        pooler_settings: Some(stack.ini.clone()),
        between: Some(&|| stack.settle()),
    })
    .await?;

    assert_eq!(report.runs.len(), kinds.len() * 2);
    for run in &report.runs {
        assert_eq!(run.rows.len(), paths.len(), "one row per path: {run:?}");
        for row in &run.rows {
            assert!(row.requests > 0, "every path ran: {row:?}");
            assert_eq!(row.failed, 0, "nothing fails unloaded: {row:?}");
            assert!(
                row.p50_ms > 0.0 && row.p50_ms <= row.p95_ms && row.p95_ms <= row.max_ms,
                "{row:?}"
            );
        }
        assert!(!run.cpu_busy_percent.is_empty(), "CPU recorded every second");
        assert!(
            run.activity
                .iter()
                .any(|a| a.active + a.idle + a.idle_in_transaction > 0),
            "pg_stat_activity sampled: {:?}",
            run.activity
        );
        let ok: u64 = run.rows.iter().map(|r| r.ok).sum();
        assert_eq!(
            run.samples.len() as u64,
            ok + run.rows.iter().map(|r| r.unfinished).sum::<u64>()
        );
    }
    let dashboard = report
        .rows()
        .into_iter()
        .find(|r| r.path == "dashboard")
        .expect("dashboard row");
    assert!(dashboard.timeline.iter().map(|s| s.requests).sum::<u64>() == dashboard.requests);

    let out = tempfile::tempdir()?;
    write(&report, out.path())?;
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json"))?)?;
    assert_eq!(json["scenario"], "django-incident");
    assert_eq!(json["runs"].as_array().map(Vec::len), Some(kinds.len() * 2));
    assert!(json["machine"]["cores"].as_u64() >= Some(1));
    assert!(json["runs"][0]["rows"][0]["p95_ms"].is_number());
    let csv = std::fs::read_to_string(out.path().join("report.csv"))?;
    assert_eq!(csv.lines().count(), 1 + kinds.len() * 2 * paths.len());
    let html = std::fs::read_to_string(out.path().join("report.html"))?;
    // Per user count a p95 and a failure chart; per run a timeline and an activity chart.
    assert_eq!(html.matches("<svg").count(), 2 * 2 + kinds.len() * 2 * 2, "charts");
    for p in &paths {
        assert!(html.contains(p.as_str()), "{p} in the HTML");
    }
    let charts = std::fs::read_dir(out.path().join("charts"))?.count();
    assert_eq!(charts, 2 * 2 + kinds.len() * 2 * 2, "each chart also as a file");
    assert!(out.path().join("charts/timeline-sluice-6-users.svg").exists());
    let samples = std::fs::read_to_string(out.path().join("samples.csv"))?;
    assert!(samples.starts_with("target,users,path,start_s,latency_ms,failure\n"));
    Ok(())
}

/// Every scenario shipped in benches/scenarios parses.
#[test]
fn shipped_scenarios_parse() -> Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            Scenario::load(&path)?;
            n += 1;
        }
    }
    assert!(n >= 2);
    Ok(())
}
