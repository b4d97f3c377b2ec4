//! Spar's control plane (istiod's role): sources -> registry -> translation -> delta xDS push,
//! plus the CA service and the admin API.

pub mod admin;
pub mod auth;
pub mod ca_server;
pub mod config;
pub mod delta;
pub mod dir_files;
pub mod encoded;
pub mod error;
pub mod incremental;
pub mod jwks;
pub mod pmap;
pub mod registry;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod translate;
pub mod view;
pub mod xds_server;

#[cfg(test)]
mod sync_tests;

pub use error::Error;
pub use server::{Options, Running, start};
