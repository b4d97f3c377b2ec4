//! Errors of the identity layer; messages say what to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "invalid SPIFFE identity {0:?}: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    InvalidIdentity(String),
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    #[error("the CSR asks for {requested}, but the caller may only get {allowed}")]
    CsrIdentityMismatch { requested: String, allowed: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid CA material in {what}: {reason}")]
    BadCaMaterial { what: String, reason: String },
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("token rejected: {0}")]
    Token(String),
}
