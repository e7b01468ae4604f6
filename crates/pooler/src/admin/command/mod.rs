//! Console commands that change things, one file per family. All need `admin_users`.

mod enable;
mod kill;
mod pause;
mod reconnect;
mod reload;
mod shutdown;

use std::time::Duration;

use super::{error, Reply, Role};
use crate::app::App;
use crate::cancel::ClientLink;
use crate::errors::ClientError;

pub use pause::{pause_all, resume_all};

type Result = std::result::Result<Reply, ClientError>;

/// How long PAUSE and WAIT_CLOSE wait for servers before giving up with an error
/// (the database stays paused; the wait can be repeated).
pub const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// Command words other than SHOW and SET.
const COMMANDS: &[&str] = &[
    "reload",
    "pause",
    "resume",
    "suspend",
    "disable",
    "enable",
    "reconnect",
    "kill",
    "kill_client",
    "shutdown",
    "wait_close",
];

pub fn is_command(name: &str) -> bool {
    COMMANDS.contains(&name)
}

pub async fn run(app: &App, _link: &ClientLink, name: &str, arg: Option<&str>, query: &str) -> Result {
    let invalid = || Err(error(format!("invalid command '{query}', use SHOW HELP;")));
    match (name, arg) {
        ("reload", None) => reload::reload(app),
        ("pause", db) => pause::pause(app, db).await,
        ("resume", db) => pause::resume(app, db),
        ("suspend", None) => pause::suspend(app).await,
        ("disable", Some(db)) => enable::disable(app, db),
        ("enable", Some(db)) => enable::enable(app, db),
        ("disable" | "enable", None) => Err(error("a database is required")),
        ("reconnect", db) => reconnect::reconnect(app, db),
        ("wait_close", db) => reconnect::wait_close(app, db).await,
        ("kill", db) => kill::kill(app, db),
        ("kill_client", Some(id)) => kill::kill_client(app, id),
        ("shutdown", mode) => shutdown::shutdown(app, mode),
        _ => invalid(),
    }
}

/// SET key = value.
pub fn set(app: &App, role: Role, key: &str, value: &str) -> Result {
    reload::set(app, role, key, value)
}

/// The database named by a command, which must be a configured (or served) one and
/// not the console itself.
fn database(app: &App, db: &str, what: &str) -> std::result::Result<String, ClientError> {
    if db == super::ADMIN_DB {
        return Err(error(format!("cannot {what} admin db: {db}")));
    }
    let current = app.current();
    let known = current.config.databases.contains_key(db)
        || current.config.databases.contains_key("*")
        || !app.pools_of(Some(db)).is_empty();
    if known {
        Ok(db.to_owned())
    } else {
        Err(error(format!("no such database: {db}")))
    }
}

/// Waits until `done` holds, checking every 50 ms, up to [`WAIT_LIMIT`].
async fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}
