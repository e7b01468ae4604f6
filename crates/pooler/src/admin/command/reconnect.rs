//! RECONNECT [db]: close every server as it is released; WAIT_CLOSE [db]: wait until
//! those (and servers of a database whose address a reload changed) are gone.

use super::{database, wait_until, Result, WAIT_LIMIT};
use crate::admin::{error, Reply};
use crate::app::App;

pub fn reconnect(app: &App, db: Option<&str>) -> Result {
    let db = db.map(|d| database(app, d, "reconnect")).transpose()?;
    for p in app.pools_of(db.as_deref()) {
        p.reconnect();
    }
    Ok(Reply::Done("RECONNECT".into()))
}

pub async fn wait_close(app: &App, db: Option<&str>) -> Result {
    let db = db.map(|d| database(app, d, "wait in")).transpose()?;
    let pending = || {
        app.pools_of(db.as_deref())
            .iter()
            .map(|p| p.close_needed())
            .sum::<usize>()
    };
    if wait_until(|| pending() == 0).await {
        Ok(Reply::Done("WAIT_CLOSE".into()))
    } else {
        Err(error(format!(
            "WAIT_CLOSE gave up after {} s: {} server connections still wait to be closed",
            WAIT_LIMIT.as_secs(),
            pending()
        )))
    }
}
