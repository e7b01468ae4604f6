//! Shutdown, with PgBouncer 1.23+'s signals:
//! - SIGTERM: stop accepting; exit when every client has left (WAIT_FOR_CLIENTS).
//! - SIGINT: stop accepting; let transactions in flight finish, refuse new ones, and
//!   exit when no server is linked to a client (WAIT_FOR_SERVERS).
//! - SIGQUIT: exit at once.
//!
//! A second signal shortens the wait: TERM then INT waits only for servers; INT then
//! anything exits at once.
//!
//! SIGHUP reloads the configuration ([`App::reload`]); a broken file is reported and
//! the running configuration stays. SIGUSR1 pauses every database and SIGUSR2
//! resumes, as the console's PAUSE and RESUME.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

use crate::app::App;

/// How far a shutdown has gone. Ordered: later variants are shorter waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shutdown {
    Running,
    WaitForClients,
    WaitForServers,
    Immediate,
}

impl Shutdown {
    /// True once new connections must not be accepted.
    pub fn stops_accepting(self) -> bool {
        self != Shutdown::Running
    }

    /// True once new transactions must not start.
    pub fn stops_transactions(self) -> bool {
        self >= Shutdown::WaitForServers
    }
}

/// Handles signals (reload, shutdown) and returns when the pooler may exit.
pub async fn run_until_shutdown(app: &App) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut mode = Shutdown::Running;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let asked = tokio::select! {
            _ = term.recv() => Some(Shutdown::WaitForClients),
            _ = int.recv() => Some(Shutdown::WaitForServers),
            _ = quit.recv() => Some(Shutdown::Immediate),
            _ = hup.recv() => {
                if let Err(e) = app.reload() {
                    error!("reload failed, keeping the running configuration: {e}");
                }
                None
            }
            _ = usr1.recv() => {
                info!("SIGUSR1: pausing all databases");
                crate::admin::command::pause_all(app);
                None
            }
            _ = usr2.recv() => {
                info!("SIGUSR2: resuming");
                crate::admin::command::resume_all(app);
                None
            }
            _ = tick.tick() => None,
        };
        // SHUTDOWN on the console moves the state directly.
        let requested = *app.shutdown.borrow();
        if requested > mode {
            mode = requested;
        }
        if let Some(asked) = asked {
            let next = match (mode, asked) {
                // A repeated or weaker signal moves one step further.
                (Shutdown::Running, a) => a,
                (m, a) if a > m => a,
                (Shutdown::WaitForClients, _) => Shutdown::WaitForServers,
                _ => Shutdown::Immediate,
            };
            if next != mode {
                info!(?next, "shutdown requested");
                mode = next;
                app.shutdown.send_replace(mode);
            }
        }
        let done = match mode {
            Shutdown::Running => false,
            Shutdown::WaitForClients => app.connected_clients() == 0,
            Shutdown::WaitForServers => app.linked_servers() == 0,
            Shutdown::Immediate => true,
        };
        if done {
            info!(clients = app.connected_clients(), ?mode, "exiting");
            return Ok(());
        }
    }
}
