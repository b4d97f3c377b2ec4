//! `spar echo`, the test workload: an HTTP/1.1 + h2c server that reports what it saw (and
//! echoes WebSocket frames), a gRPC echo, a TCP echo, a server-first protocol, and clients.

pub use http::Method;

pub mod client;
pub mod ext_authz;
pub mod grpc;
pub mod otlp;
pub mod server;
pub mod tcp;
pub mod ws;

/// Errors of the echo workload; messages say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on port {port}: {source}")]
    Listen { port: u16, source: std::io::Error },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid URL {0:?}: use http://HOST:PORT/PATH")]
    Url(String),
    #[error("invalid header {0:?}: use 'Name: value'")]
    Header(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// What a pod is, from the environment the box (or Kubernetes' downward API) sets.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PodInfo {
    pub hostname: String,
    pub pod: String,
    pub namespace: String,
    pub version: String,
    /// Print one line per HTTP request to stdout (`--log-requests`).
    #[serde(skip)]
    pub log_requests: bool,
    /// Request headers that line also shows (`--log-header`, lower case).
    #[serde(skip)]
    pub log_headers: Vec<String>,
    /// Serve the echo's own Prometheus metrics on `/metrics` (`--metrics`).
    #[serde(skip)]
    pub metrics: bool,
    /// Requests answered so far (shared by clones: one count per process).
    #[serde(skip)]
    pub requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl PodInfo {
    /// Read `POD_NAME`, `POD_NAMESPACE`, `VERSION` (or `POD_VERSION`) and the host name.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Self {
        let hostname = get("HOSTNAME")
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_default();
        PodInfo {
            pod: get("POD_NAME").unwrap_or_else(|| hostname.clone()),
            namespace: get("POD_NAMESPACE").unwrap_or_default(),
            version: get("VERSION")
                .or_else(|| get("POD_VERSION"))
                .unwrap_or_default(),
            hostname,
            ..Default::default()
        }
    }
}

impl PodInfo {
    /// `{pod}`, `{version}`, `{namespace}` in `template` replaced by this pod's.
    pub fn expand(&self, template: &str) -> String {
        template
            .replace("{pod}", &self.pod)
            .replace("{version}", &self.version)
            .replace("{namespace}", &self.namespace)
    }
}

/// Parse `500ms`, `2s`, `1m`, or a bare number of seconds.
pub fn parse_delay(s: &str) -> Option<std::time::Duration> {
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && (0.0..=3600.0).contains(&(v * scale)))
        .then(|| std::time::Duration::from_secs_f64(v * scale))
}
