//! The proxy's one error type. Each error knows its side (the downstream client, the
//! upstream, or the proxy itself), whether another attempt may help, and the Istio/Envoy
//! response flag it is reported with; `l7::respond` turns it into the response a client sees.

use http::StatusCode;

/// Which side of the proxy an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Setting up: the control plane, certificates, TLS, network namespaces.
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
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{resource}: {field}: {reason}")]
    Config {
        resource: String,
        field: String,
        reason: String,
    },

    // Serving a connection or a request.
    #[error("no route: {0}")]
    NoRoute(String),
    #[error("no cluster for destination host {0}")]
    NoCluster(String),
    #[error("no healthy upstream for {0}")]
    NoHealthyUpstream(String),
    #[error("upstream connect error or disconnect/reset before headers. reset reason: overflow")]
    Overflow,
    #[error("upstream connect error: {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("HBONE to {addr} answered {status}")]
    HboneStatus { addr: String, status: u16 },
    #[error("upstream connect error or disconnect/reset before headers: {0}")]
    Reset(String),
    #[error("upstream request timeout")]
    Timeout,
    #[error("bad request: {0}")]
    Downstream(String),
    #[error("fault filter abort")]
    FaultAbort { status: u16, grpc: Option<u32> },
    #[error("denied: {0}")]
    Denied(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub fn side(&self) -> Side {
        match self {
            Error::Connect { .. }
            | Error::HboneStatus { .. }
            | Error::Reset(_)
            | Error::Timeout
            | Error::NoHealthyUpstream(_)
            | Error::Overflow => Side::Upstream,
            Error::Downstream(_) | Error::Denied(_) => Side::Downstream,
            _ => Side::Internal,
        }
    }

    /// Whether another attempt (at another endpoint) may succeed where this one failed.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Reset(_) | Error::Timeout => true,
            Error::HboneStatus { status, .. } => *status == 503,
            _ => false,
        }
    }

    /// Envoy's short response flag, as Istio reports it in metrics and access logs.
    pub fn flag(&self) -> &'static str {
        match self {
            Error::NoRoute(_) => "NR",
            Error::NoCluster(_) => "NC",
            Error::NoHealthyUpstream(_) => "UH",
            Error::Overflow => "UO",
            Error::Connect { .. } | Error::HboneStatus { .. } => "UF",
            Error::Reset(_) => "UC",
            Error::Timeout => "UT",
            Error::Downstream(_) => "DPE",
            Error::FaultAbort { .. } => "FI",
            Error::Denied(_) => "RBAC",
            _ => "UF",
        }
    }

    /// The status a client gets for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NoRoute(_) => StatusCode::NOT_FOUND,
            Error::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Error::Downstream(_) => StatusCode::BAD_REQUEST,
            Error::Denied(_) => StatusCode::FORBIDDEN,
            Error::FaultAbort { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_knows_side_retry_flag_and_status() {
        let connect = Error::Connect {
            addr: "10.0.0.1:80".into(),
            reason: "refused".into(),
        };
        for (e, side, retry, flag, status) in [
            (connect, Side::Upstream, true, "UF", 503),
            (Error::Reset("eof".into()), Side::Upstream, true, "UC", 503),
            (Error::Timeout, Side::Upstream, true, "UT", 504),
            (Error::Overflow, Side::Upstream, false, "UO", 503),
            (
                Error::NoHealthyUpstream("a".into()),
                Side::Upstream,
                false,
                "UH",
                503,
            ),
            (Error::NoRoute("a".into()), Side::Internal, false, "NR", 404),
            (
                Error::NoCluster("a".into()),
                Side::Internal,
                false,
                "NC",
                503,
            ),
            (
                Error::Downstream("body".into()),
                Side::Downstream,
                false,
                "DPE",
                400,
            ),
            (
                Error::Denied("RBAC: access denied".into()),
                Side::Downstream,
                false,
                "RBAC",
                403,
            ),
            (
                Error::FaultAbort {
                    status: 418,
                    grpc: None,
                },
                Side::Internal,
                false,
                "FI",
                418,
            ),
            (
                Error::HboneStatus {
                    addr: "a".into(),
                    status: 401,
                },
                Side::Upstream,
                false,
                "UF",
                503,
            ),
        ] {
            assert_eq!(
                (e.side(), e.retryable(), e.flag(), e.status().as_u16()),
                (side, retry, flag, status),
                "{e}"
            );
        }
    }
}
