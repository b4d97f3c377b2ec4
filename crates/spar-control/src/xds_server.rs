//! `DeltaAggregatedResources`: one task per stream. It authenticates the proxy, answers each
//! type's first request, records ACKs and NACKs by nonce, and pushes the difference whenever a
//! new snapshot is published.

use std::collections::BTreeMap;
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
    ADDRESS_TYPE, AUTHORIZATION_TYPE, L7_TYPE, MORE_FOLLOWS, POLICY_TYPE, TELEMETRY_TYPE,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Duration, Instant};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::caller;
use crate::config::ConfigState;
use crate::delta::{TypeState, TypeStream};
use crate::snapshot::Snapshot;
use crate::translate::ProxyView;

/// What the admin API shows about one connected proxy.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    pub stream: u64,
    pub node_id: String,
    pub subject: String,
    pub view: ProxyView,
    pub types: BTreeMap<String, TypeStatus>,
    /// What this proxy holds, by type: the snapshot its view was last sent from (and the
    /// names, for explicit subscriptions). Dumps are rendered from these on request, so no
    /// stream keeps a copy of what it sent.
    #[serde(skip)]
    pub holds: BTreeMap<String, Held>,
}

/// What a proxy holds of one type.
#[derive(Debug, Clone)]
pub struct Held {
    pub at: Arc<Snapshot>,
    /// Explicitly subscribed names it holds (None: the whole view).
    pub names: Option<Vec<String>>,
}

impl ProxyStatus {
    /// What the proxy was sent, by type and name, as JSON.
    pub fn sent(&self) -> BTreeMap<String, BTreeMap<String, serde_json::Value>> {
        self.holds
            .iter()
            .map(|(t, h)| {
                let mut all = crate::view::list(&h.at, &self.view, t);
                if let Some(names) = &h.names {
                    all.retain(|n, _| names.iter().any(|x| **x == **n));
                }
                let rendered = all
                    .into_iter()
                    .map(|(n, item)| (n.to_string(), render(t, &item.any)))
                    .collect();
                (t.clone(), rendered)
            })
            .collect()
    }
}

