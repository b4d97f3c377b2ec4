//! The inbound paths: HBONE (15008) and captured plaintext (15006). Each connection (each
//! CONNECT stream) is decided by `plan_inbound`, then handed to the role's delivery, which
//! either relays it to the application (`to_app`, L4) or serves HTTP on it (L7).
//!
//! 15008: TLS 1.3 with the pod's certificate, client certificate required, ALPN h2
//!        -> HTTP/2 -> per stream: CONNECT? -> plan_inbound (400 | 401) -> deliver
//! 15006: original destination -> plan_inbound (no identity; reset when refused) -> deliver

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::pipe::Leg;
use super::plan::{Admitted, Arrival, plan_inbound};
use super::relay::{labels, relay, reset};
use crate::h2stream::H2Stream;
use crate::hbone;
use crate::net::{INBOUND_MARK, OUTBOUND_MARK};
use crate::proxy::{Pod, Proxy};

/// What a role does with an inbound connection `plan_inbound` admitted.
pub trait Deliver: Send + Sync + 'static {
    fn proxy(&self) -> &Arc<Proxy>;
    fn deliver(
        self: Arc<Self>,
        pod: Arc<Pod>,
        conn: Admitted,
        io: Arrived,
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// An admitted connection before it is answered.
pub enum Arrived {
    /// A captured plaintext connection.
    Plain(TcpStream),
    /// An HBONE CONNECT stream: answered 200 when delivered, 503 when the app is not there.
    Tunnel {
        respond: SendResponse<Bytes>,
        recv: RecvStream,
    },
}

impl Arrived {
    /// Accept it as a byte stream (HBONE: answer 200).
    pub fn accept(self) -> Option<InboundIo> {
        match self {
            Arrived::Plain(s) => Some(InboundIo::Plain(s)),
            Arrived::Tunnel { respond, recv } => {
                hbone::accept(respond, recv).map(InboundIo::Tunnel)
            }
        }
    }

    /// Refuse it: a reset, or an HBONE status.
    pub fn refuse(self, status: StatusCode) {
        match self {
            Arrived::Plain(s) => reset(s),
            Arrived::Tunnel { respond, .. } => hbone::refuse(respond, status),
        }
    }
}

/// Serve a captured plaintext connection.
pub async fn plaintext<R: Deliver>(role: Arc<R>, pod: Arc<Pod>, s: TcpStream, peer: SocketAddr) {
    let Ok(dst) = pod.net.original_dst(&s) else {
        return reset(s);
    };
    let target = dst.to_string();
    let arrival = Arrival {
        peer,
        peer_identity: None,
        target: &target,
    };
    let snap = role.proxy().snapshot.load_full();
    match plan_inbound(&snap, &pod.current(&snap), &arrival) {
        Ok(conn) => {
            drop(snap);
            role.deliver(pod, conn, Arrived::Plain(s)).await
        }
        Err(r) => {
            tracing::info!(target: "access", "inbound src={peer} dst={dst} via=plaintext denied=\"{}\"", r.reason);
            reset(s)
        }
    }
}

/// Serve an HBONE connection: mTLS, HTTP/2, then each CONNECT stream on its own task.
pub async fn hbone<R: Deliver>(role: Arc<R>, pod: Arc<Pod>, s: TcpStream, peer: SocketAddr) {
    let proxy = role.proxy().clone();
    tunnels(
        &proxy,
        &pod.identity.clone(),
        s,
        peer,
        |req, respond, peer_id| {
            let (role, pod) = (role.clone(), pod.clone());
            tokio::spawn(stream(role, pod, peer, peer_id, req, respond));
        },
    )
    .await
}

/// The HBONE server side every role shares: TLS 1.3 with `identity`'s certificate (the
/// client's required and checked), HTTP/2, within the handshake timeout; then `each` gets
/// every stream with the client's verified identity, until the client goes away.
pub async fn tunnels<F>(proxy: &Proxy, identity: &str, s: TcpStream, peer: SocketAddr, mut each: F)
where
    F: FnMut(Request<RecvStream>, SendResponse<Bytes>, Option<String>),
{
    let cfg = match crate::tls::server_config(
        proxy.certs.slot(identity),
        proxy.roots.clone(),
        &proxy.trust_domain,
    ) {
        Ok(c) => c,
        Err(e) => return tracing::warn!(error = %e, "HBONE TLS config"),
    };
    // A client that connects and never finishes its handshakes is dropped, not held.
    let handshakes = async {
        let mut tls = tokio_rustls::TlsAcceptor::from(cfg)
            .accept(hbone::buffered(s))
            .await
            .map_err(|e| format!("mTLS: {e}"))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
            return Err("ALPN h2 required".to_string());
        }
        let peer_id = crate::tls::peer_identity(tls.get_ref().1.peer_certificates());
        tls.get_mut()
            .1
            .set_buffer_limit(Some(hbone::TLS_SEND_LIMIT));
        let conn = hbone::server_builder()
            .handshake(tls)
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        Ok((conn, peer_id))
    };
    let (mut conn, peer_id) = match tokio::time::timeout(proxy.limits.handshake, handshakes).await {
        Ok(Ok(c)) => c,
        // A bare TCP connect and close (a readiness probe) is not worth an access line.
        Ok(Err(e)) if e.ends_with("eof") => {
            return tracing::debug!(%peer, error = %e, "HBONE connection closed before its handshake");
        }
        Ok(Err(e)) => {
            return tracing::info!(target: "access", "inbound src={peer} via=hbone rejected=\"{e}\"");
        }
        Err(_) => {
            proxy.limit_metrics.timed_out();
            return tracing::info!(target: "access", "inbound src={peer} via=hbone rejected=\"handshake not done within {:?}\"", proxy.limits.handshake);
        }
    };
    // Accepting also drives the connection, so this loop runs until the peer goes away.
    while let Some(next) = conn.accept().await {
        let (req, respond) = match next {
            Ok(r) => r,
            Err(e) => return tracing::debug!(error = %e, "HBONE connection closed"),
        };
        each(req, respond, peer_id.clone());
    }
}

