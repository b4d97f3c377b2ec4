//! Errors of the cluster in a box; messages say what to fix.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the cluster in a box needs root (network namespaces, veth links, nftables): run it with sudo"
    )]
    NotRoot,
    #[error(
        "`{tool}` is missing: install the Debian package `{package}` (apt-get install {package})"
    )]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("invalid topology:\n{0}")]
    Invalid(String),
    #[error("invalid box file {file}: {message}")]
    BoxFile { file: String, message: String },
    #[error("a mesh is already running (spar up pid {0}); stop it with `spar down` first")]
    AlreadyRunning(i32),
    #[error("no mesh is running (no state in {0}); start one with `spar up`")]
    NotRunning(String),
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("pod {0} not found; `spar status` lists the pods")]
    NoPod(String),
}
