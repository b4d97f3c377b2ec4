//! `plan_request`: everything the engine decides about one request, before any I/O, as a pure
//! function of the snapshot, the request's facts and a random source: the route, a direct
//! response or redirect, the fault rolls, the destination (by weight) with its service,
//! port, subset and policy, the mirrors that rolled, the upstream authority and path after
//! rewrites, the timeout and retry policy, and the consistent-hash key. The executor
//! (`outbound`) only performs it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use http::{StatusCode, header};
use rand::Rng;

use super::config::{
    Action, Balance, HashOn, Match, Policy, Protocol, Retry, Route, Target, WeightedTarget,
};
use super::facts::RequestFacts;
use super::{balance, route as routing};
use crate::Error;
use crate::snapshot::{Endpoint, ServiceInfo, Snapshot};

/// A destination resolved: its service, the port, the subset. Owned (reference counts), so
/// a mirror's task can carry it.
#[derive(Debug, Clone)]
pub struct ClusterPlan {
    pub service: Arc<ServiceInfo>,
    pub port: u16,
    pub subset: Option<String>,
}

static NOBODY: LazyLock<HashSet<String>> = LazyLock::new(HashSet::new);
static DEFAULT_POLICY: LazyLock<Policy> = LazyLock::new(Policy::default);

impl ClusterPlan {
    /// The subset's members (None: every endpoint; an unknown subset selects nobody, and
    /// Istio answers 503 then too).
    pub fn members(&self) -> Option<&HashSet<String>> {
        let subset = self.subset.as_ref()?;
        Some(
            self.service
                .l7
                .as_ref()
                .and_then(|l7| l7.subsets.get(subset))
                .map(|s| &s.members)
                .unwrap_or(&NOBODY),
        )
    }

    /// The subset's traffic policy over the service's.
    pub fn policy(&self) -> &Policy {
        self.service
            .l7
            .as_ref()
            .map(|l7| l7.policy_for(self.subset.as_deref()))
            .unwrap_or(&DEFAULT_POLICY)
    }

    /// The endpoints to balance over, with the address each is reached on.
    pub fn endpoints(&self) -> Vec<(SocketAddr, &Endpoint)> {
        self.service
            .endpoints_for(self.port, self.members())
            .collect()
    }
}

#[derive(Debug)]
pub struct Forward<'s> {
    /// Fault injection, already rolled: a delay first, then an abort (HTTP status, gRPC code).
    pub delay: Option<Duration>,
    pub abort: Option<(u16, Option<u32>)>,
    /// The weighted destination chosen (its header operations apply too).
    pub target: &'s WeightedTarget,
    pub cluster: ClusterPlan,
    /// Mirror destinations whose percentage rolled.
    pub mirrors: Vec<ClusterPlan>,
    /// The upstream `Host` after `rewrite.authority`.
    pub authority: String,
    /// The upstream path and query after `rewrite`.
    pub path_and_query: String,
    /// Over all attempts.
    pub timeout: Option<Duration>,
    pub retry: &'s Retry,
    /// The consistent-hash key, when the destination's policy hashes.
    pub hash: Option<u64>,
    /// Speak HTTP/2 upstream.
    pub h2: bool,
}

#[derive(Debug)]
pub enum Step<'s> {
    Direct {
        status: StatusCode,
        body: &'s str,
    },
    Redirect {
        status: StatusCode,
        location: String,
    },
    Forward(Box<Forward<'s>>),
}

#[derive(Debug)]
pub struct RequestPlan<'s> {
    pub route: &'s Route,
    pub step: Step<'s>,
}

fn roll(pct: f64, rng: &mut impl Rng) -> bool {
    pct >= 100.0 || (pct > 0.0 && rng.random_range(0.0..100.0) < pct)
}