/// One CONNECT stream.
async fn stream<R: Deliver>(
    role: Arc<R>,
    pod: Arc<Pod>,
    peer: SocketAddr,
    peer_id: Option<String>,
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) {
    if req.method() != Method::CONNECT {
        return hbone::bad_request(respond, "not CONNECT");
    }
    let authority = req.uri().authority().map(|a| a.as_str()).unwrap_or("");
    let arrival = Arrival {
        peer,
        peer_identity: peer_id.as_deref(),
        target: authority,
    };
    let snap = role.proxy().snapshot.load_full();
    let plan = plan_inbound(&snap, &pod.current(&snap), &arrival);
    drop(snap);
    match plan {
        Ok(mut conn) => {
            conn.trace_id = hbone::trace_id(req.headers());
            let recv = req.into_body();
            role.deliver(pod, conn, Arrived::Tunnel { respond, recv })
                .await
        }
        Err(r) => {
            tracing::info!(target: "access", "inbound src={peer} dst={authority} via=hbone src_id={} dst_id={} denied=\"{}\"",
                peer_id.as_deref().unwrap_or("-"), pod.identity, r.reason);
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
            hbone::refuse(respond, status)
        }
    }
}

/// L4 delivery: connect to the application as the client, answer, relay.
pub async fn to_app(proxy: &Proxy, pod: &Pod, conn: Admitted, io: Arrived) {
    let via = if conn.mtls { "hbone" } else { "plaintext" };
    let log = format!(
        "inbound src={} dst={} via={via} src_id={} dst_id={} trace_id={}",
        conn.peer,
        conn.target,
        conn.peer_identity.as_deref().unwrap_or("-"),
        pod.identity,
        conn.trace_id.as_deref().unwrap_or("-")
    );
    let app = match connect_app(pod, conn.target, conn.peer.ip()).await {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(target: "access", "{log} error=\"{e}\"");
            return io.refuse(StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    let l = labels(
        "destination",
        conn.source.as_deref(),
        Some(&pod.workload),
        None,
        conn.mtls,
    );
    // Decided again on every config change while open.
    let (uid, me) = (pod.workload.uid.clone(), pod.workload.clone());
    let (peer, peer_id, target) = (
        conn.peer,
        conn.peer_identity.clone(),
        conn.target.to_string(),
    );
    let tracked = proxy.tracker.track(Box::new(move |snap| {
        let dst = snap
            .workloads
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| me.clone());
        let arrival = Arrival {
            peer,
            peer_identity: peer_id.as_deref(),
            target: &target,
        };
        plan_inbound(snap, &dst, &arrival).err().map(|r| r.reason)
    }));
    if let Some(io) = io.accept() {
        relay(&proxy.metrics, io, app, l, log, Some(&tracked.stop)).await;
    }
}

/// Connect to the application as the client (its real source address), falling back to the
/// pod's own address if transparent sockets are not available.
pub async fn connect_app(pod: &Pod, dst: SocketAddr, src: IpAddr) -> io::Result<TcpStream> {
    match pod.net.connect(dst, INBOUND_MARK, Some(src)).await {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "transparent connect failed; the application will see the proxy's address");
            pod.net.connect(dst, OUTBOUND_MARK, None).await
        }
    }
}

/// An accepted inbound byte stream.
pub enum InboundIo {
    Plain(TcpStream),
    Tunnel(H2Stream),
}

impl From<InboundIo> for Leg {
    fn from(io: InboundIo) -> Leg {
        match io {
            InboundIo::Plain(s) => Leg::Tcp(s),
            InboundIo::Tunnel(s) => Leg::Tunnel(s, None),
        }
    }
}

impl AsyncRead for InboundIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            InboundIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            InboundIo::Tunnel(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for InboundIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            InboundIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            InboundIo::Tunnel(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            InboundIo::Plain(s) => Pin::new(s).poll_flush(cx),
            InboundIo::Tunnel(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            InboundIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            InboundIo::Tunnel(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
