//! The L7 engine, shared by sidecars (and waypoints). Deciding and doing are apart:
//!
//! - decide (pure, table-tested): `facts` (what a request is), `route` (matching, weights,
//!   rewrites), `plan` (`plan_request`: the whole decision for one request), `retry`
//!   (`should_retry`, back-off), `balance` (endpoint choice), `outlier`, `breaker`;
//! - do: `outbound` (the client side, phase by phase), `attempt` (the retry loop), `mirror`,
//!   `upstream` (pooled connections to planned upstreams), `inbound` (the destination side),
//!   `respond` (every failure becomes a response in one place), `telemetry`;
//! - config: `config` compiles VirtualService/DestinationRule into engine types or refuses.

pub mod attempt;
pub mod authorize;
pub mod balance;
pub mod body;
pub mod breaker;
pub mod config;
pub mod detect;
pub mod downstream;
pub mod facts;
pub mod headers;
pub mod inbound;
pub mod ingress;
pub mod mirror;
pub mod outbound;
pub mod outlier;
pub mod passthrough;
pub mod plan;
pub mod respond;
pub mod retry;
pub mod route;
pub mod telemetry;
pub mod trace;
pub mod upstream;
pub mod waypoint;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use balance::Stats;
use breaker::Breaker;
use config::Policy;
use plan::ClusterPlan;
use telemetry::{HttpMetrics, LogFormat};
use upstream::ConnPool;

use crate::snapshot::ServiceKey;

/// One upstream cluster: a service (or one of its subsets) with its policy, its connection
/// pool and its breaker. Rebuilt when the policy changes.
pub struct Cluster {
    pub policy: Policy,
    pub pool: ConnPool,
    pub breaker: Breaker,
    pub rr: AtomicUsize,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct ClusterKey {
    service: ServiceKey,
    subset: Option<String>,
    h2: bool,
}

/// Engine state that outlives one request.
#[derive(Default)]
pub struct Engine {
    clusters: Mutex<HashMap<ClusterKey, Arc<Cluster>>>,
    pub stats: Stats,
    pub metrics: HttpMetrics,
    pub log_format: LogFormat,
    /// Span exporters (Telemetry `tracing`).
    pub tracer: trace::export::Tracer,
    /// Pools to addresses outside any service (a collector given by IP), by protocol.
    direct: Mutex<HashMap<bool, Arc<Cluster>>>,
}

impl Engine {
    pub fn new(log_format: LogFormat) -> Engine {
        Engine {
            log_format,
            ..Default::default()
        }
    }

    /// The cluster for a planned destination, created on first use or when its policy changed.
    pub fn cluster(&self, c: &ClusterPlan, h2: bool) -> Arc<Cluster> {
        let key = ClusterKey {
            service: c.service.key.clone(),
            subset: c.subset.clone(),
            h2,
        };
        let policy = c.policy();
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cl) = clusters.get(&key)
            && &cl.policy == policy
        {
            return cl.clone();
        }
        let cl = Arc::new(Cluster {
            pool: ConnPool::new(h2, policy.limits.max_requests_per_connection),
            breaker: Breaker::new(&policy.limits, h2),
            rr: AtomicUsize::new(0),
            policy: policy.clone(),
        });
        clusters.insert(key, cl.clone());
        cl
    }

    /// A pool for destinations that are no service (default policy).
    pub fn direct_cluster(&self, h2: bool) -> Arc<Cluster> {
        let mut direct = self.direct.lock().unwrap_or_else(|e| e.into_inner());
        direct
            .entry(h2)
            .or_insert_with(|| {
                let policy = Policy::default();
                Arc::new(Cluster {
                    pool: ConnPool::new(h2, None),
                    breaker: Breaker::new(&policy.limits, h2),
                    rr: AtomicUsize::new(0),
                    policy,
                })
            })
            .clone()
    }
}
