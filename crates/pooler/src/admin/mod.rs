//! The admin console: the virtual database `pgbouncer`, spoken to with psql and
//! PgBouncer's commands (`SHOW POOLS;`, `PAUSE`, `RELOAD`, ...).
//!
//! - [`parse`]: the command grammar.
//! - [`show`]: one file per SHOW; adding a SHOW is adding a file and a table row.
//! - [`command`]: one file per family of commands that change things.
//! - [`result`]: result sets in PgBouncer's column types.
//!
//! `admin_users` may run everything; `stats_users` only SHOW. The console speaks the
//! simple query protocol; extended-protocol messages get an error that says so.

pub mod command;
pub mod parse;
pub mod result;
pub mod show;

use bytes::{Buf, BytesMut};
use sluice_wire::backend::{self, Severity, TxStatus};
use sluice_wire::frontend;
use sluice_wire::Header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

use crate::app::App;
use crate::cancel::ClientLink;
use crate::client::ClientConn;
use crate::config::{self, Config};
use crate::errors::ClientError;
use parse::Command;

/// The name of the virtual database, as PgBouncer's.
pub const ADMIN_DB: &str = "pgbouncer";

/// Largest console query accepted.
const MAX_QUERY: usize = 64 * 1024;

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `admin_users`: everything.
    Admin,
    /// `stats_users`: SHOW only.
    Stats,
}

/// The console role of `user`, or PgBouncer's FATAL "not allowed".
pub fn role(c: &Config, user: &str) -> Result<Role, ClientError> {
    if config::list(&c.admin_users).any(|u| u == user) {
        Ok(Role::Admin)
    } else if config::list(&c.stats_users).any(|u| u == user) {
        Ok(Role::Stats)
    } else {
        Err(ClientError::protocol("not allowed")
            .hint("only users listed in admin_users or stats_users may use the pgbouncer console"))
    }
}

/// Ends the console login: parameters, cancel key, ReadyForQuery.
pub async fn welcome(client: &mut ClientConn, (pid, key): (i32, i32)) -> Result<(), ClientError> {
    let mut out = BytesMut::with_capacity(256);
    backend::auth_ok(&mut out);
    for (name, value) in [
        ("server_version", concat!(env!("CARGO_PKG_VERSION"), "/sluice")),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "UTC"),
        ("standard_conforming_strings", "on"),
        ("integer_datetimes", "on"),
        ("application_name", ""),
    ] {
        backend::parameter_status(&mut out, name, value);
    }
    backend::backend_key_data(&mut out, pid, key);
    backend::ready_for_query(&mut out, TxStatus::Idle);
    client
        .wr
        .write_all(&out)
        .await
        .map_err(|e| ClientError::protocol(format!("client write failed: {e}")))
}

/// An ERROR on the console (the session goes on), 08P01 as PgBouncer's.
pub fn error(message: impl Into<String>) -> ClientError {
    ClientError::protocol(message).at(Severity::Error)
}

/// Serves console commands until the client leaves. Returns the reason, for the log.
pub async fn serve(app: &App, client: &mut ClientConn, role: Role, link: &ClientLink) -> &'static str {
    // Extended-protocol messages since the last Sync were already answered with an error.
    let mut batch_failed = false;
    loop {
        loop {
            let h = match Header::whole(&client.buf, MAX_QUERY as u32) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(_) => {
                    send(client, &error_bytes(&error("invalid message length"))).await;
                    return "client protocol error";
                }
            };
            let msg = client.buf.split_to(h.total_len());
            let body = &msg[5..];
            let mut out = BytesMut::new();
            match h.tag {
                frontend::QUERY => {
                    let query = String::from_utf8_lossy(&body[..body.len().saturating_sub(1)]).into_owned();
                    execute(app, role, link, &query, &mut out).await;
                    backend::ready_for_query(&mut out, TxStatus::Idle);
                }
                frontend::TERMINATE => return "client close request",
                frontend::SYNC => {
                    batch_failed = false;
                    backend::ready_for_query(&mut out, TxStatus::Idle);
                }
                frontend::FLUSH => {}
                t if frontend::opens_extended_batch(t) => {
                    if !batch_failed {
                        batch_failed = true;
                        error("the admin console supports only the simple query protocol")
                            .hint("use psql, or run commands without parameters and without prepared statements (psycopg: no parameters; JDBC: preferQueryMode=simple)")
                            .write(&mut out);
                    }
                }
                t => {
                    send(
                        client,
                        &error_bytes(&ClientError::protocol(format!("invalid frontend message type {t}"))),
                    )
                    .await;
                    return "client protocol error";
                }
            }
            if !out.is_empty() && client.wr.write_all(&out).await.is_err() {
                return "client unexpected eof";
            }
        }
        client.buf.reserve(4096);
        tokio::select! {
            read = client.rd.read_buf(&mut client.buf) => match read {
                Ok(0) | Err(_) => return "client unexpected eof",
                Ok(_) => {}
            },
            _ = link.kill.killed() => {
                send(client, &error_bytes(&ClientError::protocol("admin forced disconnect"))).await;
                return "admin forced disconnect";
            }
        }
    }
}

fn error_bytes(e: &ClientError) -> BytesMut {
    let mut out = BytesMut::new();
    e.write(&mut out);
    out
}

async fn send(client: &mut ClientConn, bytes: &BytesMut) {
    let _ = client.wr.write_all(bytes).await;
    let _ = client.wr.shutdown().await;
    client.buf.advance(client.buf.len());
}

/// Runs one query string and writes its answer (without ReadyForQuery).
pub async fn execute(app: &App, role: Role, link: &ClientLink, query: &str, out: &mut BytesMut) {
    let Some(cmd) = parse::parse(query) else {
        return error(format!("invalid command '{query}', use SHOW HELP;")).write(out);
    };
    let reply = match cmd {
        Command::Empty => {
            out.extend_from_slice(b"I\0\0\0\x04");
            return;
        }
        Command::Cmd { name, arg } if name == "show" => {
            let what = arg.unwrap_or_default();
            show::run(app, &what.to_ascii_lowercase(), query)
        }
        Command::Set { key, value } => command::set(app, role, &key, &value),
        Command::Cmd { name, arg } => {
            if role != Role::Admin && command::is_command(&name) {
                Err(error("admin access needed"))
            } else {
                info!(command = %name, arg = arg.as_deref().unwrap_or(""), "console command");
                command::run(app, link, &name, arg.as_deref(), query).await
            }
        }
    };
    match reply {
        Ok(r) => r.write(out),
        Err(e) => e.write(out),
    }
}

/// What a command answers.
pub enum Reply {
    Rows(result::ResultSet),
    /// A NOTICE (SHOW HELP) then a command tag.
    Notice {
        message: String,
        detail: String,
        tag: &'static str,
    },
    /// Only a command tag ("PAUSE", "RELOAD", ...).
    Done(String),
}

impl Reply {
    fn write(&self, out: &mut BytesMut) {
        match self {
            Reply::Rows(r) => r.write(out),
            Reply::Notice { message, detail, tag } => {
                backend::notice_response(
                    out,
                    &backend::ErrorFields {
                        severity: Severity::Notice,
                        code: "00000",
                        message,
                        detail: Some(detail),
                        hint: None,
                    },
                );
                backend::command_complete(out, tag);
            }
            Reply::Done(tag) => backend::command_complete(out, tag),
        }
    }
}
