//! A pod's network namespace: a thread that lives in it and makes sockets there (listeners,
//! and outbound sockets marked so redirection skips them).

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::oneshot;

use crate::Error;

type Job = Box<dyn FnOnce() + Send>;

/// A handle on one pod's network namespace.
pub struct Netns {
    pub name: String,
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Netns {
    /// Enter `/var/run/netns/<name>` on a dedicated thread that stays there.
    pub fn open(name: &str) -> Result<Netns, Error> {
        let path = PathBuf::from("/var/run/netns").join(name);
        let file = std::fs::File::open(&path).map_err(|e| Error::Netns {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                // setns changes only this thread; it stays in the pod's namespace until the
                // handle is dropped.
                let entered = nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| e.to_string());
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                }
            })?;
        ready_rx
            .recv()
            .map_err(|e| Error::Netns {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?
            .map_err(|reason| Error::Netns {
                path: path.display().to_string(),
                reason,
            })?;
        Ok(Netns {
            name: name.to_string(),
            jobs: tx,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| io::Error::other("pod namespace thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("pod namespace thread is gone"))?
    }

    /// A listener on `port` inside the pod (all addresses).
    pub async fn listen(
        &self,
        port: u16,
        transparent: bool,
    ) -> io::Result<tokio::net::TcpListener> {
        self.listen_at([0, 0, 0, 0], port, transparent).await
    }

    /// A listener on `port` of the pod's loopback only (the config dump on 15000).
    pub async fn listen_local(&self, port: u16) -> io::Result<tokio::net::TcpListener> {
        self.listen_at([127, 0, 0, 1], port, false).await
    }

    async fn listen_at(
        &self,
        ip: [u8; 4],
        port: u16,
        transparent: bool,
    ) -> io::Result<tokio::net::TcpListener> {
        let l: TcpListener = self
            .run(move || {
                let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
                s.set_reuse_address(true)?;
                if transparent {
                    s.set_ip_transparent_v4(true)?;
                }
                s.bind(&SocketAddr::from((ip, port)).into())?;
                s.listen(1024)?;
                s.set_nonblocking(true)?;
                Ok(s.into())
            })
            .await?;
        tokio::net::TcpListener::from_std(l)
    }

    /// A UDP socket on `port` inside the pod (the DNS proxy).
    pub async fn bind_udp(&self, port: u16) -> io::Result<tokio::net::UdpSocket> {
        let u: std::net::UdpSocket = self
            .run(move || {
                let u = std::net::UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port)))?;
                u.set_nonblocking(true)?;
                Ok(u)
            })
            .await?;
        tokio::net::UdpSocket::from_std(u)
    }

    /// Connect from inside the pod. `source` makes the connection appear to come from that
    /// address (IP_TRANSPARENT), which is how the application sees the real client.
    pub async fn connect(
        &self,
        dst: SocketAddr,
        mark: u32,
        source: Option<IpAddr>,
    ) -> io::Result<tokio::net::TcpStream> {
        let s: TcpStream = self
            .run(move || {
                let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
                s.set_mark(mark)?;
                s.set_tcp_nodelay(true)?;
                if let Some(src) = source {
                    s.set_ip_transparent_v4(true)?;
                    s.bind(&SocketAddr::new(src, 0).into())?;
                }
                s.set_nonblocking(true)?;
                Ok(s.into())
            })
            .await?;
        tokio::net::TcpSocket::from_std_stream(s).connect(dst).await
    }
}

/// The original destination of a redirected connection.
pub fn original_dst(s: &tokio::net::TcpStream) -> io::Result<SocketAddr> {
    socket2::SockRef::from(s)
        .original_dst_v4()?
        .as_socket()
        .ok_or_else(|| io::Error::other("no original destination"))
}
