//! The Sluice connection pooler.
//!
//! A client's path through the code (see docs/architecture.md):
//! [`listener`] accepts → [`client`] reads the startup packet and authenticates
//! ([`auth`]) → [`app::App::route`] finds its [`pool::Pool`] → the session loop
//! borrows a [`server::ServerConn`] per transaction and moves bytes framed by
//! `sluice_wire`.

pub mod app;
pub mod auth;
pub mod cancel;
pub mod client;
pub mod config;
pub mod errors;
pub mod listener;
pub mod params;
pub mod pool;
pub mod server;
pub mod shutdown;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

pub use app::App;
pub use config::{load, Config, Loaded};

/// Binds the listeners and runs the pooler until the returned handle is dropped or
/// the runtime stops.
pub async fn start(loaded: &Loaded) -> anyhow::Result<Arc<App>> {
    let app = App::new(loaded);
    let listeners = listener::Listeners::bind(&app.current().config).await?;
    listeners.spawn(Arc::clone(&app));
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
