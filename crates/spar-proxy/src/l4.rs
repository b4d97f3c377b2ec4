//! The L4 paths every role uses: `plan` decides (pure, table-tested), `outbound` and
//! `inbound` do the I/O, `pipe` moves bytes (no user-space copy between a socket and a
//! tunnel), `relay` accounts them.
//!
//! outbound: 15001 -> original dst -> plan_outbound -> HBONE tunnel | plain TCP -> relay
//! inbound:  15008 -> mTLS -> CONNECT -> plan_inbound (authority, principal, policy)
//!           -> the role's delivery (app over L4, or the L7 inbound path) -> relay
//!           15006 -> original dst -> plan_inbound (no identity) -> delivery -> relay

pub mod authz;
pub mod inbound;
pub mod outbound;
pub mod pipe;
pub mod plan;
pub mod relay;
