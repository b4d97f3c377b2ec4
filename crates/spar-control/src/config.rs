//! Config sources -> registry -> published snapshot. Two sources: the watched config directory
//! (last good version kept when a change is invalid) and resources applied through the admin
//! API (persisted). Changes are debounced and published as one new snapshot.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spar_model::{Kind, Problem, Resource, ResourceKey};
use tokio::sync::{Notify, watch};

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
    dir_resources: Mutex<Vec<Arc<Resource>>>,
    dir_problems: Mutex<Vec<Problem>>,
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
        dir_resources: Vec<Resource>,
        store: Store,
    ) -> Arc<Self> {
        let notify = Arc::new(Notify::new());
        let state = ConfigState {
            mesh,
            dir,
            dir_resources: Mutex::new(dir_resources.into_iter().map(Arc::new).collect()),
            dir_problems: Mutex::new(Vec::new()),
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

    /// Publish the sources as the next snapshot: the registry changes by the resources that
    /// differ from the last one's, and the snapshot records what changed for the streams.
    fn publish(&self) {
        let mut merged: std::collections::BTreeMap<ResourceKey, Arc<Resource>> =
            lock(&self.dir_resources)
                .iter()
                // A Secret in the config directory is the gateways' business, not the mesh's.
                .filter(|r| r.kind != Kind::Secret)
                .map(|r| (r.key(), r.clone()))
                .collect();
        // Applied resources win over files: `spar apply` is the later, explicit intent.
        for r in self.store.all() {
            merged.insert(r.key(), Arc::new(r));
        }
        let prev = self.current();
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let jwks = &self.jwks;
        let snap = Snapshot::advance(&prev, generation, &self.mesh, &merged, |reg| {
            jwks.track(&crate::translate::security::jwks_uris(reg));
            jwks.snapshot()
        });
        drop(merged);
        self.tx.send_replace(snap);
        tracing::debug!(generation, "published snapshot");
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
        let Some(dir) = self.dir.clone() else { return };
        let mut last = fingerprint(&dir);
        loop {
            tokio::time::sleep(POLL).await;
            let now = fingerprint(&dir);
            if now == last {
                continue;
            }
            last = now;
            let loaded = spar_model::load_paths(&[&dir]);
            for p in loaded
                .problems
                .iter()
                .filter(|p| p.severity == spar_model::Severity::Warning)
            {
                tracing::warn!("{p}");
            }
            if loaded.has_errors() {
                for p in loaded.errors() {
                    tracing::error!("rejected config change, keeping the last good config: {p}");
                }
                *lock(&self.dir_problems) = loaded.errors().cloned().collect();
                continue;
            }
            lock(&self.dir_problems).clear();
            tracing::info!(resources = loaded.resources.len(), dir = %dir.display(), "config directory changed");
            *lock(&self.dir_resources) = loaded
                .resources
                .into_iter()
                .map(|(r, _)| Arc::new(r))
                .collect();
            self.changed();
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
                r.meta.namespace = Some(ns.to_string());
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
            done.push((key.to_string(), warnings));
        }
        self.changed();
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
                namespace: ns,
                name: s("/metadata/name"),
            });
        }
        let in_dir = |k: &ResourceKey| lock(&self.dir_resources).iter().any(|r| &r.key() == k);
        let mut done = Vec::new();
        for k in keys {
            match self.store.delete(&k) {
                Ok(true) => done.push(k.to_string()),
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
        self.changed();
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

/// Names, sizes, modification times and contents of the config files, hashed.
fn fingerprint(dir: &std::path::Path) -> u64 {
    let mut h = DefaultHasher::new();
    for f in spar_model::load::collect_files(dir).unwrap_or_default() {
        f.hash(&mut h);
        std::fs::read(&f).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
