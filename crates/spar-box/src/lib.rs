//! The cluster in a box: a whole mesh on one Linux machine. Nodes and pods are network
//! namespaces, Services get virtual IPs (nftables DNAT), workloads are supervised processes,
//! and `spar control` runs beside them.

pub mod admin;
pub mod commands;
pub mod error;
pub mod ingress;
pub mod live;
pub mod net;
pub mod observability;
pub mod plan;
pub mod proxies;
pub mod sandbox;
pub mod spec;
pub mod state;
pub mod supervise;
pub mod up;
pub mod waypoint;

pub use error::Error;
