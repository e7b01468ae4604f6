//! `sluice healthcheck [CONFIG]`: exit 0 when the pooler answers, 1 otherwise; for a
//! container HEALTHCHECK, with no psql or pg_isready needed. It reads the same
//! configuration the pooler does (the file, or the environment alone).
//!
//! With `metrics_addr` set it asks `/ready` (listeners up, not shutting down);
//! otherwise it opens the client port and checks that Sluice answers a request
//! there (a CancelRequest with a key nobody has, which Sluice answers by closing).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sluice_pooler::config;

const TIMEOUT: Duration = Duration::from_secs(3);

pub fn run(default_path: bool, path: &Path) -> Result<()> {
    let loaded = crate::load(default_path, path)?;
    let c = &loaded.config;
    if !c.metrics_addr.trim().is_empty() {
        return ready(&local(c.metrics_addr.trim()));
    }
    let host = config::list(&c.listen_addr)
        .next()
        .map(|h| if h == "*" { "127.0.0.1" } else { h });
    match host {
        Some(host) => answers_tcp(&format!("{}:{}", local(host), c.listen_port)),
        None => answers_unix(&Path::new(&c.unix_socket_dir).join(format!(".s.PGSQL.{}", c.listen_port))),
    }
}

/// Wildcard listen addresses are reached on loopback.
fn local(addr: &str) -> String {
    addr.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]")
}

fn connect(addr: &str) -> Result<TcpStream> {
    let sock = addr
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr}"))?
        .next()
        .with_context(|| format!("no address for {addr}"))?;
    let s = TcpStream::connect_timeout(&sock, TIMEOUT).with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    Ok(s)
}

fn ready(addr: &str) -> Result<()> {
    let mut s = connect(addr)?;
    write!(s, "GET /ready HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response).context("no answer from /ready")?;
    let status = response.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        bail!("/ready answered: {status}")
    }
}

/// A CancelRequest for pid 0, key 0: never a real client's.
const PROBE: [u8; 16] = [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 0, 0, 0, 0, 0];

fn answered(mut s: impl Read + Write) -> Result<()> {
    s.write_all(&PROBE)?;
    let mut buf = [0u8; 64];
    // Sluice closes the connection once it has handled the request.
    match s.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => bail!("unexpected answer to a cancel probe ({n} bytes): is this a pooler?"),
        Err(e) => bail!("the pooler did not answer: {e}"),
    }
}

fn answers_tcp(addr: &str) -> Result<()> {
    answered(connect(addr)?)
}

fn answers_unix(path: &Path) -> Result<()> {
    let s = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("cannot connect to {}", path.display()))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    answered(s)
}
