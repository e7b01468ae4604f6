//! Per target × path: requests, failures by cause, latency percentiles from HDR
//! histograms, requests per second; written as a terminal table, CSV and JSON.
//!
//! Latency is measured closed-loop from the user's point of view: from the moment a
//! user starts a page until its last statement completes, including the connect (and
//! so the pooler's login and queue wait) when the page opens its own connection.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::outcome::{Cause, Outcome};

/// Latencies and outcomes of one path.
pub struct PathStats {
    /// Microseconds, 1 µs to 1 hour, 3 significant digits.
    pub ok: Histogram<u64>,
    pub failed: BTreeMap<Cause, u64>,
    pub unfinished: u64,
    /// Per second since the start, by when pages started.
    pub timeline: Vec<Second>,
}

/// One second of one path: pages started, how many failed, and the latency of those
/// that succeeded.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Second {
    pub requests: u64,
    pub failures: u64,
    pub mean_ms: f64,
    pub max_ms: f64,
}

impl Default for PathStats {
    fn default() -> Self {
        PathStats {
            ok: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
            failed: BTreeMap::new(),
            unfinished: 0,
            timeline: Vec::new(),
        }
    }
}

impl PathStats {
    pub fn record(&mut self, second: usize, micros: u64, outcome: Outcome) {
        if outcome == Outcome::Unfinished {
            self.unfinished += 1;
            return;
        }
        if self.timeline.len() <= second {
            self.timeline.resize(second + 1, Second::default());
        }
        let s = &mut self.timeline[second];
        s.requests += 1;
        match outcome {
            Outcome::Ok => {
                let _ = self.ok.record(micros.clamp(1, 3_600_000_000));
                let ms = micros as f64 / 1000.0;
                let ok_before = (s.requests - 1 - s.failures) as f64;
                s.mean_ms = (s.mean_ms * ok_before + ms) / (ok_before + 1.0);
                s.max_ms = s.max_ms.max(ms);
            }
            Outcome::Failed(cause) => {
                *self.failed.entry(cause).or_default() += 1;
                s.failures += 1;
            }
            Outcome::Unfinished => {}
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub target: String,
    pub users: usize,
    pub path: String,
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub failures: BTreeMap<&'static str, u64>,
    /// Pages still running when the run ended (not in `requests`).
    pub unfinished: u64,
    /// Milliseconds, successful requests only.
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub requests_per_s: f64,
    pub timeline: Vec<Second>,
}

impl Row {
    pub fn new(target: &str, users: usize, path: &str, s: &PathStats, seconds: f64) -> Row {
        let failed: u64 = s.failed.values().sum();
        let ok = s.ok.len();
        let ms = |q: f64| {
            if ok == 0 {
                0.0
            } else {
                s.ok.value_at_quantile(q) as f64 / 1000.0
            }
        };
        Row {
            target: target.to_owned(),
            users,
            path: path.to_owned(),
            requests: ok + failed,
            ok,
            failed,
            failures: Cause::ALL
                .iter()
                .map(|c| (c.name(), s.failed.get(c).copied().unwrap_or(0)))
                .collect(),
            unfinished: s.unfinished,
            p50_ms: ms(0.5),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            max_ms: if ok == 0 { 0.0 } else { s.ok.max() as f64 / 1000.0 },
            requests_per_s: (ok + failed) as f64 / seconds.max(0.001),
            timeline: s.timeline.clone(),
        }
    }
}

pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:>5} {:<18} {:>8} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>7}  failures",
        "target", "users", "path", "requests", "ok", "failed", "p50 ms", "p95 ms", "p99 ms", "max ms", "req/s"
    );
    for r in rows {
        let mut causes: Vec<String> = r
            .failures
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| format!("{c}={n}"))
            .collect();
        if r.unfinished > 0 {
            causes.push(format!("(unfinished at the end: {})", r.unfinished));
        }
        let _ = writeln!(
            out,
            "{:<12} {:>5} {:<18} {:>8} {:>7} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>7.1}  {}",
            r.target,
            r.users,
            r.path,
            r.requests,
            r.ok,
            r.failed,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            r.max_ms,
            r.requests_per_s,
            causes.join(" ")
        );
    }
    out
}

pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from("target,users,path,requests,ok,failed");
    for c in Cause::ALL {
        let _ = write!(out, ",{}", c.name());
    }
    out.push_str(",unfinished,p50_ms,p95_ms,p99_ms,max_ms,requests_per_s\n");
    for r in rows {
        let _ = write!(
            out,
            "{},{},{},{},{},{}",
            r.target, r.users, r.path, r.requests, r.ok, r.failed
        );
        for c in Cause::ALL {
            let _ = write!(out, ",{}", r.failures.get(c.name()).copied().unwrap_or(0));
        }
        let _ = writeln!(
            out,
            ",{},{:.3},{:.3},{:.3},{:.3},{:.3}",
            r.unfinished, r.p50_ms, r.p95_ms, r.p99_ms, r.max_ms, r.requests_per_s
        );
    }
    out
}

/// A whole report: what ran, where, and every run's results. Serialised as
/// report.json; rendered as the terminal table, report.csv and report.html.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub description: Option<String>,
    /// UTC, when the first run started.
    pub started_at: String,
    pub command: String,
    pub protocol: crate::scenario::Protocol,
    pub duration_s: f64,
    pub request_timeout_s: f64,
    pub machine: crate::system::Machine,
    /// The pooler settings `compare` gave both poolers (the pgbouncer.ini text).
    pub pooler_settings: Option<String>,
    pub paths: Vec<String>,
    pub runs: Vec<crate::runner::RunResult>,
    pub latency_measured: &'static str,
}

/// How latency is measured, stated in every report.
pub const LATENCY_MEASURED: &str = "Closed loop, from the user's point of view: each user waits for its page \
before thinking and loading the next, and a page's latency runs from its start until its last statement \
completed, including opening the connection (and so the pooler's login and queue wait) when the page opens \
its own, and think time inside the page's transactions. Percentiles are over successful pages only; a page \
counts as a success only when every statement completed without error within the request timeout.";

impl Report {
    pub fn rows(&self) -> Vec<Row> {
        self.runs.iter().flat_map(|r| r.rows.iter().cloned()).collect()
    }

    /// The terminal table, with each run's CPU load underneath.
    pub fn table(&self) -> String {
        let mut out = table(&self.rows());
        for r in &self.runs {
            let _ = writeln!(
                out,
                "{} at {} users: {:.0} s, CPU busy {:.0} % of {} cores on average, load average {}",
                r.target, r.users, r.seconds, r.cpu_busy_average, self.machine.cores, r.load_average
            );
        }
        out
    }

    /// Every page request: target, users, path, start, latency, failure cause.
    pub fn samples_csv(&self) -> String {
        let mut out = String::from("target,users,path,start_s,latency_ms,failure\n");
        for r in &self.runs {
            for s in &r.samples {
                let _ = writeln!(
                    out,
                    "{},{},{},{:.3},{:.3},{}",
                    r.target,
                    r.users,
                    self.paths.get(s.path).map(String::as_str).unwrap_or("?"),
                    s.start_s,
                    s.latency_ms,
                    match s.outcome {
                        Outcome::Ok => "",
                        Outcome::Failed(c) => c.name(),
                        Outcome::Unfinished => "unfinished",
                    }
                );
            }
        }
        out
    }
}
