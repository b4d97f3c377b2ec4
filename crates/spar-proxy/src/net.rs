//! The socket seam: every socket a proxy makes for a pod goes through a `PodNet`, so the same
//! proxy runs inside real network namespaces (`netns`, with nftables capture) or on loopback
//! for in-process tests (`loopback`, where pod addresses are 127.x addresses and the capture
//! is simulated).

pub mod capture;
pub mod loopback;
pub mod netns;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::Error;
pub use capture::{Capture, INBOUND_MARK, OUTBOUND_MARK};

/// Where a proxy finds its pods' networks.
#[derive(Clone)]
pub enum Network {
    /// `/var/run/netns/<name>`, the name from a template with `{namespace}` and `{name}`.
    Netns { template: String },
    /// In-process: every pod on the host's loopback.
    Loopback(Arc<loopback::LoopbackNet>),
}

impl Network {
    /// Open the network of the pod `namespace/name` whose address is `ip`.
    pub fn open(&self, namespace: &str, name: &str, ip: IpAddr) -> Result<PodNet, Error> {
        match self {
            Network::Netns { template } => {
                let netns = template
                    .replace("{namespace}", namespace)
                    .replace("{name}", name);
                Ok(PodNet::Netns(netns::Netns::open(&netns)?))
            }
            Network::Loopback(net) => Ok(PodNet::Loopback(net.pod(ip))),
        }
    }
}

/// One pod's network, as the proxy uses it.
pub enum PodNet {
    Netns(netns::Netns),
    Loopback(loopback::LoopPod),
}

impl PodNet {
    pub fn name(&self) -> String {
        match self {
            PodNet::Netns(n) => n.name.clone(),
            PodNet::Loopback(p) => format!("loopback {}", p.ip()),
        }
    }

    /// A listener on `port` inside the pod (all its addresses).
    pub async fn listen(&self, port: u16, transparent: bool) -> io::Result<TcpListener> {
        match self {
            PodNet::Netns(n) => n.listen(port, transparent).await,
            PodNet::Loopback(p) => p.listen(port).await,
        }
    }

    /// A listener on `port` of the pod's loopback only (in-process: as `listen`).
    pub async fn listen_local(&self, port: u16) -> io::Result<TcpListener> {
        match self {
            PodNet::Netns(n) => n.listen_local(port).await,
            PodNet::Loopback(p) => p.listen(port).await,
        }
    }

    /// A UDP socket on `port` inside the pod (the DNS proxy).
    pub async fn bind_udp(&self, port: u16) -> io::Result<UdpSocket> {
        match self {
            PodNet::Netns(n) => n.bind_udp(port).await,
            PodNet::Loopback(p) => p.bind_udp(port).await,
        }
    }

    /// Connect from inside the pod with `mark` (so capture lets the socket pass). `source`
    /// makes the connection appear to come from that address (IP_TRANSPARENT): how the
    /// application sees the real client.
    pub async fn connect(
        &self,
        dst: SocketAddr,
        mark: u32,
        source: Option<IpAddr>,
    ) -> io::Result<TcpStream> {
        match self {
            PodNet::Netns(n) => n.connect(dst, mark, source).await,
            PodNet::Loopback(p) => p.connect(dst, mark, source).await,
        }
    }

    /// The destination a captured connection was addressed to.
    pub fn original_dst(&self, s: &TcpStream) -> io::Result<SocketAddr> {
        match self {
            PodNet::Netns(_) => netns::original_dst(s),
            PodNet::Loopback(p) => p.original_dst(s),
        }
    }

    /// Start capturing the pod's traffic (after the listeners are up).
    pub fn capture(&self, c: &Capture) -> Result<(), Error> {
        match self {
            PodNet::Netns(n) => capture::install(&n.name, c),
            PodNet::Loopback(p) => {
                p.set_captured(true);
                Ok(())
            }
        }
    }

    /// Stop capturing: the pod is back to plain networking.
    pub fn release(&self) -> Result<(), Error> {
        match self {
            PodNet::Netns(n) => capture::remove(&n.name),
            PodNet::Loopback(p) => {
                p.set_captured(false);
                Ok(())
            }
        }
    }
}
