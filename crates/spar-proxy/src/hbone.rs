//! HBONE: HTTP/2 CONNECT over mTLS to a pod's 15008. The client pools connections per
//! (source identity, destination identity, destination address) and opens a new one when a
//! connection has carried its share of streams, so a busy pool spreads over several
//! connections (and so over worker threads). The server answers 200, 401, 503 or 400.
//! Both ends drive HTTP/2 with the `h2` crate directly (see `h2stream`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use rustls::RootCertStore;
use tokio_rustls::TlsConnector;

use crate::Error;
use crate::certs::CertManager;
use crate::h2stream::H2Stream;
use crate::net::{OUTBOUND_MARK, PodNet};

/// Streams per pooled connection before another is opened (ztunnel allows 100).
const STREAMS_PER_CONN: usize = 100;

/// HTTP/2 flow control and framing for tunnels. hyper's defaults (a 1 MiB window on the
/// server side, 16 KiB frames) stall one bulk stream on window updates and spend a frame
/// header, a TLS record and a wake-up per 16 KiB; tunnels carry whole TCP streams, so they get
/// wide windows and large frames (ztunnel chose similar values). The connection's window is
/// four streams' worth: a tunnel whose reader stalls holds its stream's window unreleased, and
/// a connection window no wider than one stream's would let it stall every other tunnel of the
/// pooled connection (a 4 MiB connection window measured less memory after bulk runs before
/// freed memory was purged, but that is not worth one slow client blocking its neighbours).
const STREAM_WINDOW: u32 = 4 << 20;
const CONN_WINDOW: u32 = 16 << 20;
const MAX_FRAME: u32 = 1 << 20;

/// What the TLS layer of a tunnel reads from the socket per syscall. rustls asks for at most
/// 4 KiB at a time; on a bulk tunnel that is a syscall and a wake-up per 4 KiB, so the socket
/// is read through a buffer (one per pooled connection, so the memory is small).
const TLS_READ_BUF: usize = 64 * 1024;

/// A tunnel's TCP socket as the TLS layer should read it.
pub fn buffered(s: tokio::net::TcpStream) -> tokio::io::BufReader<tokio::net::TcpStream> {
    tokio::io::BufReader::with_capacity(TLS_READ_BUF, s)
}

/// rustls queues at most 64 KiB of unsent TLS by default: a 64 KiB DATA frame and its 9-byte
/// header then went out as 64 KiB plus a 9-byte record of its own, two syscalls and two packets
/// per frame where one does. Room for a frame and more keeps each frame one write.
pub const TLS_SEND_LIMIT: usize = 256 * 1024;

/// The HTTP/2 server side of HBONE (port 15008), tuned like the client.
pub fn server_builder() -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(MAX_FRAME as usize)
        .max_concurrent_streams(STREAMS_PER_CONN as u32 * 2);
    b
}

/// Answer a CONNECT with 200 and return the tunnel's byte stream.
pub fn accept(mut respond: SendResponse<Bytes>, recv: h2::RecvStream) -> Option<H2Stream> {
    match respond.send_response(status(StatusCode::OK), false) {
        Ok(send) => Some(H2Stream::new(send, recv)),
        Err(e) => {
            tracing::debug!(error = %e, "HBONE stream closed before its answer");
            None
        }
    }
}

/// Answer a CONNECT with an error status, ending the stream.
pub fn refuse(mut respond: SendResponse<Bytes>, s: StatusCode) {
    let _ = respond.send_response(status(s), true);
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct PoolKey {
    src: String,
    dst: String,
    addr: SocketAddr,
}

struct Pooled {
    sender: SendRequest<Bytes>,
    streams: Arc<()>,
    /// Set when the connection's task ends.
    closed: Arc<AtomicBool>,
    /// The certificate it was made with: once the identity's certificate is renewed, the
    /// connection takes no new streams and drains, so no connection outlives its
    /// certificate for long.
    cert: Arc<rustls::sign::CertifiedKey>,
}

pub struct Pool {
    conns: Mutex<HashMap<PoolKey, Vec<Pooled>>>,
    /// The dial (TCP, TLS, HTTP/2) and, separately, a CONNECT's answer must each come within
    /// this: one hung endpoint never blocks failover to the next.
    timeout: std::time::Duration,
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new(crate::limits::Limits::default().handshake)
    }
}

/// One tunnel request.
pub struct Connect<'a> {
    pub net: &'a PodNet,
    pub src_identity: &'a str,
    pub dst_identity: &'a str,
    pub addr: SocketAddr,
    pub target: SocketAddr,
    pub src_addr: SocketAddr,
    /// W3C `traceparent` of the CONNECT: the connection's id in both proxies' logs.
    pub traceparent: &'a str,
}

