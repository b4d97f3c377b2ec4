//! Spar's data plane. The node role (ambient) lives in `node`; the pieces it is built from are
//! one concern per module: xDS state, certificates, mTLS, in-pod sockets and redirection,
//! HBONE, L4 authorization and telemetry.

pub mod accept;
pub mod admin;
pub mod authz;
pub mod certs;
pub mod control;
pub mod dns;
pub mod error;
pub mod h2stream;
pub mod hbone;
pub mod inpod;
pub mod l7;
pub mod metrics;
pub mod node;
pub mod sidecar;
pub mod state;
pub mod tls;
pub mod xds_client;

pub use error::Error;
