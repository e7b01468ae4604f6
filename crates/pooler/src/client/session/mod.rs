//! The session loop: a logged-in client alternates between idle (no server) and
//! linked (bytes flow both ways through one server connection).
//!
//! While linked, one task moves bytes in both directions without ever blocking one
//! direction on the other (pipelines and COPY cannot deadlock), reading by message
//! header only. The few messages that decide when the server can go back to the
//! pool are tracked by [`TxTracker`]: every Query, Sync and FunctionCall the client
//! sends is answered by exactly one ReadyForQuery, so in transaction mode the server
//! is released at a ReadyForQuery 'I' that answers the last of them, with no
//! extended-protocol batch open.

mod acquire;
mod idle;
mod local;
mod pump;
mod release;
mod sync;
mod track;

pub(in crate::client) use release::finish_server;
pub use track::Timeouts;

use std::future::poll_fn;

use tokio::sync::watch;
use tracing::debug;

use super::state::SessionState;
use super::{send_error, ClientConn};
use crate::app::Route;
use crate::cancel::ClientLink;
use crate::config::PoolMode;
use crate::shutdown::Shutdown;
use acquire::{shutting_down, Now};
use idle::Next;
use local::answer_dropped;
use pump::{far_future, Link, LinkEnd};
use tokio::io::AsyncWriteExt;
use track::TxTracker;

/// Room made before each read.
const READ_CHUNK: usize = 16 * 1024;
/// Unforwarded bytes per direction before reading pauses (backpressure).
pub(super) const MAX_BUFFERED: usize = 256 * 1024;

/// Why the client is leaving, in PgBouncer's words where it has them.
pub type Reason = &'static str;

/// What stays the same for one client's whole session.
pub(super) struct Ctx<'a> {
    pub(super) route: &'a Route,
    pub(super) link: &'a ClientLink,
    /// Overload protection answers transaction control and known SETs itself, and
    /// puts each transaction in a lane (transaction mode only: in session mode the
    /// client keeps its server anyway).
    pub(super) protect: bool,
    pub(super) client_user: String,
    /// Read once per client: a reload applies to the pool at once and to clients'
    /// own limits from their next connection.
    pub(super) base_timeouts: Timeouts,
    pub(super) reset_always: bool,
}

/// Runs a logged-in client until it leaves. Returns the reason, for the log.
///
/// Each turn of the loop is one transaction (one request in session mode's terms):
/// idle until a request needs a server, get one, bring it in line, pump bytes until
/// the link ends, then give the server back or leave.
pub async fn run(
    client: &mut ClientConn,
    route: &Route,
    link: &ClientLink,
    mut shutdown: watch::Receiver<Shutdown>,
    session: SessionState,
) -> Reason {
    let mut tx = TxTracker::new(session, route);
    let settings = route.pool.settings();
    let ctx = Ctx {
        route,
        link,
        protect: route.mode != PoolMode::Session && settings.lanes.protection,
        client_user: link.login.get().map(|l| l.user.clone()).unwrap_or_default(),
        base_timeouts: settings.timeouts,
        reset_always: settings.reset_always,
    };
    drop(settings);
    let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(far_future()));
    tokio::pin!(timer);
    loop {
        // Idle until a request needs a server.
        loop {
            match idle::next(client, &mut tx, &ctx) {
                Next::Request => break,
                Next::Read => {
                    if let Err(reason) = idle::read(client, &tx, &ctx).await {
                        return reason;
                    }
                }
                Next::Write(out) => {
                    if client.wr.write_all(&out).await.is_err() {
                        return "client unexpected eof";
                    }
                }
                Next::AnswerDropped => {
                    if let Err(reason) = answer_dropped(client, &mut tx).await {
                        return reason;
                    }
                }
                Next::Leave(error, reason) => {
                    if let Some(e) = error {
                        send_error(client, &e).await;
                    }
                    return reason;
                }
            }
        }
        let (now, timeouts) = acquire::take_now(client, &mut tx, &ctx, &mut shutdown);
        let server = match now {
            Now::Server(server) => server,
            Now::Wait(ticket) => match acquire::wait_for_server(client, &mut tx, &ctx, &mut shutdown, ticket).await {
                Ok(Some(server)) => server,
                Ok(None) => continue,
                Err(reason) => return reason,
            },
            Now::ShuttingDown => {
                send_error(client, &shutting_down()).await;
                return "pooler shutdown";
            }
        };
        debug!(server = server.id, "linked");
        let (mut server, swallow) = if sync::needed(&tx, &server) {
            match sync::bring_in_line(client, &mut tx, &ctx, server).await {
                Ok(Some(ready)) => ready,
                Ok(None) => continue,
                Err(reason) => return reason,
            }
        } else {
            (server, 0)
        };
        let (end, swallow) = {
            let mut pump = Link {
                client: &mut *client,
                server: &mut server,
                tx: &mut tx,
                mode: route.mode,
                release: false,
                swallow,
                timeouts,
                timer: timer.as_mut(),
                armed: None,
                timeouts_on: timeouts.any(),
                stats: &route.pool.stats,
                kill: &link.kill,
            };
            let end = poll_fn(|cx| pump.poll(cx)).await;
            (end, pump.swallow)
        };
        link.unlink().await;
        let server = match end {
            LinkEnd::Release => release::release_now(&mut tx, &ctx, server),
            _ => Some(server),
        };
        if let Some(server) = server {
            if let Err(reason) = release::after_link(client, &mut tx, &ctx, server, end, swallow).await {
                return reason;
            }
        }
    }
}
