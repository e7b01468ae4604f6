//! `-d`: run in the background, PgBouncer-style, but with the launcher's exit code
//! telling whether the pooler really started. The launcher forks, and waits on a
//! pipe until the background process says it listens (exit 0) or the pipe closes
//! without that word (exit 1: the reason is in the logfile).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{Context, Result};
use nix::unistd::{dup2, fork, pipe, setsid, ForkResult};

/// The background process's end of the pipe: [`Started::confirm`] once it listens.
pub struct Started(Option<File>);

impl Started {
    /// Not a daemon: nobody waits.
    pub fn foreground() -> Started {
        Started(None)
    }

    /// Tells the launcher the pooler listens; it exits 0.
    pub fn confirm(&mut self) {
        if let Some(mut pipe) = self.0.take() {
            let _ = pipe.write_all(b"ok");
        }
    }
}

/// Forks. The launcher (the parent) never returns from here: it exits 0 once the
/// background process confirms, else 1. The background process (the child) returns,
/// in a new session, with its standard streams on /dev/null. Call before any thread
/// exists (the runtime starts later).
pub fn start() -> Result<Started> {
    let (read_end, write_end): (OwnedFd, OwnedFd) = pipe().context("cannot make a pipe")?;
    // SAFETY: no other thread runs yet, so the child may do anything.
    match unsafe { fork() }.context("cannot fork")? {
        ForkResult::Parent { .. } => {
            drop(write_end);
            let mut word = Vec::new();
            let _ = File::from(read_end).read_to_end(&mut word);
            if word == b"ok" {
                std::process::exit(0);
            }
            eprintln!("sluice: the background process did not start; see the logfile");
            std::process::exit(1);
        }
        ForkResult::Child => {
            drop(read_end);
            setsid().context("setsid")?;
            let null = File::options().read(true).write(true).open("/dev/null")?;
            for fd in 0..=2 {
                dup2(null.as_raw_fd(), fd).context("cannot redirect standard streams")?;
            }
            Ok(Started(Some(File::from(write_end))))
        }
    }
}
