//! The L4 outbound path: a captured connection goes where `plan_outbound` says, trying each
//! candidate in turn, over an HBONE tunnel or plain TCP, and is relayed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::pipe::Leg;
use super::plan::{OutboundPlan, Upstream, plan_outbound};
use super::relay::{labels, relay, reset};
use crate::Error;
use crate::h2stream::H2Stream;
use crate::hbone::Connect;
use crate::net::OUTBOUND_MARK;
use crate::proxy::{Pod, Proxy};

/// Serve one captured outbound connection (`waypoints`: through the destination's waypoint,
/// as node proxies do).
pub async fn serve(
    proxy: Arc<Proxy>,
    pod: Arc<Pod>,
    s: TcpStream,
    peer: SocketAddr,
    waypoints: bool,
) {
    let Ok(dst) = pod.net.original_dst(&s) else {
        return reset(s);
    };
    let snap = proxy.snapshot.load_full();
    let plan = plan_outbound(&snap, dst, waypoints, &mut rand::rng());
    drop(snap);
    forward(&proxy, &pod, s, peer, dst, plan).await
}

/// Connect to the first candidate that answers and relay both ways.
pub async fn forward(
    proxy: &Proxy,
    pod: &Pod,
    s: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    plan: OutboundPlan,
) {
    let mut last_err = String::from("no endpoint");
    for up in &plan.candidates {
        let tp = crate::hbone::traceparent();
        match connect_traced(proxy, pod, up, peer, &tp).await {
            Ok(io) => {
                let l = labels(
                    "source",
                    Some(&pod.workload),
                    up.workload().map(|w| &**w),
                    plan.service.as_ref(),
                    up.mtls(),
                );
                let via = match up {
                    Upstream::Hbone { addr, identity, .. } => format!(
                        "hbone:{addr} src_id={} dst_id={identity} trace_id={}",
                        pod.identity,
                        tp.get(3..35).unwrap_or("-")
                    ),
                    Upstream::Direct { .. } => format!("plaintext src_id={}", pod.identity),
                };
                let log = format!(
                    "outbound src={peer} dst={dst} upstream={} via={via}",
                    up.target()
                );
                return relay(&proxy.metrics, s, io, l, log, None).await;
            }
            Err(e) => last_err = e.to_string(),
        }
    }
    tracing::info!(target: "access", "outbound src={peer} dst={dst} error=\"{last_err}\"");
    reset(s);
}

/// A byte stream to an upstream: an HBONE tunnel, or a plain connection.
pub enum UpstreamIo {
    /// The guard counts the stream against its pooled HTTP/2 connection.
    Tunnel(H2Stream, Arc<()>),
    Tcp(TcpStream),
}

/// Open a byte stream to `up` from `pod`; `src` is the client's address (HBONE `forwarded`).
pub async fn connect(
    proxy: &Proxy,
    pod: &Pod,
    up: &Upstream,
    src: SocketAddr,
) -> Result<UpstreamIo, Error> {
    connect_traced(proxy, pod, up, src, &crate::hbone::traceparent()).await
}

/// Connect to the first of `candidates` that answers: the stream and the candidate it went
/// to, or the last error ("no endpoint" when there were none).
pub async fn connect_first<'a>(
    proxy: &Proxy,
    pod: &Pod,
    candidates: &'a [Upstream],
    src: SocketAddr,
) -> Result<(UpstreamIo, &'a Upstream), String> {
    let mut last = String::from("no endpoint");
    for up in candidates {
        match connect(proxy, pod, up, src).await {
            Ok(io) => return Ok((io, up)),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// `connect`, with the HBONE CONNECT's `traceparent` (the connection's id in the logs of
/// both node proxies) given.
pub async fn connect_traced(
    proxy: &Proxy,
    pod: &Pod,
    up: &Upstream,
    src: SocketAddr,
    traceparent: &str,
) -> Result<UpstreamIo, Error> {
    match up {
        Upstream::Hbone {
            addr,
            target,
            identity,
            ..
        } => {
            let c = Connect {
                net: &pod.net,
                src_identity: &pod.identity,
                dst_identity: identity,
                addr: *addr,
                target: *target,
                src_addr: src,
                traceparent,
            };
            let (io, guard) = proxy.pool.connect(&proxy.certs, &proxy.roots, c).await?;
            Ok(UpstreamIo::Tunnel(io, guard))
        }
        Upstream::Direct { addr, .. } => pod
            .net
            .connect(*addr, OUTBOUND_MARK, None)
            .await
            .map(UpstreamIo::Tcp)
            .map_err(|e| Error::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            }),
    }
}

impl From<UpstreamIo> for Leg {
    fn from(io: UpstreamIo) -> Leg {
        match io {
            UpstreamIo::Tunnel(s, guard) => Leg::Tunnel(s, Some(guard)),
            UpstreamIo::Tcp(s) => Leg::Tcp(s),
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tunnel(s, _) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tunnel(s, _) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tunnel(s, _) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tunnel(s, _) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tunnel(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Tunnel(s, _) => s.is_write_vectored(),
            UpstreamIo::Tcp(s) => s.is_write_vectored(),
        }
    }
}
