//! PAUSE [db], RESUME [db], SUSPEND (and SIGUSR1 / SIGUSR2).
//!
//! A paused pool hands out no server and opens none; servers close as their
//! transactions end; clients that want a new transaction queue (query_wait_timeout
//! still applies) until RESUME.

use super::{database, wait_until, Result, WAIT_LIMIT};
use crate::admin::{error, Reply};
use crate::app::App;

/// Pauses every pool (SIGUSR1, PAUSE without a database).
pub fn pause_all(app: &App) {
    app.control.lock().paused_all = true;
    for p in app.pools_of(None) {
        p.pause();
    }
}

/// Lifts PAUSE / SUSPEND (SIGUSR2, RESUME without a database). Databases paused by
/// name stay paused.
pub fn resume_all(app: &App) {
    let paused = {
        let mut c = app.control.lock();
        c.paused_all = false;
        c.suspended = false;
        c.paused.clone()
    };
    for p in app.pools_of(None) {
        if !paused.contains(&p.db) {
            p.resume();
        }
    }
}

/// Open servers of `db` (or of all databases).
fn servers_of(app: &App, db: Option<&str>) -> usize {
    app.pools_of(db).iter().map(|p| p.server_count()).sum()
}

pub async fn pause(app: &App, db: Option<&str>) -> Result {
    {
        let c = app.control.lock();
        if c.paused_all || c.suspended {
            return Err(error("already suspended/paused"));
        }
    }
    match db {
        None => pause_all(app),
        Some(db) => {
            let db = database(app, db, "pause")?;
            app.control.lock().paused.insert(db.clone());
            for p in app.pools_of(Some(&db)) {
                p.pause();
            }
        }
    }
    if wait_until(|| servers_of(app, db) == 0).await {
        Ok(Reply::Done("PAUSE".into()))
    } else {
        Err(error(format!(
            "PAUSE gave up after {} s: {} server connections are still in use; the pool stays paused",
            WAIT_LIMIT.as_secs(),
            servers_of(app, db)
        ))
        .hint("their transactions have not ended; run PAUSE again to keep waiting, KILL to end them, or RESUME"))
    }
}

pub fn resume(app: &App, db: Option<&str>) -> Result {
    match db {
        None => {
            {
                let c = app.control.lock();
                if app.shutdown.borrow().stops_accepting() {
                    return Err(error("pooler is shutting down"));
                }
                if !c.paused_all && !c.suspended {
                    return Err(error("pooler is not paused/suspended"));
                }
            }
            resume_all(app);
        }
        Some(db) => {
            let removed = app.control.lock().paused.remove(db);
            if !removed {
                return Err(error(format!("database {db} is not paused")));
            }
            if !app.control.lock().is_paused(db) {
                for p in app.pools_of(Some(db)) {
                    p.resume();
                }
            }
        }
    }
    Ok(Reply::Done("RESUME".into()))
}

/// SUSPEND: like PAUSE for every database. Sluice has no online restart to hand
/// sockets to, so SUSPEND only stops new transactions until RESUME.
pub async fn suspend(app: &App) -> Result {
    {
        let mut c = app.control.lock();
        if c.paused_all || c.suspended {
            return Err(error("already suspended/paused"));
        }
        if !c.paused.is_empty() {
            return Err(error("cannot suspend with paused databases"));
        }
        c.suspended = true;
    }
    for p in app.pools_of(None) {
        p.pause();
    }
    if wait_until(|| servers_of(app, None) == 0).await {
        Ok(Reply::Done("SUSPEND".into()))
    } else {
        Err(error(
            "SUSPEND gave up waiting for server connections to be released; still suspended",
        ))
    }
}
