//! Listening sockets: TCP on `listen_addr:listen_port` and a Unix socket
//! `.s.PGSQL.<port>` in `unix_socket_dir`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use tokio::net::{TcpListener, UnixListener};
use tracing::{info, warn};

use crate::app::App;
use crate::client;
use crate::config::{self, Config};
use crate::shutdown::Shutdown;
use crate::stream::{tune_tcp, Stream};

pub struct Listeners {
    pub tcp: Vec<TcpListener>,
    pub unix: Option<(UnixListener, PathBuf)>,
}

impl Listeners {
    /// Binds every configured address. Fails if any bind fails.
    pub async fn bind(c: &Config) -> anyhow::Result<Listeners> {
        let mut tcp = Vec::new();
        for addr in config::list(&c.listen_addr) {
            let hosts: Vec<&str> = if addr == "*" { vec!["0.0.0.0", "::"] } else { vec![addr] };
            for host in hosts {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.trim_matches(['[', ']']), c.listen_port))
                    .await
                    .with_context(|| format!("cannot resolve listen_addr '{host}'"))?
                    .collect();
                for a in addrs {
                    let socket = if a.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        let s = tokio::net::TcpSocket::new_v6()?;
                        // Listen on "::" for IPv6 only; "0.0.0.0" covers IPv4.
                        let _ = socket2::SockRef::from(&s).set_only_v6(true);
                        s
                    };
                    socket.set_reuseaddr(true)?;
                    socket.bind(a).with_context(|| format!("cannot listen on {a}"))?;
                    tcp.push(socket.listen(c.listen_backlog)?);
                    info!(addr = %a, "listening on TCP");
                }
            }
        }
        let unix = if c.unix_socket_dir.is_empty() {
            None
        } else {
            let path = PathBuf::from(&c.unix_socket_dir).join(format!(".s.PGSQL.{}", c.listen_port));
            if path.exists() {
                // A stale socket from a previous run; a live one would still be bound.
                if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                    return Err(anyhow!("{} is in use by another process", path.display()));
                }
                std::fs::remove_file(&path).with_context(|| format!("cannot remove stale {}", path.display()))?;
            }
            let l = UnixListener::bind(&path).with_context(|| format!("cannot listen on {}", path.display()))?;
            let mode = u32::from_str_radix(c.unix_socket_mode.trim_start_matches("0o"), 8).unwrap_or(0o777);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            info!(path = %path.display(), "listening on Unix socket");
            Some((l, path))
        };
        if tcp.is_empty() && unix.is_none() {
            return Err(anyhow!("no listeners configured"));
        }
        Ok(Listeners { tcp, unix })
    }

    /// Accepts connections, one task per client, until a shutdown starts: then the
    /// listening sockets close (new connections are refused at once).
    pub fn spawn(self, app: Arc<App>) {
        for l in self.tcp {
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                let mut shutdown = app.shutdown.subscribe();
                loop {
                    tokio::select! {
                        accepted = l.accept() => match accepted {
                            Ok((s, peer)) => {
                                tune_tcp(&s, app.current().config.tcp_keepalive);
                                tokio::spawn(client::serve(Arc::clone(&app), Stream::Tcp(s), peer.to_string()));
                            }
                            Err(e) => accept_error(e).await,
                        },
                        _ = until(&mut shutdown, Shutdown::stops_accepting) => return,
                    }
                }
            });
        }
        if let Some((l, path)) = self.unix {
            tokio::spawn(async move {
                let mut shutdown = app.shutdown.subscribe();
                loop {
                    tokio::select! {
                        accepted = l.accept() => match accepted {
                            Ok((s, _)) => {
                                tokio::spawn(client::serve(Arc::clone(&app), Stream::Unix(s), "unix".into()));
                            }
                            Err(e) => accept_error(e).await,
                        },
                        _ = until(&mut shutdown, Shutdown::stops_accepting) => {
                            let _ = std::fs::remove_file(&path);
                            return;
                        }
                    }
                }
            });
        }
    }
}

/// Resolves once the shutdown state satisfies `cond` (or the sender is gone).
pub async fn until(rx: &mut tokio::sync::watch::Receiver<Shutdown>, cond: fn(Shutdown) -> bool) {
    let _ = rx.wait_for(|s| cond(*s)).await.map(|_| ());
}

/// EMFILE and friends: back off instead of spinning.
async fn accept_error(e: std::io::Error) {
    warn!(error = %e, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}
