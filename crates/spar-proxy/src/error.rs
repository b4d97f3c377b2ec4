//! Errors of the data plane; each says which side failed.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the control plane at {addr}: {reason}")]
    ControlPlane { addr: String, reason: String },
    #[error("no certificate for {0} yet")]
    NoCertificate(String),
    #[error("certificate request for {identity} failed: {reason}")]
    CertificateRequest { identity: String, reason: String },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("cannot enter network namespace {path}: {reason}")]
    Netns { path: String, reason: String },
    #[error("upstream {addr}: {reason}")]
    Upstream { addr: String, reason: String },
    #[error("HBONE to {addr} answered {status}")]
    HboneStatus { addr: String, status: u16 },
    #[error("denied: {0}")]
    Denied(String),
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
