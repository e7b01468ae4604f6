//! What the machine and the database were doing during a run: CPU busy share from
//! `/proc/stat`, the load average, and per second the states of the database's client
//! backends (`pg_stat_activity`), so a report says whether the pool or the CPU was the
//! bottleneck.

use serde::Serialize;

/// Facts about this machine, printed with every report.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub cpu_model: String,
    pub os: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default();
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_else(|| std::env::consts::OS.to_owned());
        Machine {
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            cpu_model,
            os,
        }
    }

    /// `/proc/loadavg`'s three averages.
    pub fn load_average() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// CPU busy share of all cores between two calls, from `/proc/stat`.
pub struct CpuSampler {
    last: Option<(u64, u64)>,
}

impl Default for CpuSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuSampler {
    pub fn new() -> CpuSampler {
        CpuSampler { last: read_cpu() }
    }

    /// Percent of CPU time (all cores) spent busy since the last call.
    pub fn busy_percent(&mut self) -> f64 {
        let now = read_cpu();
        let share = match (self.last, now) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                (busy1.saturating_sub(busy0)) as f64 * 100.0 / (total1 - total0) as f64
            }
            _ => 0.0,
        };
        self.last = now;
        (share * 10.0).round() / 10.0
    }
}

/// (busy, total) jiffies of the `cpu` line; idle and iowait count as not busy.
fn read_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// The monitored database's client backends, by state, at one second of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Activity {
    pub second: f64,
    pub active: u32,
    pub idle_in_transaction: u32,
    pub idle: u32,
    /// Active backends waiting on a lock.
    pub waiting_on_locks: u32,
}

impl Activity {
    pub async fn sample(db: &tokio_postgres::Client, second: f64) -> Result<Activity, tokio_postgres::Error> {
        let row = db
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'active')::int4, \
                        count(*) FILTER (WHERE state LIKE 'idle in transaction%')::int4, \
                        count(*) FILTER (WHERE state = 'idle')::int4, \
                        count(*) FILTER (WHERE state = 'active' AND wait_event_type = 'Lock')::int4 \
                 FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
                   AND datname = current_database()",
                &[],
            )
            .await?;
        let n = |i: usize| row.try_get::<_, i32>(i).map(|v| v.max(0) as u32);
        Ok(Activity {
            second,
            active: n(0)?,
            idle_in_transaction: n(1)?,
            idle: n(2)?,
            waiting_on_locks: n(3)?,
        })
    }
}
