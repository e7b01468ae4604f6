//! What happened to one page request, classified from the SQLSTATE and message the
//! server (or pooler) sent, never guessed: a request counts as a success only when
//! every statement completed.

use serde::Serialize;

/// How a page ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Failed(Cause),
    /// Still running when the run ended and its drain time was over: neither a success
    /// nor a failure, counted on its own.
    Unfinished,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The pooler's queue gave up: `08P01 query_wait_timeout` (PgBouncer and Sluice).
    QueryWaitTimeout,
    /// Another error the pooler made (08P01 other texts, login failures it reports,
    /// `server login has been failing`, `no more connections allowed`, ...).
    PoolerError,
    /// An error PostgreSQL raised for a statement (any other SQLSTATE).
    ServerError,
    /// The page took longer than `request_timeout`.
    RequestTimeout,
    /// The connection failed or closed without an error message.
    ConnectionError,
    /// The scenario asked for something the tool cannot do (a `fetch` of a column
    /// that is neither an integer nor text): fix the scenario file.
    ScenarioError,
}

impl Cause {
    pub const ALL: [Cause; 6] = [
        Cause::QueryWaitTimeout,
        Cause::PoolerError,
        Cause::ServerError,
        Cause::RequestTimeout,
        Cause::ConnectionError,
        Cause::ScenarioError,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cause::QueryWaitTimeout => "query_wait_timeout",
            Cause::PoolerError => "pooler_error",
            Cause::ServerError => "server_error",
            Cause::RequestTimeout => "request_timeout",
            Cause::ConnectionError => "connection_error",
            Cause::ScenarioError => "scenario_error",
        }
    }

    /// Classifies a tokio-postgres error.
    pub fn of(e: &tokio_postgres::Error) -> Cause {
        match e.as_db_error() {
            Some(db) => Self::of_db(db.code().code(), db.message()),
            None => Cause::ConnectionError,
        }
    }

    /// Classifies an ErrorResponse by SQLSTATE and message.
    pub fn of_db(code: &str, message: &str) -> Cause {
        if code == "08P01" && message.starts_with("query_wait_timeout") {
            return Cause::QueryWaitTimeout;
        }
        let pooler_text = message.starts_with("server login has been failing")
            || message.starts_with("no more connections allowed")
            || message.starts_with("pooler ")
            || message.contains("(server_connect_timeout)")
            || message == "admin forced disconnect";
        if code == "08P01" || pooler_text {
            return Cause::PoolerError;
        }
        Cause::ServerError
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_sqlstate_and_text() {
        assert_eq!(Cause::of_db("08P01", "query_wait_timeout"), Cause::QueryWaitTimeout);
        assert_eq!(
            Cause::of_db("08P01", "no more connections allowed (max_client_conn)"),
            Cause::PoolerError
        );
        assert_eq!(
            Cause::of_db(
                "08006",
                "server login has been failing, cached error: x (server_login_retry)"
            ),
            Cause::PoolerError
        );
        assert_eq!(
            Cause::of_db("57014", "canceling statement due to statement timeout"),
            Cause::ServerError
        );
        assert_eq!(
            Cause::of_db("42P01", "relation \"x\" does not exist"),
            Cause::ServerError
        );
    }
}
