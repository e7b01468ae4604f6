//! The Sluice connection pooler.
//!
//! A client's path through the code (see docs/architecture.md):
//! [`listener`] accepts → [`client`] reads the startup packet and authenticates
//! ([`auth`]) → [`app::App::route`] finds its [`pool::Pool`] → the session loop
//! borrows a [`server::ServerConn`] per transaction and moves bytes framed by
//! `sluice_wire`.

pub mod admin;
pub mod app;
pub mod auth;
pub mod cancel;
pub mod client;
pub mod config;
pub mod errors;
pub mod listener;
pub mod overload;
pub mod params;
pub mod pool;
pub mod server;
pub mod shutdown;
pub mod statements;
pub mod stats;
pub mod stream;
pub mod telemetry;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

pub use app::App;
pub use config::{load, Config, Loaded};

/// Binds the listeners and runs the pooler until the returned handle is dropped or
/// the runtime stops.
pub async fn start(loaded: &Loaded) -> anyhow::Result<Arc<App>> {
    let metrics_addr = loaded.config.metrics_addr.trim().to_owned();
    // Before any pool exists: pools register their histograms with it.
    let recorder = if metrics_addr.is_empty() {
        None
    } else {
        Some(telemetry::install()?)
    };
    let app = App::new(loaded);
    let listeners = listener::Listeners::bind(&app.current().config).await?;
    listeners.spawn(Arc::clone(&app));
    app.listening.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(handle) = recorder {
        telemetry::serve(Arc::clone(&app), &metrics_addr, handle).await?;
    }
    let stats = Arc::downgrade(&app);
    tokio::spawn(async move {
        loop {
            let period = match stats.upgrade() {
                Some(app) => {
                    app.roll_stats();
                    config::seconds(app.current().config.stats_period).unwrap_or(Duration::from_secs(60))
                }
                None => return,
            };
            tokio::time::sleep(period).await;
        }
    });
    let housekeeping = Arc::downgrade(&app);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            match housekeeping.upgrade() {
                Some(app) => app.housekeeping(),
                None => return,
            }
        }
    });
    Ok(app)
}
