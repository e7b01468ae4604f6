//! SHOW PEERS / PEER_POOLS. Peering (cancel forwarding between processes sharing a
//! port) is not supported, so there are no peers.

use crate::admin::result::ResultSet;

pub fn peers() -> ResultSet {
    ResultSet::new("isii", &["peer_id", "host", "port", "pool_size"])
}

pub fn peer_pools() -> ResultSet {
    ResultSet::new(
        "iiiii",
        &[
            "peer_id",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active_cancel",
            "sv_login",
        ],
    )
}
