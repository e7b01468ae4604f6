//! sluice-bench against a real PostgreSQL through Sluice: failures are classified
//! from what the pooler and the server really said.

mod support;

use std::sync::Arc;

use anyhow::Result;
use sluice_bench::runner::{run, Target};
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
    let rows = run(Arc::new(scenario), &target, 1).await;
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
    let rows = run(Arc::new(scenario), &direct, 2).await;
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
    assert!(csv.starts_with("target,path,requests,ok,failed,query_wait_timeout,pooler_error,server_error,request_timeout,connection_error,p50_ms"), "{csv}");
    assert_eq!(csv.lines().count(), 4);
    Ok(())
}
