//! DISABLE db / ENABLE db: refuse or allow new clients of a database.

use super::{database, Result};
use crate::admin::Reply;
use crate::app::App;

pub fn disable(app: &App, db: &str) -> Result {
    let db = database(app, db, "disable")?;
    app.control.lock().disabled.insert(db);
    Ok(Reply::Done("DISABLE".into()))
}

pub fn enable(app: &App, db: &str) -> Result {
    let db = database(app, db, "enable")?;
    app.control.lock().disabled.remove(&db);
    Ok(Reply::Done("ENABLE".into()))
}
