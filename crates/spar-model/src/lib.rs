//! Spar's configuration model: typed Istio, Gateway API and Kubernetes resources, loaded from
//! YAML with every problem located as `file:line: kind/name: field: what is wrong`.
//!
//! Pure data and pure functions: no I/O beyond reading the files it is asked to load.

pub mod analyze;
pub mod duration;
pub mod gateway_api;
pub mod istio;
pub mod k8s;
pub mod load;
pub mod meta;
pub mod name;
pub mod problem;
pub mod resource;
pub mod validate;
pub mod yaml;

pub use load::{Limits, Loaded, Origin, load_paths, load_str};
pub use meta::{Annotations, Labels, ObjectMeta, labels_match};
pub use name::Name;
pub use problem::{Problem, Severity};
pub use resource::{Kind, Resource, ResourceKey, Spec};
