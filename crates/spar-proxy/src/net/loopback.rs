//! Pods on loopback, for in-process tests without root: every pod address is a 127.x
//! address (all of 127/8 is local on Linux), listeners bind that address on a port the kernel
//! picks and are recorded under the port the pod asked for, and capture is simulated the way
//! the nftables rules behave: a captured pod's application connections go to its 15001 and
//! connections from other pods to its 15006 (except HBONE on 15008), with the original
//! destination recorded for `original_dst`.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

use crate::snapshot::HBONE_PORT;

const OUTBOUND_PORT: u16 = 15001;
const INBOUND_PORT: u16 = 15006;

/// The shared loopback "network" of one test.
#[derive(Default)]
pub struct LoopbackNet {
    /// (pod address, the port it listens on) -> the real loopback address.
    tcp: Mutex<HashMap<SocketAddr, SocketAddr>>,
    udp: Mutex<HashMap<SocketAddr, SocketAddr>>,
    /// Captured connections in flight: the client's address -> where it was going.
    pending: Mutex<HashMap<SocketAddr, SocketAddr>>,
    captured: Mutex<HashSet<IpAddr>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LoopbackNet {
    pub fn new() -> Arc<LoopbackNet> {
        Arc::new(LoopbackNet::default())
    }

    pub fn pod(self: &Arc<Self>, ip: IpAddr) -> LoopPod {
        LoopPod {
            net: self.clone(),
            ip,
        }
    }

    /// Record an application's listener: the pod `ip` serves `port` at `real`.
    pub fn serve(&self, ip: IpAddr, port: u16, real: SocketAddr) {
        lock(&self.tcp).insert(SocketAddr::new(ip, port), real);
    }

    /// Where the pod `ip` listens on `port`, if it does.
    pub fn listening(&self, ip: IpAddr, port: u16) -> Option<SocketAddr> {
        lock(&self.tcp).get(&SocketAddr::new(ip, port)).copied()
    }

    /// Where the pod `ip` receives UDP on `port`, if it does.
    pub fn listening_udp(&self, ip: IpAddr, port: u16) -> Option<SocketAddr> {
        lock(&self.udp).get(&SocketAddr::new(ip, port)).copied()
    }

    pub fn is_captured(&self, ip: IpAddr) -> bool {
        lock(&self.captured).contains(&ip)
    }

    /// An application in pod `from` connects to `dst`, as the kernel would carry it: to the
    /// pod's own proxy when the pod is captured, else over the "network" to `dst`.
    pub async fn app_connect(&self, from: IpAddr, dst: SocketAddr) -> io::Result<TcpStream> {
        if self.is_captured(from) {
            let proxy = self.listening(from, OUTBOUND_PORT).ok_or_else(|| {
                io::Error::new(io::ErrorKind::ConnectionRefused, "no outbound listener")
            })?;
            return self.dial(from, proxy, Some(dst)).await;
        }
        self.deliver(from, dst).await
    }

    /// A connection from `from` arriving at `dst`: a captured destination's proxy takes it
    /// on 15006 (HBONE on 15008 passes), as the pod's prerouting rule does.
    async fn deliver(&self, from: IpAddr, dst: SocketAddr) -> io::Result<TcpStream> {
        if dst.ip() != from && dst.port() != HBONE_PORT && self.is_captured(dst.ip()) {
            let proxy = self.listening(dst.ip(), INBOUND_PORT).ok_or_else(|| {
                io::Error::new(io::ErrorKind::ConnectionRefused, "no inbound listener")
            })?;
            return self.dial(from, proxy, Some(dst)).await;
        }
        let real = self.listening(dst.ip(), dst.port()).unwrap_or(dst);
        self.dial(from, real, None).await
    }

    async fn dial(
        &self,
        from: IpAddr,
        real: SocketAddr,
        original: Option<SocketAddr>,
    ) -> io::Result<TcpStream> {
        let s = match from {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        s.bind(SocketAddr::new(from, 0))?;
        let local = s.local_addr()?;
        if let Some(dst) = original {
            lock(&self.pending).insert(local, dst);
        }
        let r = s.connect(real).await;
        if r.is_err() {
            lock(&self.pending).remove(&local);
        }
        let s = r?;
        // A connection the proxy already reset (a denied destination) is still the app's to
        // read the reset from, as with a real socket: setting the option may fail on it.
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

/// One pod's view of the loopback network.
pub struct LoopPod {
    net: Arc<LoopbackNet>,
    ip: IpAddr,
}

impl LoopPod {
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    pub async fn listen(&self, port: u16) -> io::Result<TcpListener> {
        let l = TcpListener::bind(SocketAddr::new(self.ip, 0)).await?;
        lock(&self.net.tcp).insert(SocketAddr::new(self.ip, port), l.local_addr()?);
        Ok(l)
    }

    pub async fn bind_udp(&self, port: u16) -> io::Result<UdpSocket> {
        let u = UdpSocket::bind(SocketAddr::new(self.ip, 0)).await?;
        lock(&self.net.udp).insert(SocketAddr::new(self.ip, port), u.local_addr()?);
        Ok(u)
    }

    /// The proxy's own sockets are marked, so the pod's outbound capture lets them pass; the
    /// destination's inbound capture still applies. `source` (the client's address, for
    /// connections to the pod's own application) becomes the socket's address.
    pub async fn connect(
        &self,
        dst: SocketAddr,
        _mark: u32,
        source: Option<IpAddr>,
    ) -> io::Result<TcpStream> {
        let from = source.unwrap_or(self.ip);
        let own_loopback = dst.ip() == IpAddr::from([127, 0, 0, 1]);
        if source.is_some() || dst.ip() == self.ip || own_loopback {
            // To the pod's own application: over its loopback, never captured. The pod's
            // 127.0.0.1 is the pod itself here (pod addresses are other 127.x addresses).
            let ip = if own_loopback { self.ip } else { dst.ip() };
            let real = self.net.listening(ip, dst.port()).unwrap_or(dst);
            return self.net.dial(from, real, None).await;
        }
        self.net.deliver(from, dst).await
    }

    pub fn original_dst(&self, s: &TcpStream) -> io::Result<SocketAddr> {
        let peer = s.peer_addr()?;
        lock(&self.net.pending)
            .remove(&peer)
            .ok_or_else(|| io::Error::other("no original destination"))
    }

    pub fn set_captured(&self, on: bool) {
        let mut c = lock(&self.net.captured);
        if on {
            c.insert(self.ip);
        } else {
            c.remove(&self.ip);
        }
    }
}
