//! The L7 engine, shared by sidecars (and waypoints): one concern per module.
//!
//! - `config`: compile Istio's VirtualService/DestinationRule into engine types (or refuse);
//! - `route`: pure route selection, weights, rewrites, redirects;
//! - `balance`: load balancing, circuit breaking, outlier detection;
//! - `detect`: protocol detection on undeclared ports;
//! - `http`: the outbound per-request pipeline; `inbound`: the destination side;
//! - `upstream`: HBONE or plain connections;
//! - `telemetry`: Istio's request metrics and the access log.

pub mod balance;
pub mod config;
pub mod detect;
pub mod http;
pub mod inbound;
pub mod route;
pub mod telemetry;
pub mod upstream;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use crate::node::{Node, Pod};
use balance::{Breaker, Stats};
use config::Policy;
use telemetry::{HttpMetrics, LogFormat};
use upstream::{HttpClient, MeshConnector};

/// One upstream cluster: a service (or one of its subsets) with its policy, its connection
/// pool and its breaker. Rebuilt when the policy changes.
pub struct Cluster {
    pub policy: Policy,
    pub client: HttpClient,
    pub breaker: Breaker,
    pub rr: AtomicUsize,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct ClusterKey {
    service: String,
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
}

impl Engine {
    pub fn new(log_format: LogFormat) -> Engine {
        Engine {
            log_format,
            ..Default::default()
        }
    }

    /// The cluster for a destination, created on first use or when its policy changed.
    pub fn cluster(
        &self,
        node: &Arc<Node>,
        pod: &Arc<Pod>,
        service: &str,
        subset: Option<&str>,
        h2: bool,
        policy: Policy,
    ) -> Arc<Cluster> {
        let key = ClusterKey {
            service: service.to_string(),
            subset: subset.map(str::to_string),
            h2,
        };
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clusters.get(&key)
            && c.policy == policy
        {
            return c.clone();
        }
        let connector = MeshConnector {
            node: node.clone(),
            pod: pod.clone(),
            timeout: policy.limits.connect_timeout,
        };
        let c = Arc::new(Cluster {
            client: upstream::client(connector, h2),
            breaker: Breaker::new(&policy.limits, h2),
            rr: AtomicUsize::new(0),
            policy,
        });
        clusters.insert(key, c.clone());
        c
    }
}
