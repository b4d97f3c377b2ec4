//! Upstream HTTP connections of one cluster, pooled per endpoint. A request arrives with its
//! upstream already planned (HBONE with the expected identity, or plain TCP); the pool only
//! reuses a connection to exactly that upstream or dials one as planned, never deciding
//! again. HTTP/1.1 connections carry one exchange at a time; HTTP/2 ones multiplex.
//! `maxRequestsPerConnection` retires a connection after that many requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::Instant;

use super::body::Body;
use crate::Error;
use crate::l4::outbound::connect;
use crate::l4::plan::Upstream;
use crate::proxy::{Pod, Proxy};

/// Idle connections are closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Who dials, from where, and how long a dial may take.
pub struct Dialer<'a> {
    pub proxy: &'a Proxy,
    pub pod: &'a Pod,
    /// The client's address (HBONE `forwarded`).
    pub src: SocketAddr,
    pub connect_timeout: Duration,
}

enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

struct Conn {
    sender: Sender,
    served: usize,
    last_used: Instant,
}

/// A connection's key: the address and, for HBONE, the identity it was verified as.
type Key = (SocketAddr, Option<String>);

fn key(up: &Upstream) -> Key {
    match up {
        Upstream::Hbone {
            target, identity, ..
        } => (*target, Some(identity.clone())),
        Upstream::Direct { addr, .. } => (*addr, None),
    }
}

pub struct ConnPool {
    h2: bool,
    max_requests: Option<usize>,
    conns: Mutex<HashMap<Key, Vec<Conn>>>,
}

impl ConnPool {
    pub fn new(h2: bool, max_requests_per_connection: Option<usize>) -> ConnPool {
        ConnPool {
            h2,
            max_requests: max_requests_per_connection,
            conns: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Send `req` to `up`: on a pooled connection when one is free, else on a new one.
    pub async fn send(
        &self,
        d: &Dialer<'_>,
        up: &Upstream,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, Error> {
        let k = key(up);
        while let Some(conn) = self.checkout(&k) {
            match self.try_send(&k, conn, req).await {
                Sent::Done(r) => return r,
                // The connection was gone before the request left: try the next one.
                Sent::Unsent(back) => req = back,
            }
        }
        let conn = self.dial(d, up).await?;
        match self.try_send(&k, conn, req).await {
            Sent::Done(r) => r,
            Sent::Unsent(_) => Err(Error::Reset("the new connection closed at once".into())),
        }
    }

    /// A pooled connection that can take a request now (HTTP/1.1: taken out while busy).
    fn checkout(&self, k: &Key) -> Option<Conn> {
        let mut all = self.lock();
        let list = all.get_mut(k)?;
        let now = Instant::now();
        let stale = |c: &Conn| now.duration_since(c.last_used) > IDLE_TIMEOUT && idle(&c.sender);
        list.retain(|c| !(c.sender.is_closed() || stale(c)));
        let i = list.iter().position(|c| match &c.sender {
            Sender::H1(s) => s.is_ready(),
            Sender::H2(_) => true,
        })?;
        let c = list.swap_remove(i);
        Some(c)
    }

    fn checkin(&self, k: &Key, mut c: Conn) {
        c.served += 1;
        c.last_used = Instant::now();
        if self.max_requests.is_some_and(|m| c.served >= m) {
            // Retired: it finishes what it carries and closes when its last sender goes.
            return;
        }
        self.lock().entry(k.clone()).or_default().push(c);
    }

    async fn try_send(&self, k: &Key, mut c: Conn, req: Request<Body>) -> Sent {
        let unsent =
            |mut e: hyper::client::conn::TrySendError<Request<Body>>| match e.take_message() {
                Some(req) => Sent::Unsent(req),
                None => Sent::Done(Err(Error::Reset(
                    "the upstream closed the connection".into(),
                ))),
            };
        match &mut c.sender {
            Sender::H1(s) => {
                if s.ready().await.is_err() {
                    return Sent::Unsent(req);
                }
                let fut = s.try_send_request(req);
                // Busy until this exchange ends; the pool sees it as not ready meanwhile.
                self.checkin(k, c);
                match fut.await {
                    Ok(r) => Sent::Done(Ok(r)),
                    Err(e) => unsent(e),
                }
            }
            Sender::H2(s) => {
                let mut s2 = s.clone();
                self.checkin(k, c);
                if s2.ready().await.is_err() {
                    return Sent::Unsent(req);
                }
                match s2.try_send_request(req).await {
                    Ok(r) => Sent::Done(Ok(r)),
                    Err(e) => unsent(e),
                }
            }
        }
    }

    async fn dial(&self, d: &Dialer<'_>, up: &Upstream) -> Result<Conn, Error> {
        let timeout = d.connect_timeout;
        let dial = async {
            let io = TokioIo::new(connect(d.proxy, d.pod, up, d.src).await?);
            let handshake_failed = |e: hyper::Error| Error::Connect {
                addr: up.target().to_string(),
                reason: format!("HTTP handshake: {e}"),
            };
            Ok::<_, Error>(if self.h2 {
                let (s, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(handshake_failed)?;
                tokio::spawn(conn);
                Sender::H2(s)
            } else {
                let (s, conn) = http1::handshake(io).await.map_err(handshake_failed)?;
                tokio::spawn(conn.with_upgrades());
                Sender::H1(s)
            })
        };
        let sender = tokio::time::timeout(timeout, dial)
            .await
            .map_err(|_| Error::Connect {
                addr: up.target().to_string(),
                reason: format!("connect timed out after {timeout:?}"),
            })??;
        Ok(Conn {
            sender,
            served: 0,
            last_used: Instant::now(),
        })
    }
}

/// Whether a connection carries nothing now.
fn idle(s: &Sender) -> bool {
    match s {
        Sender::H1(s) => s.is_ready(),
        // An HTTP/2 connection may carry streams of clones; it is retired by its peer's
        // GOAWAY or by `maxRequestsPerConnection`, never for idleness of one clone.
        Sender::H2(_) => false,
    }
}

enum Sent {
    Done(Result<Response<Incoming>, Error>),
    Unsent(Request<Body>),
}
