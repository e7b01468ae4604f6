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

use crate::outcome::Cause;

/// Latencies and outcomes of one path.
pub struct PathStats {
    /// Microseconds, 1 µs to 1 hour, 3 significant digits.
    pub ok: Histogram<u64>,
    pub failed: BTreeMap<Cause, u64>,
    /// One sample per second since the start: (requests, failures).
    pub timeline: Vec<(u64, u64)>,
}

impl Default for PathStats {
    fn default() -> Self {
        PathStats {
            ok: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
            failed: BTreeMap::new(),
            timeline: Vec::new(),
        }
    }
}

impl PathStats {
    pub fn record(&mut self, second: usize, micros: u64, outcome: Result<(), Cause>) {
        if self.timeline.len() <= second {
            self.timeline.resize(second + 1, (0, 0));
        }
        self.timeline[second].0 += 1;
        match outcome {
            Ok(()) => {
                let _ = self.ok.record(micros.clamp(1, 3_600_000_000));
            }
            Err(cause) => {
                *self.failed.entry(cause).or_default() += 1;
                self.timeline[second].1 += 1;
            }
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub target: String,
    pub path: String,
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub failures: BTreeMap<&'static str, u64>,
    /// Milliseconds, successful requests only.
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub requests_per_s: f64,
    /// Per second: [requests, failures].
    pub timeline: Vec<(u64, u64)>,
}

impl Row {
    pub fn new(target: &str, path: &str, s: &PathStats, seconds: f64) -> Row {
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
            path: path.to_owned(),
            requests: ok + failed,
            ok,
            failed,
            failures: Cause::ALL
                .iter()
                .map(|c| (c.name(), s.failed.get(c).copied().unwrap_or(0)))
                .collect(),
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
        "{:<12} {:<18} {:>8} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>7}  failures",
        "target", "path", "requests", "ok", "failed", "p50 ms", "p95 ms", "p99 ms", "max ms", "req/s"
    );
    for r in rows {
        let causes: Vec<String> = r
            .failures
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| format!("{c}={n}"))
            .collect();
        let _ = writeln!(
            out,
            "{:<12} {:<18} {:>8} {:>7} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>7.1}  {}",
            r.target,
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
    let mut out = String::from("target,path,requests,ok,failed");
    for c in Cause::ALL {
        let _ = write!(out, ",{}", c.name());
    }
    out.push_str(",p50_ms,p95_ms,p99_ms,max_ms,requests_per_s\n");
    for r in rows {
        let _ = write!(out, "{},{},{},{},{}", r.target, r.path, r.requests, r.ok, r.failed);
        for c in Cause::ALL {
            let _ = write!(out, ",{}", r.failures.get(c.name()).copied().unwrap_or(0));
        }
        let _ = writeln!(
            out,
            ",{:.3},{:.3},{:.3},{:.3},{:.3}",
            r.p50_ms, r.p95_ms, r.p99_ms, r.max_ms, r.requests_per_s
        );
    }
    out
}
