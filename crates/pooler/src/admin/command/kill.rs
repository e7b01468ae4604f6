//! KILL [db]: drop every client and server of a database (or all) at once, and pause
//! it until RESUME. KILL_CLIENT id: drop one client (and its server, if linked
//! mid-transaction). Clients get FATAL "admin forced disconnect"; a query still
//! running is cancelled on its server.

use super::{database, Result};
use crate::admin::{error, Reply};
use crate::app::App;

pub fn kill(app: &App, db: Option<&str>) -> Result {
    {
        let c = app.control.lock();
        if c.paused_all || c.suspended {
            return Err(error("already suspended/paused"));
        }
    }
    let db = db.map(|d| database(app, d, "kill")).transpose()?;
    match &db {
        None => app.control.lock().paused_all = true,
        Some(d) => {
            app.control.lock().paused.insert(d.clone());
        }
    }
    for p in app.pools_of(db.as_deref()) {
        p.pause();
    }
    for c in app.cancels.clients() {
        let Some(login) = c.login.get() else { continue };
        if login.pool.is_some() && db.as_deref().is_none_or(|d| login.db == d) {
            c.kill.kill();
        }
    }
    Ok(Reply::Done("KILL".into()))
}

pub fn kill_client(app: &App, id: &str) -> Result {
    let Ok(id) = id.parse::<u64>() else {
        return Err(error("invalid client pointer supplied"));
    };
    let Some(client) = app
        .cancels
        .clients()
        .into_iter()
        .find(|c| c.id == id && c.login.get().is_some())
    else {
        return Err(error("client not found"));
    };
    client.kill.kill();
    Ok(Reply::Done("KILL_CLIENT".into()))
}
