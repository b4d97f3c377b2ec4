//! Mirroring: a copy of the request to each mirror destination that rolled, with the
//! authority suffixed `-shadow` as Envoy does; fire and forget, its answer dropped. Bounded:
//! at most `MAX_IN_FLIGHT` mirrors at once (more are skipped, as a shadow is best effort),
//! each done within `MIRROR_TIMEOUT`, at most `DRAIN_LIMIT` of its answer read.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Version};
use http_body_util::BodyExt;

use super::balance;
use super::body::Body;
use super::downstream::Downstream;
use super::plan::{ClusterPlan, Forward};
use super::upstream::Dialer;
use crate::l4::plan::Upstream;

const MAX_IN_FLIGHT: usize = 256;
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);
const DRAIN_LIMIT: usize = 64 * 1024;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// A place among the mirrors in flight, given back on drop.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        if IN_FLIGHT.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

pub fn spawn(
    ds: &Arc<Downstream>,
    target: ClusterPlan,
    method: &Method,
    head: &HeaderMap,
    fwd: &Forward<'_>,
    body: Body,
) {
    let mut head = head.clone();
    let shadow = format!("{}-shadow", fwd.authority);
    if let Ok(v) = HeaderValue::from_str(&shadow) {
        head.insert(header::HOST, v);
    }
    let Some(slot) = Slot::take() else {
        tracing::debug!("too many mirrors in flight; this one is skipped");
        return;
    };
    let (ds, method, h2) = (ds.clone(), method.clone(), fwd.h2);
    let path = fwd.path_and_query.clone();
    let task = async move {
        let cluster = ds.engine.cluster(&target, h2);
        let eps = target.endpoints();
        let stats: Vec<_> = eps.iter().map(|(a, _)| ds.engine.stats.get(*a)).collect();
        let Some(idx) = balance::pick(
            &cluster.policy.balance,
            &stats,
            &[],
            None,
            &cluster.rr,
            &mut |n| rand::random_range(0..n),
        ) else {
            return;
        };
        let (addr, ep) = eps[idx];
        let up = Upstream::to(&ep.workload, addr);
        let uri = if h2 {
            // HTTP/2 carries the host as :authority.
            format!("http://{shadow}{path}")
        } else {
            path
        };
        let Ok(mut r) = Request::builder().method(method).uri(uri).body(body) else {
            return;
        };
        *r.headers_mut() = head;
        if h2 {
            *r.version_mut() = Version::HTTP_2;
            r.headers_mut().remove(header::HOST);
        }
        let dialer = Dialer {
            proxy: &ds.proxy,
            pod: &ds.pod,
            src: ds.peer,
            connect_timeout: cluster.policy.limits.connect_timeout,
        };
        if let Ok(resp) = cluster.pool.send(&dialer, &up, r).await {
            let _ = http_body_util::Limited::new(resp.into_body(), DRAIN_LIMIT)
                .collect()
                .await;
        }
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(MIRROR_TIMEOUT, task).await;
        drop(slot);
    });
}
