//! sluice-bench: capacity benchmarking for PostgreSQL poolers. Scenario files
//! ([`scenario`]) describe users and the pages they load; [`runner`] replays them
//! against targets; [`outcome`] classifies every failure from what the server said;
//! [`report`] aggregates latencies (HDR histograms) and failures per path.

pub mod outcome;
pub mod report;
pub mod runner;
pub mod scenario;
