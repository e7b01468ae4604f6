//! Rows shared by SHOW CLIENTS, SERVERS, SOCKETS and ACTIVE_SOCKETS.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::secs_and_micros;
use crate::admin::result::{timestamp, Cell, ResultSet};
use crate::app::App;
use crate::cancel::ClientRow;
use crate::pool::{Pool, ServerRow};
use crate::server::unix_micros;

const STD_TYPES: &str = "ssssssisiTTiiississii";
const NAMES: [&str; 28] = [
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
    // SOCKETS only: buffer positions, which Sluice does not keep per socket (0).
    "recv_pos",
    "pkt_pos",
    "pkt_remain",
    "send_pos",
    "send_remain",
    "pkt_avail",
    "send_avail",
];

pub fn header(debug: bool) -> ResultSet {
    if debug {
        ResultSet::new(&format!("{STD_TYPES}iiiiiii"), &NAMES)
    } else {
        ResultSet::new(STD_TYPES, &NAMES[..21])
    }
}

/// What the console shows for an internal object's address: a stable handle made
/// of the kind and the id, so a client's `link` equals its server's `ptr`.
pub fn ptr(server: bool, id: u64) -> String {
    format!("0x{:x}", if server { 0x5e00_0000_0000 } else { 0xc100_0000_0000 } | id)
}

pub fn client_row(c: &ClientRow, state: &str, debug: bool) -> Vec<Cell> {
    let (wait, wait_us) = secs_and_micros(c.waiting);
    let mut row: Vec<Cell> = vec![
        "C".into(),
        c.user.as_str().into(),
        c.db.as_str().into(),
        "none".into(),
        state.into(),
        c.endpoints.addr.as_str().into(),
        c.endpoints.port.into(),
        c.endpoints.local_addr.as_str().into(),
        c.endpoints.local_port.into(),
        timestamp(unix_micros(c.connect_time)),
        timestamp(c.request_time_us),
        wait.into(),
        wait_us.into(),
        Cell::Int(0),
        ptr(false, c.id).into(),
        c.server_id.map(|s| ptr(true, s)).unwrap_or_default().into(),
        Cell::Int(0),
        c.tls.as_str().into(),
        c.application_name.as_str().into(),
        Cell::Int(0),
        c.id.into(),
    ];
    if debug {
        row.extend(std::iter::repeat_n(Cell::Int(0), 7));
    }
    row
}

pub fn server_row(pool: &Pool, s: &ServerRow, state: &str, app_names: &HashMap<u64, String>, debug: bool) -> Vec<Cell> {
    let m = &s.meta;
    let linked = m.linked_client.load(Ordering::Relaxed);
    let mut row: Vec<Cell> = vec![
        "S".into(),
        pool.user.as_str().into(),
        pool.db.as_str().into(),
        "none".into(),
        state.into(),
        m.endpoints.addr.as_str().into(),
        m.endpoints.port.into(),
        m.endpoints.local_addr.as_str().into(),
        m.endpoints.local_port.into(),
        timestamp(unix_micros(m.connect_time)),
        timestamp(m.request_time_us.load(Ordering::Relaxed)),
        Cell::Int(0),
        Cell::Int(0),
        s.close_needed.into(),
        ptr(true, m.id).into(),
        if linked != 0 { ptr(false, linked) } else { String::new() }.into(),
        m.backend_pid.into(),
        "".into(),
        app_names.get(&linked).cloned().unwrap_or_default().into(),
        Cell::Int(0),
        m.id.into(),
    ];
    if debug {
        row.extend(std::iter::repeat_n(Cell::Int(0), 7));
    }
    row
}

/// Logged-in clients of pools (not the console), in id order.
pub fn client_rows(app: &App) -> Vec<ClientRow> {
    app.cancels.clients().iter().filter_map(|c| c.row()).collect()
}

/// SHOW SOCKETS: clients and servers with PgBouncer's list names as state;
/// ACTIVE_SOCKETS: the ones with bytes moving (linked clients and active servers).
pub fn sockets(app: &App, active_only: bool) -> ResultSet {
    let mut r = header(true);
    let clients = client_rows(app);
    let app_names: HashMap<u64, String> = clients.iter().map(|c| (c.id, c.application_name.clone())).collect();
    for c in &clients {
        let state = match c.state {
            "waiting" => "cl_waiting",
            _ => "cl_active",
        };
        if !active_only || c.state == "active" {
            r.push(client_row(c, state, true));
        }
    }
    for pool in app.pools_of(None) {
        for s in pool.server_rows() {
            let state = match s.state {
                crate::pool::ServerState::Active => "sv_active",
                crate::pool::ServerState::Idle => "sv_idle",
            };
            if !active_only || state == "sv_active" {
                r.push(server_row(&pool, &s, state, &app_names, true));
            }
        }
    }
    r
}
