//! SHOW MEM: Sluice's per-connection objects (PgBouncer shows its slab caches). Sizes
//! are of the fixed part of each object; buffers grow with traffic and are not
//! counted.

use crate::admin::result::ResultSet;
use crate::app::App;

pub fn mem(app: &App) -> ResultSet {
    let clients = app.connected_clients();
    let servers: usize = app.pools_of(None).iter().map(|p| p.server_count()).sum();
    let mut r = ResultSet::new("siiii", &["name", "size", "used", "free", "memtotal"]);
    for (name, size, used) in [
        ("client", std::mem::size_of::<crate::cancel::ClientLink>(), clients),
        ("server", std::mem::size_of::<crate::server::ServerConn>(), servers),
        ("pool", std::mem::size_of::<crate::pool::Pool>(), app.pools().len()),
    ] {
        r.push(vec![
            name.into(),
            size.into(),
            used.into(),
            0usize.into(),
            (size * used).into(),
        ]);
    }
    r
}