impl Pool {
    pub fn new(timeout: std::time::Duration) -> Pool {
        Pool {
            conns: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// Open a tunnel to `c.target` through `c.addr`; returns the byte stream and a guard that
    /// counts the stream against its connection while it lives.
    pub async fn connect(
        &self,
        certs: &Arc<CertManager>,
        roots: &Arc<RootCertStore>,
        c: Connect<'_>,
    ) -> Result<(H2Stream, Arc<()>), Error> {
        let up = |reason: String| Error::Connect {
            addr: c.addr.to_string(),
            reason,
        };
        let key = PoolKey {
            src: c.src_identity.into(),
            dst: c.dst_identity.into(),
            addr: c.addr,
        };
        let current = certs.slot(c.src_identity).cert.load_full();
        let (sender, guard) = match current.as_ref().and_then(|cert| self.reuse(&key, cert)) {
            Some(p) => p,
            None => {
                let (sender, closed, cert) =
                    tokio::time::timeout(self.timeout, dial(certs, roots, &c))
                        .await
                        .map_err(|_| {
                            up(format!("no HBONE connection within {:?}", self.timeout))
                        })??;
                let guard = Arc::new(());
                let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
                conns.entry(key).or_default().push(Pooled {
                    sender: sender.clone(),
                    streams: guard.clone(),
                    closed,
                    cert,
                });
                (sender, guard)
            }
        };
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(c.target.to_string())
            .header("forwarded", format!("for=\"{}\"", c.src_addr))
            .header("traceparent", c.traceparent)
            .header("baggage", "")
            .body(())
            .map_err(|e| up(e.to_string()))?;
        let answer = async {
            // Waits while the peer's stream limit is reached.
            let mut sender = sender.ready().await.map_err(|e| up(e.to_string()))?;
            let (resp, send) = sender
                .send_request(req, false)
                .map_err(|e| up(e.to_string()))?;
            let resp = resp.await.map_err(|e| up(e.to_string()))?;
            Ok::<_, Error>((resp, send))
        };
        let (resp, send) = tokio::time::timeout(self.timeout, answer)
            .await
            .map_err(|_| up(format!("no answer to CONNECT within {:?}", self.timeout)))??;
        if resp.status() != StatusCode::OK {
            return Err(Error::HboneStatus {
                addr: c.target.to_string(),
                status: resp.status().as_u16(),
            });
        }
        Ok((H2Stream::new(send, resp.into_body()), guard))
    }

    fn reuse(
        &self,
        key: &PoolKey,
        cert: &Arc<rustls::sign::CertifiedKey>,
    ) -> Option<(SendRequest<Bytes>, Arc<()>)> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let list = conns.get_mut(key)?;
        // Dropping an entry drops only the pool's handle: streams in flight finish.
        list.retain(|p| !p.closed.load(Ordering::Acquire) && Arc::ptr_eq(&p.cert, cert));
        list.iter()
            .filter(|p| Arc::strong_count(&p.streams) <= STREAMS_PER_CONN)
            .min_by_key(|p| Arc::strong_count(&p.streams))
            .map(|p| (p.sender.clone(), p.streams.clone()))
    }
}

async fn dial(
    certs: &Arc<CertManager>,
    roots: &Arc<RootCertStore>,
    c: &Connect<'_>,
) -> Result<
    (
        SendRequest<Bytes>,
        Arc<AtomicBool>,
        Arc<rustls::sign::CertifiedKey>,
    ),
    Error,
> {
    let up = |reason: String| Error::Connect {
        addr: c.addr.to_string(),
        reason,
    };
    let cert = certs.get(c.src_identity).await?;
    let cfg = crate::tls::client_config(certs.slot(c.src_identity), roots.clone(), c.dst_identity)?;
    let tcp = c
        .net
        .connect(c.addr, OUTBOUND_MARK, None)
        .await
        .map_err(|e| up(e.to_string()))?;
    // No SNI is sent; the name only satisfies the API.
    let name = rustls_pki_types::ServerName::IpAddress(c.addr.ip().into());
    let mut tls = TlsConnector::from(cfg)
        .connect(name, buffered(tcp))
        .await
        .map_err(|e| up(format!("mTLS: {e}")))?;
    tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_LIMIT));
    let (sender, conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(MAX_FRAME as usize)
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|e| up(e.to_string()))?;
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HBONE connection closed");
        }
        flag.store(true, Ordering::Release);
    });
    Ok((sender, closed, cert))
}

/// A fresh W3C trace context for each tunnel.
/// A new connection id as a W3C `traceparent` (a random trace and span).
pub fn traceparent() -> String {
    let trace: u128 = rand::random();
    let span: u64 = rand::random();
    format!("00-{trace:032x}-{span:016x}-01")
}

/// The trace id of a CONNECT's `traceparent`, when well-formed: the connection's id.
pub fn trace_id(h: &http::HeaderMap) -> Option<String> {
    let tp = h.get("traceparent")?.to_str().ok()?;
    let id = tp.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit())).then(|| id.to_string())
}

/// The server side's answer for a request that is not a well-formed CONNECT.
pub fn bad_request(respond: SendResponse<Bytes>, why: &str) {
    tracing::debug!(why, "HBONE request rejected");
    refuse(respond, StatusCode::BAD_REQUEST)
}

fn status(s: StatusCode) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = s;
    r
}
