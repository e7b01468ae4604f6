//! SHOW STATE: whether the pooler is active, paused or suspended.

use crate::admin::result::ResultSet;
use crate::app::App;

pub fn state(app: &App) -> ResultSet {
    let c = app.control.lock();
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut r = ResultSet::new("ss", &["key", "value"]);
    r.push(vec!["active".into(), yes(!c.paused_all && !c.suspended).into()]);
    r.push(vec!["paused".into(), yes(c.paused_all).into()]);
    r.push(vec!["suspended".into(), yes(c.suspended).into()]);
    r
}
