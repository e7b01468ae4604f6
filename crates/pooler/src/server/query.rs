//! Queries Sluice runs on a server itself, outside any client's traffic: resets
//! (`RESET ALL`, `DISCARD ALL`, `server_reset_query`), `server_check_query`, and the
//! deferred `BEGIN` of overload protection. Their answers are read and dropped here.

use bytes::BytesMut;
use sluice_wire::backend::{self, TxStatus};
use sluice_wire::{frontend, FrameError, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ServerConn;

/// Bytes of a server's answer buffered before the connection is given up on.
const MAX_BUFFERED: usize = 256 * 1024;

/// Why queries Sluice ran on a server did not end well.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// PostgreSQL answered with an error (the first one, with its SQLSTATE).
    #[error("{0}")]
    Failed(String),
    /// The connection closed or failed.
    #[error("the server connection failed")]
    Connection,
    /// The server sent something that is not the protocol: the connection is unusable.
    #[error("the server sent an invalid message: {0}")]
    Malformed(FrameError),
}

impl ServerConn {
    /// Runs one simple query and discards its result; used for resets. Fails if the
    /// server reports an error or does not end idle.
    pub async fn simple_query(&mut self, sql: &str) -> Result<(), QueryError> {
        // A reset may change settings PostgreSQL does not report: sync the next client.
        self.synced_for = 0;
        if sql.to_ascii_lowercase().contains("discard all") {
            self.statements.clear();
        }
        match self.run_queries(&[sql]).await? {
            TxStatus::Idle => Ok(()),
            _ => Err(QueryError::Failed(format!("{sql} left a transaction open"))),
        }
    }

    /// Runs simple queries in one round trip and discards their results (keeping the
    /// server's reported settings up to date). Returns the transaction status after
    /// the last.
    pub async fn run_queries(&mut self, queries: &[&str]) -> Result<TxStatus, QueryError> {
        let mut out = BytesMut::new();
        for sql in queries {
            frontend::build::query(sql, &mut out).map_err(|e| QueryError::Failed(e.to_string()))?;
        }
        self.wr.write_all(&out).await.map_err(|_| QueryError::Connection)?;
        let mut failed: Option<String> = None;
        let mut owed = queries.len();
        loop {
            while let Some(h) = self.whole_message().map_err(QueryError::Malformed)? {
                let msg = self.buf.split_to(h.total_len());
                let body = &msg[5..];
                match h.tag {
                    backend::ERROR_RESPONSE if failed.is_none() => {
                        let e = backend::parse_error_fields(body);
                        failed = Some(format!("{} ({})", e.message, e.code));
                    }
                    backend::PARAMETER_STATUS => {
                        if let Some((name, value)) = backend::parse_parameter_status(body) {
                            self.params.set(name, value);
                        }
                    }
                    backend::READY_FOR_QUERY => {
                        owed -= 1;
                        if owed == 0 {
                            let status = backend::parse_ready_for_query(body)
                                .ok_or(QueryError::Malformed(FrameError::Malformed { tag: h.tag }))?;
                            return match failed {
                                Some(e) => Err(QueryError::Failed(e)),
                                None => Ok(status),
                            };
                        }
                    }
                    _ => {}
                }
            }
            if self.buf.len() > MAX_BUFFERED {
                return Err(QueryError::Connection);
            }
            if self
                .rd
                .read_buf(&mut self.buf)
                .await
                .map_err(|_| QueryError::Connection)?
                == 0
            {
                return Err(QueryError::Connection);
            }
        }
    }

    /// The header of the whole message at the front of the buffer, if it is all
    /// there. An impossible length is logged: the connection is then unusable.
    fn whole_message(&self) -> Result<Option<Header>, FrameError> {
        Header::whole(&self.buf, self.scan.max_len()).inspect_err(|e| {
            tracing::warn!(server = self.id, error = %e, "server sent a malformed message");
        })
    }
}
