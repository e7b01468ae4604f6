//! Errors Sluice reports to clients as PostgreSQL ErrorResponses.

use bytes::BytesMut;
use sluice_wire::backend::{self, ErrorFields, ParsedError, Severity};
use sluice_wire::sqlstate;

use crate::pool::AcquireError;
use crate::server::ConnectError;

/// An error for a client: severity, SQLSTATE, message and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub severity: Severity,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ClientError {
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        ClientError {
            severity: Severity::Fatal,
            code: code.to_owned(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// The same error at another severity (an ERROR the session survives, a NOTICE).
    pub fn at(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// An ErrorResponse, or a NoticeResponse for the severities below ERROR (a
    /// notice must not end the client's request).
    pub fn write(&self, buf: &mut BytesMut) {
        let fields = ErrorFields {
            severity: self.severity,
            code: &self.code,
            message: &self.message,
            detail: self.detail.as_deref(),
            hint: self.hint.as_deref(),
        };
        match self.severity {
            Severity::Error | Severity::Fatal => backend::error_response(buf, &fields),
            _ => backend::notice_response(buf, &fields),
        }
    }

    pub fn protocol(message: impl Into<String>) -> Self {
        Self::fatal(sqlstate::PROTOCOL_VIOLATION, message)
    }

    pub fn password_failed(user: &str) -> Self {
        Self::fatal(
            sqlstate::INVALID_PASSWORD,
            format!("password authentication failed for user \"{user}\""),
        )
    }

    /// A PostgreSQL error forwarded as PostgreSQL sent it (always FATAL: the client
    /// cannot go on without a server).
    pub fn from_server(e: &ParsedError) -> Self {
        ClientError {
            severity: Severity::Fatal,
            code: e.code.clone(),
            message: e.message.clone(),
            detail: e.detail.clone(),
            hint: e.hint.clone(),
        }
    }
}

impl From<&ConnectError> for ClientError {
    fn from(e: &ConnectError) -> Self {
        match e {
            ConnectError::Rejected(pg) => ClientError::from_server(pg),
            ConnectError::Timeout(_) | ConnectError::Io { .. } => ClientError::fatal(
                sqlstate::CONNECTION_FAILURE,
                format!("pooler cannot connect to server: {e}"),
            )
            .hint("check that PostgreSQL is running and that [databases] host/port in the pooler config point at it"),
            ConnectError::Protocol(m) => ClientError::fatal(
                sqlstate::CONNECTION_FAILURE,
                format!("pooler cannot log in to server: {m}"),
            ),
            ConnectError::Failing(cause) => {
                let inner = ClientError::from(cause.as_ref());
                ClientError {
                    message: format!("server login has been failing, cached error: {} (server_login_retry)", inner.message),
                    hint: Some("the pooler retries the login in the background and serves clients as soon as it succeeds; retry the query".into()),
                    ..inner
                }
            }
        }
    }
}

impl From<&AcquireError> for ClientError {
    fn from(e: &AcquireError) -> Self {
        match e {
            // PgBouncer's exact text and code: applications match on them.
            AcquireError::WaitTimeout(_) => ClientError::fatal(sqlstate::PROTOCOL_VIOLATION, "query_wait_timeout").hint(
                "all server connections of this pool stayed busy for query_wait_timeout; raise default_pool_size or reserve_pool_size, or shorten the transactions holding them",
            ),
            AcquireError::QueueFull(_) => ClientError::fatal(
                sqlstate::TOO_MANY_CONNECTIONS,
                "no more clients may wait for a server of this pool lane (max_queue_length)",
            )
            .hint("the request was not run; retry it later, or raise max_queue_length or the lane's max_queue_length"),
            AcquireError::Connect(c) => c.into(),
        }
    }
}
