//! Resources applied through the admin API, persisted in the state directory (one JSON file
//! per resource) so that they survive a control-plane restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use spar_model::{Resource, ResourceKey};

use crate::Error;

#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    items: Mutex<BTreeMap<ResourceKey, Arc<Resource>>>,
}

impl Store {
    /// Open (and read back) the store in `dir`. Files that no longer load are reported and skipped.
    pub fn open(dir: &Path) -> Result<Store, Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::State {
            path: dir.into(),
            source,
        })?;
        let loaded = spar_model::load_paths(&[dir]);
        for p in loaded.errors() {
            tracing::warn!(problem = %p, "skipping stored resource that no longer loads");
        }
        let items = loaded
            .resources
            .into_iter()
            .map(|(r, _)| (r.key(), Arc::new(r)))
            .collect();
        Ok(Store {
            dir: dir.into(),
            items: Mutex::new(items),
        })
    }

    fn path(&self, key: &ResourceKey) -> PathBuf {
        let ns = if key.namespace.is_empty() {
            "_"
        } else {
            &key.namespace
        };
        self.dir
            .join(format!("{}.{}.{}.json", key.kind.name(), ns, key.name))
    }

    pub fn put(&self, r: Resource) -> Result<(), Error> {
        let key = r.key();
        let path = self.path(&key);
        let text = serde_json::to_string_pretty(&r.to_value()).unwrap_or_default();
        // Write then rename, so a crash never leaves half a file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|source| Error::State {
                path: path.clone(),
                source,
            })?;
        self.lock().insert(key, Arc::new(r));
        Ok(())
    }

    pub fn delete(&self, key: &ResourceKey) -> Result<bool, Error> {
        if self.lock().remove(key).is_none() {
            return Ok(false);
        }
        let path = self.path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(source) => Err(Error::State { path, source }),
        }
    }

    pub fn all(&self) -> Vec<Arc<Resource>> {
        self.lock().values().cloned().collect()
    }

    pub fn get(&self, key: &ResourceKey) -> Option<Arc<Resource>> {
        self.lock().get(key).cloned()
    }

    pub fn contains(&self, key: &ResourceKey) -> bool {
        self.lock().contains_key(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ResourceKey, Arc<Resource>>> {
        // A panic while holding this lock cannot leave the map half-updated; keep serving.
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }
}
