//! Sans-IO PostgreSQL wire protocol for Sluice.
//!
//! Pure functions and small state machines over bytes: no sockets, no async runtime.
//! The pooler's hot path uses [`frame::Scanner`] to walk message boundaries by their
//! 5-byte header and only decodes the few messages that change pooler state.
//!
//! - [`frame`]: message headers and the streaming scanner.
//! - [`startup`]: the untagged startup-phase packets (StartupMessage, SSLRequest, ...).
//! - [`backend`]: messages a server sends (we build them for clients, parse them from servers).
//! - [`frontend`]: messages a client sends (we parse them from clients, build them for servers).
//! - [`scram`], [`md5`]: password verification on the server side of a handshake.
//! - [`sqlstate`]: the error codes Sluice uses.

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod md5;
pub mod scram;
pub mod sqlstate;
pub mod startup;

pub use frame::{FrameError, Header, OnHeader, ScanHandler, Scanner, Visit};
