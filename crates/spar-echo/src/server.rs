//! The echo server: HTTP/1.1 and h2c (prior knowledge) on one port, answering with what it
//! saw; `?status=`, `?delay=` and `?size=` choose the answer.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::{Error, PodInfo, parse_delay};

/// What one request looked like from here.
#[derive(Debug, Serialize)]
pub struct Echo<'a> {
    pub method: String,
    pub path: String,
    pub query: String,
    pub protocol: String,
    pub headers: BTreeMap<String, String>,
    pub source: String,
    pub hostname: &'a str,
    pub pod: &'a str,
    pub namespace: &'a str,
    pub version: &'a str,
    /// The caller's identity when a proxy forwarded one (`x-forwarded-client-cert` URI).
    pub peer_identity: Option<String>,
    pub body_bytes: usize,
}

/// Bind the HTTP port (0 picks one) and serve forever; returns the bound address first.
pub async fn bind_http(
    port: u16,
    info: PodInfo,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let listener = TcpListener::bind(("::", port))
        .await
        .or(TcpListener::bind(("0.0.0.0", port)).await)
        .map_err(|source| Error::Listen { port, source })?;
    let addr = listener.local_addr()?;
    Ok((addr, serve_http(listener, info)))
}

/// Serve HTTP on a bound listener forever (tests bind where they want).
pub fn serve_http(listener: TcpListener, info: PodInfo) -> tokio::task::JoinHandle<()> {
    let info = Arc::new(info);
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            // Like any real server: answers must not wait for the client's delayed ACK.
            let _ = stream.set_nodelay(true);
            let info = info.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(req, peer, info.clone()));
                let mut builder = auto::Builder::new(TokioExecutor::new());
                // Answer clients that half-close after sending (`spar echo tcp`, netcat).
                builder.http1().half_close(true);
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

async fn handle(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    info: Arc<PodInfo>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    info.requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if info.log_requests {
        println!("{}", log_line(&req, peer, &info.log_headers));
    }
    if info.metrics && req.uri().path() == "/metrics" {
        return Ok(metrics(&info));
    }
    if let Some(r) = crate::ws::upgrade(&mut req) {
        return Ok(r);
    }
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let peer_identity = headers.get("x-forwarded-client-cert").and_then(|x| {
        // XFCC: `URI=` is the calling peer's identity (`By=` is the proxy's own).
        x.split(';')
            .find_map(|part| part.trim().strip_prefix("URI=").map(str::to_string))
    });
    let (method, path, query_s, protocol) = (
        req.method().to_string(),
        req.uri().path().to_string(),
        req.uri().query().unwrap_or("").to_string(),
        format!("{:?}", req.version()),
    );
    let body_bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    if let Some(d) = query.get("delay").and_then(|d| parse_delay(d)) {
        tokio::time::sleep(d).await;
    }
    // `only=POD` limits `status` to one pod, so a test can make one endpoint fail.
    let for_me = query.get("only").is_none_or(|p| *p == info.pod);
    let status = query
        .get("status")
        .filter(|_| for_me)
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let echo = Echo {
        method,
        path,
        query: query_s,
        protocol,
        headers,
        source: SocketAddr::new(peer.ip().to_canonical(), peer.port()).to_string(),
        hostname: &info.hostname,
        pod: &info.pod,
        namespace: &info.namespace,
        version: &info.version,
        peer_identity,
        body_bytes,
    };
    let text = query.get("format").is_some_and(|f| f == "text");
    let mut body = if text {
        text_form(&echo)
    } else {
        serde_json::to_string(&echo).unwrap_or_default() + "\n"
    }
    .into_bytes();
    // Pad to the requested size with spaces: JSON with trailing whitespace is still JSON.
    if let Some(size) = query.get("size").and_then(|s| s.parse::<usize>().ok()) {
        let size = size.min(64 << 20);
        if body.len() < size {
            body.resize(size, b' ');
        }
    }
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let ct = if text {
        "text/plain"
    } else {
        "application/json"
    };
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ct),
    );
    Ok(resp)
}

/// One request as `spar logs` shows it: method, path and query, host, source, and the
/// headers asked for (`-` when absent), so routing and mirroring are visible per pod.
pub fn log_line<B>(req: &Request<B>, peer: SocketAddr, headers: &[String]) -> String {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("-");
    let mut line = format!(
        "echo: {} {} host={host} source={}",
        req.method(),
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
        SocketAddr::new(peer.ip().to_canonical(), peer.port())
    );
    for h in headers {
        let v = req
            .headers()
            .get(h.as_str())
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_else(|| "-".into());
        line.push_str(&format!(" {h}={v}"));
    }
    line
}

/// The echo's own metrics, in Prometheus text format (what a pod annotated
/// `prometheus.io/scrape` serves, for metrics merging).
fn metrics(info: &PodInfo) -> Response<Full<Bytes>> {
    let n = info.requests.load(std::sync::atomic::Ordering::Relaxed);
    let body = format!(
        "# HELP spar_echo_requests_total HTTP requests this echo answered.\n\
         # TYPE spar_echo_requests_total counter\n\
         spar_echo_requests_total{{pod=\"{}\",version=\"{}\"}} {n}\n",
        info.pod, info.version
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

fn text_form(e: &Echo<'_>) -> String {
    let mut s = format!(
        "method={} path={} protocol={}\nsource={} hostname={} pod={} namespace={} version={}\n",
        e.method, e.path, e.protocol, e.source, e.hostname, e.pod, e.namespace, e.version
    );
    if let Some(id) = &e.peer_identity {
        s += &format!("peer_identity={id}\n");
    }
    for (k, v) in &e.headers {
        s += &format!("{k}: {v}\n");
    }
    s
}