/// Resolve a destination: its service by host name, its port, its subset.
pub fn resolve(snap: &Snapshot, t: &Target, default_port: u16) -> Result<ClusterPlan, Error> {
    let service = snap
        .service_by_host(&t.host)
        .ok_or_else(|| Error::NoCluster(t.host.clone()))?;
    Ok(ClusterPlan {
        service: service.clone(),
        port: t.port.unwrap_or(default_port),
        subset: t.subset.clone(),
    })
}

/// The consistent-hash key of a request under `b`, when it hashes and the key is present.
pub fn hash_of(b: &Balance, f: &RequestFacts<'_>) -> Option<u64> {
    let Balance::Hash(on) = b else {
        return None;
    };
    match on {
        HashOn::Header(n) => f.headers.get(n).map(|v| balance::hash_key(v.as_bytes())),
        HashOn::SourceIp => Some(balance::hash_key(f.peer.ip().to_string().as_bytes())),
        HashOn::Query(k) => f.query?.split('&').find_map(|kv| {
            let (key, v) = kv.split_once('=').unwrap_or((kv, ""));
            (key == k).then(|| balance::hash_key(v.as_bytes()))
        }),
        HashOn::Cookie(name) => f
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == name).then(|| balance::hash_key(v.as_bytes()))
            }),
    }
}

fn path_and_query(route: &Route, matched: Option<&Match>, f: &RequestFacts<'_>) -> String {
    let path = match &route.rewrite {
        Some(rw) => routing::rewrite_path(rw, matched, f.path),
        None => f.path.to_string(),
    };
    match f.query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}

/// Decide a request to `f.service`.
pub fn plan_request<'s>(
    snap: &'s Snapshot,
    f: &RequestFacts<'_>,
    rng: &mut impl Rng,
) -> Result<RequestPlan<'s>, Error> {
    let svc = snap
        .services
        .get(f.service)
        .and_then(|s| s.l7.as_deref())
        .ok_or_else(|| Error::NoRoute("no route configuration for this service".into()))?;
    let (route, matched) =
        routing::select(svc, f).ok_or_else(|| Error::NoRoute("no route matched".into()))?;
    let targets = match &route.action {
        Action::Direct { status, body } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            let step = Step::Direct { status, body };
            return Ok(RequestPlan { route, step });
        }
        Action::Redirect { code, .. } => {
            let pq = match f.query {
                Some(q) => format!("{}?{q}", f.path),
                None => f.path.to_string(),
            };
            let location = routing::redirect_location(&route.action, f, &pq).unwrap_or_default();
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            let step = Step::Redirect { status, location };
            return Ok(RequestPlan { route, step });
        }
        Action::Forward(t) => t,
    };
    let (mut delay, mut abort) = (None, None);
    if let Some(fault) = &route.fault {
        if let Some((d, pct)) = fault.delay
            && roll(pct, rng)
        {
            delay = Some(d);
        }
        if let Some((status, grpc, pct)) = fault.abort
            && roll(pct, rng)
        {
            abort = Some((status, grpc));
        }
    }
    let target = routing::pick_weighted(targets, |n| rng.random_range(0..n))
        .ok_or_else(|| Error::NoRoute("route has no destination".into()))?;
    let cluster = resolve(snap, &target.target, f.port)?;
    let mut mirrors = Vec::new();
    for m in &route.mirrors {
        if roll(m.percent, rng)
            && let Ok(c) = resolve(snap, &m.target, f.port)
        {
            mirrors.push(c);
        }
    }
    let h2 = f.h2 || matches!(svc.protocol(f.port), Protocol::Http2 | Protocol::Grpc);
    let forward = Forward {
        delay,
        abort,
        target,
        hash: hash_of(&cluster.policy().balance, f),
        cluster,
        mirrors,
        authority: route
            .rewrite_authority
            .clone()
            .unwrap_or_else(|| f.authority.to_string()),
        path_and_query: path_and_query(route, matched, f),
        timeout: route.timeout,
        retry: &route.retry,
        h2,
    };
    Ok(RequestPlan {
        route,
        step: Step::Forward(Box::new(forward)),
    })
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
