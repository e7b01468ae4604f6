//! sluice-bench: capacity benchmarking for PostgreSQL poolers. Scenario files
//! ([`scenario`]) describe seed data, users and the pages they load; [`runner`]
//! replays them against targets; [`outcome`] classifies every failure from what the
//! server said; [`report`] aggregates latencies (HDR histograms) and failures per path
//! and [`plot`] draws them; [`system`] records what the machine and the database were
//! doing; [`compare`] starts PostgreSQL, PgBouncer and Sluice to run side by side.

pub mod compare;
pub mod drive;
pub mod outcome;
pub mod plot;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod system;
