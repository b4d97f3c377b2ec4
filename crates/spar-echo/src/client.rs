//! The load client: N requests at a rate and concurrency, summarised by status code, by the
//! answering pod and version (so a 90/10 split is visible), and by latency percentiles.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::Error;

#[derive(Debug, Clone)]
pub struct Options {
    pub url: String,
    pub count: usize,
    /// Requests per second over all connections; 0 means as fast as possible.
    pub qps: f64,
    pub concurrency: usize,
    pub headers: Vec<(String, String)>,
    /// HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    pub http2: bool,
    pub timeout: Duration,
    /// A new connection per request (so connection-level load balancing is visible).
    pub no_keepalive: bool,
    /// GET unless told otherwise (POST tests retries of non-idempotent requests).
    pub method: http::Method,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub requests: usize,
    /// Requests that got no HTTP answer (connect failure, reset, timeout).
    pub errors: usize,
    pub by_status: BTreeMap<u16, usize>,
    pub by_version: BTreeMap<String, usize>,
    pub by_pod: BTreeMap<String, usize>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Wall time of the run and answered requests per second over it.
    pub elapsed_s: f64,
    pub rps: f64,
    /// The first transport error, to tell the user what went wrong.
    pub first_error: Option<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "requests: {}  errors: {}", self.requests, self.errors)?;
        for (s, n) in &self.by_status {
            writeln!(f, "  status {s}: {n}")?;
        }
        for (v, n) in &self.by_version {
            writeln!(
                f,
                "  version {}: {n}",
                if v.is_empty() { "(none)" } else { v }
            )?;
        }
        for (p, n) in &self.by_pod {
            writeln!(f, "  pod {p}: {n}")?;
        }
        writeln!(
            f,
            "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        )?;
        if let Some(e) = &self.first_error {
            writeln!(f, "first error: {e}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    summary: Summary,
}

pub async fn run(opts: Options) -> Result<Summary, Error> {
    let uri: http::Uri = opts.url.parse().map_err(|_| Error::Url(opts.url.clone()))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(Error::Url(opts.url.clone()));
    }
    let mut headers = http::HeaderMap::new();
    for (k, v) in &opts.headers {
        let name =
            http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| Error::Header(k.clone()))?;
        let value = http::HeaderValue::from_str(v).map_err(|_| Error::Header(v.clone()))?;
        headers.append(name, value);
    }
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(opts.http2);
    if opts.no_keepalive {
        builder.pool_max_idle_per_host(0);
    }
    // Load generators (wrk, oha) disable Nagle; so does this one, or h2 frames wait on ACKs.
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = builder.build::<_, Empty<Bytes>>(connector);
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let (client, next, tally, uri, headers, opts) = (
            client.clone(),
            next.clone(),
            tally.clone(),
            uri.clone(),
            headers.clone(),
            opts.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= opts.count {
                    return;
                }
                let due = if opts.qps > 0.0 {
                    // Open loop: request i is due at start + i/qps, whatever earlier ones did,
                    // and its latency counts from then (no coordinated omission).
                    let due = start + Duration::from_secs_f64(i as f64 / opts.qps);
                    tokio::time::sleep_until(due.into()).await;
                    due
                } else {
                    Instant::now()
                };
                let mut req = http::Request::builder()
                    .method(opts.method.clone())
                    .uri(uri.clone())
                    .body(Empty::new())
                    .unwrap_or_default();
                *req.headers_mut() = headers.clone();
                let result = tokio::time::timeout(opts.timeout, async {
                    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
                    let status = resp.status().as_u16();
                    let body = resp
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| e.to_string())?
                        .to_bytes();
                    Ok::<_, String>((status, body))
                })
                .await
                .unwrap_or_else(|_| Err("timed out".into()));
                let elapsed = due.elapsed();
                let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                t.summary.requests += 1;
                match result {
                    Ok((status, body)) => {
                        t.latencies.push(elapsed);
                        *t.summary.by_status.entry(status).or_default() += 1;
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                            let field = |k: &str| {
                                v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string()
                            };
                            *t.summary.by_version.entry(field("version")).or_default() += 1;
                            *t.summary.by_pod.entry(field("pod")).or_default() += 1;
                        }
                    }
                    Err(e) => {
                        t.summary.errors += 1;
                        t.summary.first_error.get_or_insert(e);
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let wall = start.elapsed().as_secs_f64();
    let mut t = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    t.summary.elapsed_s = wall;
    t.summary.rps = if wall > 0.0 {
        t.latencies.len() as f64 / wall
    } else {
        0.0
    };
    t.latencies.sort();
    let pct = |p: f64| {
        if t.latencies.is_empty() {
            return 0.0;
        }
        let idx = ((t.latencies.len() as f64 * p).ceil() as usize).clamp(1, t.latencies.len()) - 1;
        t.latencies[idx].as_secs_f64() * 1000.0
    };
    t.summary.p50_ms = pct(0.50);
    t.summary.p90_ms = pct(0.90);
    t.summary.p99_ms = pct(0.99);
    t.summary.max_ms = pct(1.0);
    Ok(t.summary)
}
