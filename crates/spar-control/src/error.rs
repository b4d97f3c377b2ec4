//! Errors of the control plane; messages say what to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Identity(#[from] spar_identity::Error),
    #[error(
        "cannot listen on {addr}: {source} (is another control plane running? pick another address)"
    )]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot use state directory {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the initial configuration in {dir} is invalid:\n{problems}")]
    InvalidConfig { dir: PathBuf, problems: String },
    #[error("TLS setup failed: {0}")]
    Tls(String),
}
