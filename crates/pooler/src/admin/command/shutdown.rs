//! SHUTDOWN [WAIT_FOR_SERVERS | WAIT_FOR_CLIENTS]: the same shutdowns as SIGQUIT,
//! SIGINT and SIGTERM.

use super::Result;
use crate::admin::{error, Reply};
use crate::app::App;
use crate::shutdown::Shutdown;

pub fn shutdown(app: &App, mode: Option<&str>) -> Result {
    let mode = match mode.map(str::to_ascii_uppercase).as_deref() {
        None => Shutdown::Immediate,
        Some("WAIT_FOR_SERVERS") => Shutdown::WaitForServers,
        Some("WAIT_FOR_CLIENTS") => Shutdown::WaitForClients,
        Some(other) => return Err(error(format!("invalid command 'SHUTDOWN {other}', use SHOW HELP;"))),
    };
    tracing::info!(?mode, "SHUTDOWN command issued");
    app.request_shutdown(mode);
    Ok(Reply::Done("SHUTDOWN".into()))
}
