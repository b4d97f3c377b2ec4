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
    /// `jwks`: what the control plane fetched for each `jwksUri`.
    pub fn build(
        generation: u64,
        registry: Registry,
        jwks: std::collections::BTreeMap<String, String>,
    ) -> Arc<Snapshot> {
        let mut translated = translate(&registry);
        translated.jwks = jwks;
        Arc::new(Snapshot {
            generation,
            registry,
            translated,
        })
    }
}
