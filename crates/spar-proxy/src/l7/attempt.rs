//! The retry loop of one request: each attempt takes a circuit-breaker slot, picks an
//! endpoint (`balance::pick`), sends under the per-try timeout over the planned upstream,
//! feeds latency and outcome to the endpoint's statistics and outlier detection, and asks
//! `retry::should_retry` whether to go again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;

use super::Cluster;
use super::balance::{self, EndpointStats};
use super::body::{Body, BoxError, Holding, ReqBody};
use super::downstream::Downstream;
use super::headers::strip_hop_by_hop;
use super::outlier::{self, Outcome};
use super::plan::Forward;
use super::retry::{Attempt, RetryState, backoff, should_retry};
use super::telemetry::Report;
use super::upstream::Dialer;
use crate::Error;
use crate::l4::plan::Upstream;

/// What every attempt of one request shares.
pub struct Exchange<'a> {
    pub ds: &'a Arc<Downstream>,
    pub fwd: &'a Forward<'a>,
    pub cluster: &'a Cluster,
    pub method: &'a Method,
    pub head: &'a HeaderMap,
}

/// The request of one attempt, to the endpoint `up`.
pub fn request(x: &Exchange<'_>, up: &Upstream, body: Body) -> Result<Request<Body>, Error> {
    let h2 = x.fwd.h2;
    // HTTP/1.1 upstreams get origin form; HTTP/2 ones the authority as :authority.
    let uri = if h2 {
        format!("http://{}{}", x.fwd.authority, x.fwd.path_and_query)
            .parse::<Uri>()
            .or_else(|_| format!("http://{}{}", up.target(), x.fwd.path_and_query).parse())
    } else {
        x.fwd.path_and_query.parse::<Uri>()
    }
    .map_err(|e| Error::Downstream(format!("bad request path: {e}")))?;
    let mut r = Request::new(body);
    *r.method_mut() = x.method.clone();
    *r.uri_mut() = uri;
    *r.headers_mut() = x.head.clone();
    *r.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if h2 {
        r.headers_mut().remove(header::HOST);
    }
    Ok(r)
}

/// Run the attempts; the last response, or the last error.
pub async fn run(
    x: &Exchange<'_>,
    body: &mut ReqBody,
    mut downstream_upgrade: Option<OnUpgrade>,
    report: &mut Report,
) -> Result<Response<Body>, Error> {
    let eps = x.fwd.cluster.endpoints();
    if eps.is_empty() {
        return Err(Error::NoHealthyUpstream(
            x.fwd.cluster.service.key.to_string(),
        ));
    }
    let stats: Vec<Arc<EndpointStats>> =
        eps.iter().map(|(a, _)| x.ds.engine.stats.get(*a)).collect();
    let policy = &x.cluster.policy;
    let breaker = &x.cluster.breaker;
    let dialer = Dialer {
        proxy: &x.ds.proxy,
        pod: &x.ds.pod,
        src: x.ds.peer,
        connect_timeout: policy.limits.connect_timeout,
    };
    let mut tried: Vec<usize> = Vec::new();
    let mut last = Error::NoHealthyUpstream(x.fwd.cluster.service.key.to_string());
    let mut retrying = false;
    loop {
        report.attempts += 1;
        let permit = breaker.enter().await.map_err(|_| Error::Overflow)?;
        let Some(idx) = balance::pick(
            &policy.balance,
            &stats,
            &tried,
            x.fwd.hash,
            &x.cluster.rr,
            &mut |n| rand::random_range(0..n),
        ) else {
            return Err(last);
        };
        let (addr, ep) = eps[idx];
        let up = Upstream::to(&ep.workload, addr);
        report.upstream = Some(up.clone());
        let Some(b) = body.take() else {
            return Err(last);
        };
        let mut req = request(x, &up, b)?;
        if policy.limits.max_requests_per_connection == Some(1) && !x.fwd.h2 {
            req.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let es = &stats[idx];
        es.inflight.fetch_add(1, Ordering::Relaxed);
        es.requests.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let sent = x.cluster.pool.send(&dialer, &up, req);
        let res = match x.fwd.retry.per_try_timeout {
            Some(t) => tokio::time::timeout(t, sent)
                .await
                .unwrap_or(Err(Error::Timeout)),
            None => sent.await,
        };
        es.inflight.fetch_sub(1, Ordering::Relaxed);
        if std::mem::take(&mut retrying) {
            breaker.retries.fetch_sub(1, Ordering::Relaxed);
        }
        es.observe(t0.elapsed());
        report.upstream_time = Some(t0.elapsed());
        let attempt = match &res {
            Ok(r) => Attempt::Status(r.status().as_u16()),
            Err(Error::Connect { .. } | Error::HboneStatus { .. }) => Attempt::ConnectFailed,
            Err(Error::Timeout) => Attempt::Timeout,
            Err(_) => Attempt::Reset,
        };
        let outcome = match attempt {
            Attempt::Status(s) => Outcome::Status(s),
            _ => Outcome::Failed,
        };
        outlier::record(policy.outlier.as_ref(), es, outcome, &stats);
        let state = RetryState {
            made: report.attempts,
            replayable: body.replayable(),
            budget: breaker.retries.load(Ordering::Relaxed) < breaker.max_retries,
            upgrade: downstream_upgrade.is_some(),
        };
        if should_retry(x.fwd.retry, x.method, attempt, state) {
            tried.push(idx);
            if tried.len() >= eps.len() {
                tried.clear();
            }
            breaker.retries.fetch_add(1, Ordering::Relaxed);
            retrying = true;
            match res {
                Ok(r) => {
                    // Read a little of the failed answer so its connection can be reused;
                    // a large or slow one is dropped instead (the connection with it).
                    let drain = http_body_util::Limited::new(r.into_body(), 64 * 1024).collect();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
                }
                Err(e) => last = e,
            }
            drop(permit);
            let pause = backoff(report.attempts, &mut rand::rng());
            tokio::time::sleep(pause).await;
            continue;
        }
        let mut resp = res?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(down) = downstream_upgrade.take()
        {
            let up = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(a), Ok(b)) = (down.await, up.await) {
                    let mut a = hyper_util::rt::TokioIo::new(a);
                    let mut b = hyper_util::rt::TokioIo::new(b);
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
        let (mut parts, b) = resp.into_parts();
        if parts.status != StatusCode::SWITCHING_PROTOCOLS {
            strip_hop_by_hop(&mut parts.headers, false);
        }
        // The breaker slot is held until the response body is done: an HTTP/1.1 connection
        // is busy until then.
        let held = Holding {
            inner: b.map_err(BoxError::from).boxed(),
            _held: permit,
        };
        return Ok(Response::from_parts(parts, held.boxed()));
    }
}
