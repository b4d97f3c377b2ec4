//! Spar's data plane: one engine in several roles. `ARCHITECTURE.md` at the repository root
//! maps the path of a connection through each role. From the bottom up:
//!
//! - `snapshot`: the proxy's immutable view of the mesh (from `xds_client`), swapped
//!   atomically; `certs`, `tls`, `control`: identities and mTLS;
//! - `net`: the socket seam (network namespaces with nftables capture, or loopback for
//!   in-process tests); `proxy`: what every role shares, and pod enrolment;
//! - `l4`: connection paths (pure planners, outbound, inbound, relay); `hbone`, `h2stream`:
//!   the mesh transport; `dns`;
//! - `security`: the policy engine (AuthorizationPolicy, JWT, ext_authz) sidecars and
//!   waypoints call;
//! - `l7`: the HTTP engine (plan, then do);
//! - `role`: node and sidecar, each wiring listeners to paths;
//! - `admin`, `metrics`: what operators see.

pub mod accept;
pub mod admin;
pub mod certs;
pub mod control;
pub mod dns;
pub mod error;
pub mod h2stream;
pub mod hbone;
pub mod l4;
pub mod l7;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod role;
pub mod security;
pub mod snapshot;
pub mod tls;
pub mod xds_client;

pub use error::Error;
