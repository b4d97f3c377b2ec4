//! `DeltaAggregatedResources`: one task per stream. It authenticates the proxy, answers each
//! type's first request, records ACKs and NACKs by nonce, and pushes the difference whenever a
//! new snapshot is published.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::Stream;
use prost::Message;
use serde::Serialize;
use spar_identity::{Subject, TokenIssuer};
use spar_xds::discovery::aggregated_discovery_service_server::AggregatedDiscoveryService;
use spar_xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use spar_xds::{
    ADDRESS_TYPE, AUTHORIZATION_TYPE, L7_TYPE, POLICY_TYPE, TELEMETRY_NAME, TELEMETRY_TYPE, to_any,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::caller;
use crate::config::ConfigState;
use crate::delta::{Resources, TypeState};
use crate::snapshot::Snapshot;
use crate::translate::{ProxyConfig, ProxyView, proxy_config};

/// What the admin API shows about one connected proxy.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    pub stream: u64,
    pub node_id: String,
    pub subject: String,
    pub view: ProxyView,
    pub types: BTreeMap<String, TypeStatus>,
    /// The config this proxy was last sent, by type and name.
    pub sent: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatus {
    pub last_sent_nonce: String,
    pub last_acked_nonce: String,
    pub resources: usize,
    /// The last NACK: nonce and the proxy's error message.
    pub nack: Option<(String, String)>,
}

pub type Proxies = Arc<Mutex<BTreeMap<u64, ProxyStatus>>>;

pub struct XdsService {
    pub tokens: Arc<TokenIssuer>,
    pub config: Arc<ConfigState>,
    pub proxies: Proxies,
    next_stream: AtomicU64,
}

impl XdsService {
    pub fn new(tokens: Arc<TokenIssuer>, config: Arc<ConfigState>, proxies: Proxies) -> Self {
        XdsService {
            tokens,
            config,
            proxies,
            next_stream: AtomicU64::new(1),
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsService {
    type DeltaAggregatedResourcesStream = ResponseStream;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let claims = caller(request.metadata(), &self.tokens)
            .inspect_err(|s| tracing::warn!(reason = s.message(), "xDS stream refused"))?;
        let view = match &claims.subject {
            Subject::Node { name } => ProxyView::Node(name.clone()),
            Subject::Pod {
                namespace, name, ..
            } => ProxyView::Workload {
                namespace: namespace.clone(),
                name: name.clone(),
            },
        };
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(16);
        let conn = Connection {
            id,
            view,
            subject: claims.subject.to_string(),
            config: self.config.clone(),
            proxies: self.proxies.clone(),
            types: BTreeMap::new(),
            nonce: 0,
            tx,
        };
        tokio::spawn(conn.run(request.into_inner()));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

struct Connection {
    id: u64,
    view: ProxyView,
    subject: String,
    config: Arc<ConfigState>,
    proxies: Proxies,
    types: BTreeMap<String, TypeState>,
    nonce: u64,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

impl Connection {
    async fn run(mut self, mut incoming: Streaming<DeltaDiscoveryRequest>) {
        let mut snapshots = self.config.subscribe();
        tracing::info!(stream = self.id, proxy = %self.subject, "proxy connected");
        loop {
            tokio::select! {
                msg = incoming.message() => match msg {
                    Ok(Some(req)) => {
                        if self.on_request(req).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(stream = self.id, error = %e, "xDS stream ended");
                        break;
                    }
                },
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snap = snapshots.borrow_and_update().clone();
                    if self.push_all(&snap).await.is_err() {
                        break;
                    }
                }
            }
        }
        tracing::info!(stream = self.id, proxy = %self.subject, "proxy disconnected");
        lock(&self.proxies).remove(&self.id);
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), ()> {
        let type_url = req.type_url.clone();
        if lock(&self.proxies).get(&self.id).is_none() {
            let node_id = req.node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
            let status = ProxyStatus {
                stream: self.id,
                node_id,
                subject: self.subject.clone(),
                view: self.view.clone(),
                types: BTreeMap::new(),
                sent: BTreeMap::new(),
            };
            lock(&self.proxies).insert(self.id, status);
        }
        if !req.response_nonce.is_empty() {
            self.on_ack(&req);
        }
        let snap = self.config.current();
        match self.types.get_mut(&type_url) {
            None => {
                self.types.insert(type_url.clone(), TypeState::first(&req));
                self.push(&type_url, &snap, true).await
            }
            Some(state) => {
                if state.subscribe(
                    &req.resource_names_subscribe,
                    &req.resource_names_unsubscribe,
                ) {
                    self.push(&type_url, &snap, false).await
                } else {
                    Ok(())
                }
            }
        }
    }

    fn on_ack(&mut self, req: &DeltaDiscoveryRequest) {
        let mut proxies = lock(&self.proxies);
        let Some(status) = proxies.get_mut(&self.id) else {
            return;
        };
        let t = status.types.entry(req.type_url.clone()).or_default();
        match &req.error_detail {
            Some(err) => {
                tracing::warn!(stream = self.id, proxy = %self.subject, type_url = %req.type_url,
                    nonce = %req.response_nonce, error = %err.message, "proxy rejected config (NACK)");
                t.nack = Some((req.response_nonce.clone(), err.message.clone()));
            }
            None => {
                t.last_acked_nonce = req.response_nonce.clone();
                if t.nack
                    .as_ref()
                    .is_some_and(|(n, _)| n != &req.response_nonce)
                {
                    // A later version was accepted: the earlier rejection is history.
                    t.nack = None;
                }
            }
        }
    }

    async fn push_all(&mut self, snap: &Snapshot) -> Result<(), ()> {
        let mut types: Vec<String> = self.types.keys().cloned().collect();
        types.sort_by_key(|t| push_order(t));
        for t in types {
            self.push(&t, snap, false).await?;
        }
        Ok(())
    }

    async fn push(&mut self, type_url: &str, snap: &Snapshot, always: bool) -> Result<(), ()> {
        let cfg = proxy_config(&snap.registry, &snap.translated, &self.view);
        let current = resources(&cfg, type_url);
        let Some(state) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        let delta = state.diff(&current);
        if !always && delta.resources.is_empty() && delta.removed.is_empty() {
            return Ok(());
        }
        self.nonce += 1;
        let nonce = format!("{}-{}", snap.generation, self.nonce);
        {
            let mut proxies = lock(&self.proxies);
            if let Some(status) = proxies.get_mut(&self.id) {
                let t = status.types.entry(type_url.to_string()).or_default();
                t.last_sent_nonce = nonce.clone();
                t.resources = state.sent.len();
                status
                    .sent
                    .insert(type_url.to_string(), dump(&cfg, type_url, state));
            }
        }
        let resp = DeltaDiscoveryResponse {
            system_version_info: snap.generation.to_string(),
            resources: delta.resources,
            type_url: type_url.to_string(),
            nonce,
            removed_resources: delta.removed,
        };
        self.tx.send(Ok(resp)).await.map_err(|_| ())
    }
}

/// Policies go out before the addresses they protect: a proxy applies each response as it
/// comes, so a pod that appears in this push is never served before its policies arrive.
fn push_order(type_url: &str) -> u8 {
    match type_url {
        AUTHORIZATION_TYPE | POLICY_TYPE => 0,
        L7_TYPE | TELEMETRY_TYPE => 1,
        ADDRESS_TYPE => 2,
        _ => 3,
    }
}

/// The resources of one type for a proxy, with content-derived versions.
fn resources(cfg: &ProxyConfig, type_url: &str) -> Resources {
    fn entry<M: Message>(type_url: &str, m: &M) -> (String, prost_types::Any) {
        let any = to_any(type_url, m);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        any.value.hash(&mut h);
        (format!("{:016x}", h.finish()), any)
    }
    match type_url {
        ADDRESS_TYPE => cfg
            .addresses
            .iter()
            .map(|(n, a)| (n.clone(), entry(type_url, a)))
            .collect(),
        AUTHORIZATION_TYPE => cfg
            .authorizations
            .iter()
            .map(|(n, a)| (n.clone(), entry(type_url, a)))
            .collect(),
        L7_TYPE => cfg
            .l7
            .iter()
            .map(|(n, a)| (n.clone(), entry(type_url, a)))
            .collect(),
        TELEMETRY_TYPE => cfg
            .telemetry
            .iter()
            .map(|t| (TELEMETRY_NAME.to_string(), entry(type_url, t)))
            .collect(),
        POLICY_TYPE => cfg
            .policies
            .iter()
            .map(|(n, p)| (n.clone(), entry(type_url, p)))
            .collect(),
        // Unknown types get an empty answer, so clients asking for them still become ready.
        _ => Resources::new(),
    }
}

fn dump(
    cfg: &ProxyConfig,
    type_url: &str,
    state: &TypeState,
) -> BTreeMap<String, serde_json::Value> {
    let json = |v: &dyn erased::Ser| v.to_json();
    state
        .sent
        .keys()
        .filter_map(|n| {
            let v = match type_url {
                ADDRESS_TYPE => cfg.addresses.get(n).map(|a| json(a)),
                AUTHORIZATION_TYPE => cfg.authorizations.get(n).map(|a| json(a)),
                L7_TYPE => cfg.l7.get(n).map(|a| json(a)),
                TELEMETRY_TYPE => cfg.telemetry.as_ref().map(|t| json(t)),
                POLICY_TYPE => cfg.policies.get(n).map(|p| json(p)),
                _ => None,
            }?;
            Some((n.clone(), v))
        })
        .collect()
}

mod erased {
    pub trait Ser {
        fn to_json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
        }
    }
}

/// Lock the proxy table (a poisoned lock still holds consistent entries).
pub fn lock_proxies(p: &Proxies) -> std::sync::MutexGuard<'_, BTreeMap<u64, ProxyStatus>> {
    lock(p)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
