//! SHOW SERVERS: every open server connection.

use std::collections::HashMap;

use super::sockets::{client_rows, header, server_row};
use crate::admin::result::ResultSet;
use crate::app::App;

pub fn servers(app: &App) -> ResultSet {
    let mut r = header(false);
    let app_names: HashMap<u64, String> = client_rows(app)
        .into_iter()
        .map(|c| (c.id, c.application_name))
        .collect();
    for pool in app.pools_of(None) {
        for s in pool.server_rows() {
            r.push(server_row(&pool, &s, s.state.name(), &app_names, false));
        }
    }
    r
}
