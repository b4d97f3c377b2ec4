//! One immutable snapshot of the mesh (registry plus its translation), published with one
//! swap through a watch channel; every stream reads the latest on change.

use std::sync::Arc;

use crate::registry::Registry;
use crate::translate::{Translated, translate};

#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every publication.
    pub generation: u64,
    pub registry: Registry,
    pub translated: Translated,
}

impl Snapshot {
    pub fn build(generation: u64, registry: Registry) -> Arc<Snapshot> {
        let translated = translate(&registry);
        Arc::new(Snapshot {
            generation,
            registry,
            translated,
        })
    }
}
