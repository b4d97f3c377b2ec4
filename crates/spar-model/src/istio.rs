//! Istio's resources (`networking.istio.io`, `security.istio.io`, `telemetry.istio.io`) and
//! its mesh config.

pub mod mesh;
pub mod networking;
pub mod pattern;
pub mod security;
pub mod telemetry;