fn render(type_url: &str, any: &prost_types::Any) -> serde_json::Value {
    fn json<M: Message + Default + Serialize>(b: &[u8]) -> serde_json::Value {
        M::decode(b)
            .ok()
            .and_then(|m| serde_json::to_value(m).ok())
            .unwrap_or(serde_json::Value::Null)
    }
    let b = any.value.as_slice();
    match type_url {
        ADDRESS_TYPE => json::<spar_xds::workload::Address>(b),
        AUTHORIZATION_TYPE => json::<spar_xds::security::Authorization>(b),
        L7_TYPE => json::<spar_xds::l7::ServiceRoutes>(b),
        TELEMETRY_TYPE => json::<spar_xds::l7::Telemetry>(b),
        POLICY_TYPE => json::<spar_xds::l7::Policy>(b),
        _ => serde_json::Value::Null,
    }
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

/// How many proxies are sent their initial state at once. A first response holds every
/// address of the mesh (about 30 MB encoded at 100,000 pods), and it stays in the stream's
/// send buffer until the proxy has read it: a thousand proxies connecting together (a
/// control-plane restart) would hold a thousand copies. A stream takes a permit before its
/// first responses and returns it when the proxy has ACKed (or NACKed) them all, or after
/// `INITIAL_HOLD` (a proxy that never answers cannot starve the others).
pub const INITIAL_SYNCS: usize = 8;
const INITIAL_HOLD: Duration = Duration::from_secs(10);

/// Resources per response. tonic encodes a response into its stream's send buffer and keeps
/// that buffer at its largest size for the life of the stream: one 30 MB initial state would
/// pin 30 MB per connected proxy. Larger deltas go out as several responses, all but the last
/// marked `MORE_FOLLOWS` (Spar's proxies build their state only at the last one).
pub const CHUNK: usize = 500;
/// At most this many responses per delta: their ACKs must fit the request stream's window
/// while the server is still sending, so in very large meshes chunks grow past `CHUNK`.
pub const MAX_CHUNKS: usize = 256;

/// A stream's initial-sync permit and the responses it covers.
struct Syncing {
    _permit: Option<OwnedSemaphorePermit>,
    nonces: std::collections::BTreeSet<String>,
    until: Instant,
}

pub struct XdsService {
    pub tokens: Arc<TokenIssuer>,
    pub config: Arc<ConfigState>,
    pub proxies: Proxies,
    next_stream: AtomicU64,
    initial: Arc<Semaphore>,
}

impl XdsService {
    pub fn new(tokens: Arc<TokenIssuer>, config: Arc<ConfigState>, proxies: Proxies) -> Self {
        XdsService {
            tokens,
            config,
            proxies,
            next_stream: AtomicU64::new(1),
            initial: Arc::new(Semaphore::new(INITIAL_SYNCS)),
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
            initial: self.initial.clone(),
            syncing: None,
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
    types: BTreeMap<String, TypeStream>,
    nonce: u64,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    initial: Arc<Semaphore>,
    syncing: Option<Syncing>,
}

impl Connection {
    async fn run(mut self, mut incoming: Streaming<DeltaDiscoveryRequest>) {
        let mut snapshots = self.config.subscribe();
        tracing::info!(stream = self.id, proxy = %self.subject, "proxy connected");
        loop {
            let hold = self.syncing.as_ref().map(|s| s.until);
            tokio::select! {
                _ = until(hold) => {
                    tracing::debug!(stream = self.id, "initial state not acknowledged in time; permit returned");
                    self.syncing = None;
                }
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
                holds: BTreeMap::new(),
            };
            lock(&self.proxies).insert(self.id, status);
        }
        if !req.response_nonce.is_empty() {
            self.on_ack(&req);
        }
        let snap = self.config.current();
        match self.types.get_mut(&type_url) {
            None => {
                self.types
                    .insert(type_url.clone(), TypeStream::new(TypeState::first(&req)));
                self.push(&type_url, &snap, true).await
            }
            Some(st) => {
                let resubscribes = !req.resource_names_subscribe.is_empty()
                    || !req.resource_names_unsubscribe.is_empty();
                // An ACK changes nothing; only a subscription change leaves whole-view mode.
                if resubscribes && let Some(at) = st.synced.take() {
                    // Leaving the whole-view mode: remember what the client holds by name.
                    st.state.sent = crate::view::list(&at, &self.view, &type_url)
                        .into_iter()
                        .map(|(n, i)| (n.to_string(), i.version.clone()))
                        .collect();
                }
                if st.state.subscribe(
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
        if let Some(s) = &mut self.syncing {
            s.nonces.remove(&req.response_nonce);
            if s.nonces.is_empty() {
                self.syncing = None;
            }
        }
        if let Some(st) = self.types.get_mut(&req.type_url) {
            match &req.error_detail {
                Some(_) => st.nacked(&req.response_nonce),
                None => st.acked(&req.response_nonce),
            }
        }
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

    async fn push_all(&mut self, snap: &Arc<Snapshot>) -> Result<(), ()> {
        let mut types: Vec<String> = self.types.keys().cloned().collect();
        types.sort_by_key(|t| push_order(t));
        for t in types {
            self.push(&t, snap, false).await?;
        }
        Ok(())
    }

    async fn push(&mut self, type_url: &str, snap: &Arc<Snapshot>, always: bool) -> Result<(), ()> {
        if !self.types.contains_key(type_url) {
            return Ok(());
        }
        if always && self.syncing.is_none() {
            // Wait for a turn before materializing a whole view (see INITIAL_SYNCS).
            let permit = self.initial.clone().acquire_owned().await.ok();
            self.syncing = Some(Syncing {
                _permit: permit,
                nonces: Default::default(),
                until: Instant::now() + INITIAL_HOLD,
            });
        }
        let Some(st) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        let before = st.held();
        let delta = st.delta(&self.view, type_url, snap);
        if !always && delta.resources.is_empty() && delta.removed.is_empty() {
            return Ok(());
        }
        // Parts carry the updated resources first, then the removed names.
        let items = delta.resources.len() + delta.removed.len();
        let size = CHUNK.max(items.div_ceil(MAX_CHUNKS));
        let parts = items.div_ceil(size).max(1);
        let mut resources = delta.resources.into_iter();
        let mut removed = delta.removed.into_iter();
        for part in 1..=parts {
            let last = part == parts;
            self.nonce += 1;
            let nonce = format!("{}-{}", snap.generation, self.nonce);
            // A NACK of any part restores what the client held before the whole delta.
            st.sent(nonce.clone(), before.clone());
            if always && let Some(s) = &mut self.syncing {
                s.nonces.insert(nonce.clone());
            }
            if last {
                let mut proxies = lock(&self.proxies);
                if let Some(status) = proxies.get_mut(&self.id) {
                    let t = status.types.entry(type_url.to_string()).or_default();
                    t.last_sent_nonce = nonce.clone();
                    t.resources = st.count;
                    let names = st
                        .synced
                        .is_none()
                        .then(|| st.state.sent.keys().cloned().collect());
                    status.holds.insert(
                        type_url.to_string(),
                        Held {
                            at: snap.clone(),
                            names,
                        },
                    );
                }
            }
            let updated: Vec<_> = resources.by_ref().take(size).collect();
            let gone = removed.by_ref().take(size - updated.len()).collect();
            let resp = DeltaDiscoveryResponse {
                system_version_info: if last {
                    snap.generation.to_string()
                } else {
                    format!("{}{MORE_FOLLOWS}", snap.generation)
                },
                resources: updated,
                type_url: type_url.to_string(),
                nonce,
                removed_resources: gone,
            };
            self.tx.send(Ok(resp)).await.map_err(|_| ())?;
        }
        if always && let Some(s) = &mut self.syncing {
            // The proxy's time to answer counts from when the last part went out.
            s.until = Instant::now() + INITIAL_HOLD;
        }
        Ok(())
    }
}

/// Resolves at `t`; never without one.
async fn until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
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

/// Lock the proxy table (a poisoned lock still holds consistent entries).
pub fn lock_proxies(p: &Proxies) -> std::sync::MutexGuard<'_, BTreeMap<u64, ProxyStatus>> {
    lock(p)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
