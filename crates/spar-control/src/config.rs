//! Config sources -> registry -> published snapshot. Two sources: the watched config directory
//! (last good version kept when a change is invalid) and resources applied through the admin
//! API (persisted). Each source names the keys it changed; changes are debounced and published
//! as one new snapshot made from those keys alone (applied resources win over files).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spar_model::{Kind, Problem, Resource, ResourceKey};
use tokio::sync::{Notify, watch};

use crate::dir_files::{DirFiles, Refresh};
use crate::registry::MeshSettings;
use crate::snapshot::Snapshot;
use crate::store::Store;

/// How long to wait for more changes before publishing (keeps bursts to one push).
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the config directory is checked for changes.
pub const POLL: Duration = Duration::from_millis(200);

pub struct ConfigState {
    mesh: MeshSettings,
    dir: Option<PathBuf>,
    dir_files: Mutex<DirFiles>,
    dir_problems: Mutex<Vec<Problem>>,
    /// Keys changed by either source since the last publication.
    pending: Mutex<BTreeSet<ResourceKey>>,
    pub store: Store,
    notify: Arc<Notify>,
    pub jwks: Arc<crate::jwks::JwksCache>,
    generation: AtomicU64,
    tx: watch::Sender<Arc<Snapshot>>,
}

impl ConfigState {
    pub fn new(
        mesh: MeshSettings,
        dir: Option<PathBuf>,
        dir_files: DirFiles,
        store: Store,
    ) -> Arc<Self> {
        let notify = Arc::new(Notify::new());
        let state = ConfigState {
            mesh,
            dir,
            dir_files: Mutex::new(dir_files),
            dir_problems: Mutex::new(Vec::new()),
            pending: Mutex::new(BTreeSet::new()),
            store,
            jwks: crate::jwks::JwksCache::new(notify.clone()),
            notify,
            generation: AtomicU64::new(0),
            tx: watch::channel(Arc::new(Snapshot::default())).0,
        };
        state.publish();
        Arc::new(state)
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Problems of the latest rejected config directory change (empty when it is good).
    pub fn dir_problems(&self) -> Vec<Problem> {
        lock(&self.dir_problems).clone()
    }

    /// Ask for a new snapshot (debounced).
    pub fn changed(&self) {
        self.notify.notify_one();
    }

    /// Publish the keys changed since the last publication as the next snapshot (the first
    /// publication takes everything).
    fn publish(&self) {
        let keys = std::mem::take(&mut *lock(&self.pending));
        let prev = self.current();
        let delta: Vec<(ResourceKey, Option<Arc<Resource>>)> = if prev.generation == 0 {
            let dir = lock(&self.dir_files);
            let mut all: std::collections::BTreeMap<ResourceKey, Arc<Resource>> =
                dir.all().map(|r| (r.key(), r.clone())).collect();
            drop(dir);
            all.extend(self.store.all().into_iter().map(|r| (r.key(), r)));
            all.into_iter()
                .filter(|(_, r)| r.kind != Kind::Secret)
                .map(|(k, r)| (k, Some(r)))
                .collect()
        } else {
            keys.into_iter()
                .map(|k| {
                    let r = self.resolve(&k);
                    (k, r)
                })
                .collect()
        };
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let jwks = &self.jwks;
        let snap = Snapshot::apply(&prev, generation, &self.mesh, delta, |reg| {
            jwks.track(&crate::translate::security::jwks_uris(reg));
            jwks.snapshot()
        });
        self.tx.send_replace(snap);
        tracing::debug!(generation, "published snapshot");
    }

    /// What the mesh holds under `k` now: the applied resource, else the directory's. A Secret
    /// in the config directory is the gateways' business, not the mesh's.
    fn resolve(&self, k: &ResourceKey) -> Option<Arc<Resource>> {
        self.store
            .get(k)
            .or_else(|| lock(&self.dir_files).get(k).cloned())
            .filter(|r| r.kind != Kind::Secret)
    }

    /// Record changed keys and ask for a publication.
    fn changed_keys(&self, keys: impl IntoIterator<Item = ResourceKey>) {
        lock(&self.pending).extend(keys);
        self.changed();
    }

    /// Publish after each burst of changes.
    pub async fn run_publisher(self: Arc<Self>) {
        loop {
            self.notify.notified().await;
            tokio::time::sleep(DEBOUNCE).await;
            self.publish();
        }
    }

    /// Poll the config directory; publish valid changes, keep the last good set otherwise.
    pub async fn run_dir_watch(self: Arc<Self>) {
        if self.dir.is_none() {
            return;
        }
        loop {
            tokio::time::sleep(POLL).await;
            let me = self.clone();
            // Stat and parse what changed off the runtime's threads, and without the lock that
            // publications and the admin API read the directory's resources under.
            let outcome = tokio::task::spawn_blocking(move || {
                let scan = lock(&me.dir_files).scan();
                match scan {
                    Err(problems) => Refresh::Rejected(problems),
                    Ok(None) => Refresh::Unchanged,
                    Ok(Some(scan)) => {
                        let parsed = DirFiles::parse(scan);
                        lock(&me.dir_files).commit(parsed)
                    }
                }
            })
            .await;
            match outcome {
                Ok(Refresh::Unchanged) => {}
                Ok(Refresh::Rejected(problems)) => {
                    for p in &problems {
                        tracing::error!(
                            "rejected config change, keeping the last good config: {p}"
                        );
                    }
                    *lock(&self.dir_problems) = problems;
                }
                Ok(Refresh::Changed(keys)) => {
                    lock(&self.dir_problems).clear();
                    let total = lock(&self.dir_files).len();
                    tracing::info!(
                        changed = keys.len(),
                        resources = total,
                        "config directory changed"
                    );
                    self.changed_keys(keys);
                }
                Err(e) => tracing::error!(error = %e, "config directory poll failed"),
            }
        }
    }

    /// Validate and store YAML from `spar apply`. All or nothing: any error rejects it all.
    /// Apply YAML; `namespace` is where resources without one go (`kubectl apply -n`).
    pub fn apply(
        &self,
        source: &str,
        text: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<(String, Vec<Problem>)>, Vec<Problem>> {
        let loaded = spar_model::load_str(source, text);
        if loaded.has_errors() {
            return Err(loaded.problems);
        }
        if let Some((r, _)) = loaded
            .resources
            .iter()
            .find(|(r, _)| r.kind == Kind::Secret)
        {
            return Err(vec![internal(
                source,
                &format!(
                    "{}: the control plane never stores a Secret (its keys belong to the gateway that serves them); give it to `spar up` with the mesh's files",
                    r.key()
                ),
            )]);
        }
        let mut done = Vec::new();
        for (mut r, _) in loaded.resources {
            if let Some(ns) = namespace
                && r.kind.namespaced()
                && r.meta.namespace.as_deref().is_none_or(str::is_empty)
            {
                r.meta.namespace = Some(ns.into());
            }
            let key = r.key();
            let warnings: Vec<Problem> = loaded
                .problems
                .iter()
                .filter(|p| p.resource == format!("{}/{}", r.kind, r.name()))
                .cloned()
                .collect();
            if let Err(e) = self.store.put(r) {
                return Err(vec![internal(source, &e.to_string())]);
            }
            self.changed_keys([key.clone()]);
            done.push((key.to_string(), warnings));
        }
        Ok(done)
    }

    /// Delete what `text` names (kind, namespace, name); only applied resources can be deleted.
    pub fn delete(
        &self,
        source: &str,
        text: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<String>, Vec<Problem>> {
        let docs = spar_model::yaml::parse_documents(text).map_err(|e| {
            vec![Problem {
                line: e.line,
                ..internal(source, &e.message)
            }]
        })?;
        let mut keys = Vec::new();
        for d in &docs {
            let s = |p: &str| {
                d.value
                    .pointer(p)
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string()
            };
            let kind = Kind::lookup(&s("/apiVersion"), &s("/kind")).map_err(|m| {
                vec![Problem {
                    line: d.line,
                    ..internal(source, &m)
                }]
            })?;
            let ns = if kind.namespaced() {
                Some(s("/metadata/namespace"))
                    .filter(|n| !n.is_empty())
                    .unwrap_or(namespace.unwrap_or("default").into())
            } else {
                String::new()
            };
            keys.push(ResourceKey {
                kind,
                namespace: ns.into(),
                name: s("/metadata/name").into(),
            });
        }
        let in_dir = |k: &ResourceKey| lock(&self.dir_files).get(k).is_some();
        let mut done = Vec::new();
        for k in keys {
            match self.store.delete(&k) {
                Ok(true) => {
                    done.push(k.to_string());
                    self.changed_keys([k]);
                }
                Ok(false) if in_dir(&k) => {
                    return Err(vec![internal(
                        source,
                        &format!(
                            "{k} comes from the config directory; remove it from the files there"
                        ),
                    )]);
                }
                Ok(false) => return Err(vec![internal(source, &format!("{k} not found"))]),
                Err(e) => return Err(vec![internal(source, &e.to_string())]),
            }
        }
        Ok(done)
    }
}

fn internal(source: &str, message: &str) -> Problem {
    Problem {
        file: source.to_string(),
        line: 1,
        resource: String::new(),
        field: String::new(),
        message: message.to_string(),
        severity: spar_model::Severity::Error,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
