//! SHOW CLIENTS: every logged-in client, console users included.

use super::sockets::{client_row, client_rows, header};
use crate::admin::result::ResultSet;
use crate::app::App;

pub fn clients(app: &App) -> ResultSet {
    let mut r = header(false);
    for c in client_rows(app) {
        r.push(client_row(&c, c.state, false));
    }
    r
}
