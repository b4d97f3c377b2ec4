//! Copying a connection both ways, then counting its bytes under Istio's TCP metrics and
//! writing its access log line.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::metrics::{Metrics, TcpLabels};
use crate::snapshot::{ServiceKey, WorkloadInfo};

/// Bytes moved per read and write when relaying a connection.
const COPY_BUF: usize = 64 * 1024;

/// Istio's TCP metric labels for a connection from `src` to `dst`.
pub fn labels(
    reporter: &str,
    src: Option<&WorkloadInfo>,
    dst: Option<&WorkloadInfo>,
    service: Option<&ServiceKey>,
    mtls: bool,
) -> TcpLabels {
    let f = |w: Option<&WorkloadInfo>, g: fn(&WorkloadInfo) -> &str| {
        w.map(g).unwrap_or("unknown").to_string()
    };
    TcpLabels {
        reporter: reporter.into(),
        source_workload: f(src, |w| &w.workload_name),
        source_workload_namespace: f(src, |w| &w.namespace),
        source_principal: f(src, |w| &w.identity),
        source_app: f(src, |w| &w.canonical_name),
        source_version: f(src, |w| &w.canonical_revision),
        destination_workload: f(dst, |w| &w.workload_name),
        destination_workload_namespace: f(dst, |w| &w.namespace),
        destination_principal: f(dst, |w| &w.identity),
        destination_app: f(dst, |w| &w.canonical_name),
        destination_version: f(dst, |w| &w.canonical_revision),
        destination_service: service
            .map(|s| s.hostname().to_string())
            .unwrap_or_else(|| "unknown".into()),
        request_protocol: "tcp".into(),
        response_flags: "-".into(),
        connection_security_policy: if mtls { "mutual_tls" } else { "none" }.into(),
    }
}

/// Copy both ways until both sides are done (or `stop` fires: the policy that admitted the
/// connection no longer does), then account bytes and log the connection.
pub async fn relay<A, B>(
    metrics: &Metrics,
    mut a: A,
    mut b: B,
    l: TcpLabels,
    log: String,
    stop: Option<&Notify>,
) where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    metrics.opened.get_or_create(&l).inc();
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUF, COPY_BUF);
    let (sent, received) = match stop {
        Some(stop) => tokio::select! {
            r = copy => r.unwrap_or((0, 0)),
            _ = stop.notified() => (0, 0),
        },
        None => copy.await.unwrap_or((0, 0)),
    };
    metrics.sent.get_or_create(&l).inc_by(sent);
    metrics.received.get_or_create(&l).inc_by(received);
    metrics.closed.get_or_create(&l).inc();
    tracing::info!(target: "access", "{log} sent={sent} received={received} duration_ms={}", started.elapsed().as_millis());
}

/// Refuse a plaintext connection with a reset.
pub fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}
