//! SHOW DNS_HOSTS / DNS_ZONES. Sluice keeps no DNS cache: host names are resolved at
//! each server login by the system resolver, so both lists are empty.

use crate::admin::result::ResultSet;

pub fn hosts() -> ResultSet {
    ResultSet::new("sqs", &["hostname", "ttl", "addrs"])
}

pub fn zones() -> ResultSet {
    ResultSet::new("sqi", &["zonename", "serial", "count"])
}
