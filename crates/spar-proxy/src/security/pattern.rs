//! Istio's value syntax (exact, `prefix*`, `*suffix`, `*`, path templates, CIDRs, path
//! normalization) lives in `spar_model::istio::pattern`, so `spar validate` refuses exactly
//! what this engine could not read.

pub use spar_model::istio::pattern::*;
