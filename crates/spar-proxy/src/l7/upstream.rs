//! Upstream connections for the L7 engine: a hyper client per cluster whose connector dials
//! the endpoint over HBONE (mesh workloads: sidecars and ambient pods) or plain TCP (outside
//! the mesh), from inside the pod with the proxy's mark so capture lets it pass.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use spar_xds::workload::TunnelProtocol;
use tokio::net::TcpStream;

use crate::hbone::Connect;
use crate::inpod::OUTBOUND_MARK;
use crate::node::{Node, Pod};
use crate::state;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;
pub type HttpClient = Client<MeshConnector, Body>;

/// A connection to one endpoint.
pub enum UpIo {
    Tcp(TokioIo<TcpStream>),
    /// An HBONE stream; the guard counts it against its pooled HTTP/2 connection.
    Tunnel(TokioIo<crate::h2stream::H2Stream>, Arc<()>),
}

impl hyper::rt::Read for UpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpIo::Tunnel(s, _) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for UpIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpIo::Tunnel(s, _) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpIo::Tunnel(s, _) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpIo::Tunnel(s, _) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl Connection for UpIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// Dials `ip:port` URIs: HBONE when the address is a mesh workload, plain otherwise.
#[derive(Clone)]
pub struct MeshConnector {
    pub node: Arc<Node>,
    pub pod: Arc<Pod>,
    pub timeout: Duration,
}

impl tower_service::Service<Uri> for MeshConnector {
    type Response = UpIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<UpIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (node, pod, timeout) = (self.node.clone(), self.pod.clone(), self.timeout);
        Box::pin(async move {
            let target: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| BoxError::from(format!("upstream {uri} is not ip:port")))?;
            match tokio::time::timeout(timeout, dial(&node, &pod, target)).await {
                Ok(r) => r,
                Err(_) => Err(format!("connect to {target} timed out after {timeout:?}").into()),
            }
        })
    }
}

async fn dial(node: &Node, pod: &Pod, target: SocketAddr) -> Result<UpIo, BoxError> {
    let st = node.state.load_full();
    match st.by_ip.get(&target.ip()) {
        Some(w) if w.tunnel_protocol == TunnelProtocol::Hbone as i32 => {
            let identity = state::identity(w);
            let c = Connect {
                net: &pod.net,
                src_identity: &pod.identity,
                dst_identity: &identity,
                addr: SocketAddr::new(target.ip(), state::HBONE_PORT),
                target,
                src_addr: SocketAddr::new(pod.ip, 0),
            };
            let (io, guard) = node.pool.connect(&node.certs, &node.roots, c).await?;
            Ok(UpIo::Tunnel(TokioIo::new(io), guard))
        }
        _ => Ok(UpIo::Tcp(TokioIo::new(
            pod.net.connect(target, OUTBOUND_MARK, None).await?,
        ))),
    }
}

pub fn client(connector: MeshConnector, h2: bool) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .pool_idle_timeout(Duration::from_secs(60))
        .set_host(false)
        .build(connector)
}
