//! SHOW VERSION. Monitoring tools parse "PgBouncer x.y.z" to pick the columns they
//! expect, so the PgBouncer release whose console Sluice speaks comes first.

use crate::admin::result::ResultSet;
use crate::admin::Reply;
use crate::app::App;

/// The PgBouncer release whose console columns Sluice reproduces.
pub const PGBOUNCER_COMPAT: &str = "1.25.0";

pub fn version_string() -> String {
    format!("PgBouncer {PGBOUNCER_COMPAT} (Sluice {})", env!("CARGO_PKG_VERSION"))
}

pub fn version(_: &App) -> Reply {
    let mut r = ResultSet::new("s", &["version"]);
    r.push(vec![version_string().into()]);
    Reply::Rows(r)
}
