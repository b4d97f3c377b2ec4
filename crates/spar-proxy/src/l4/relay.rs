//! Moving a connection's bytes both ways (`pipe`), then counting them under Istio's TCP
//! metrics and writing its access log line.

use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::pipe::{Leg, Moved, pipe};
use crate::metrics::{Metrics, PeerLabels, TcpLabels};
use crate::snapshot::{ServiceKey, WorkloadInfo};

/// Istio's TCP metric labels for a connection from `src` to `dst`.
pub fn labels(
    reporter: &str,
    src: Option<&WorkloadInfo>,
    dst: Option<&WorkloadInfo>,
    service: Option<&ServiceKey>,
    mtls: bool,
) -> TcpLabels {
    TcpLabels {
        peers: PeerLabels::new(reporter, src, None, dst, service),
        request_protocol: "tcp".into(),
        response_flags: "-".into(),
        connection_security_policy: if mtls { "mutual_tls" } else { "none" }.into(),
    }
}

/// Move bytes both ways until both sides are done, one fails, or `stop` fires (the policy
/// that admitted the connection no longer does); then account bytes and log the connection.
/// `a` is the side that opened the connection: `sent` counts bytes from it.
pub async fn relay(
    metrics: &Metrics,
    a: impl Into<Leg>,
    b: impl Into<Leg>,
    l: TcpLabels,
    log: String,
    stop: Option<&Notify>,
) {
    let started = Instant::now();
    metrics.opened.get_or_create(&l).inc();
    let moved = Moved::default();
    let relayed = pipe(a.into(), b.into(), &moved);
    let end = match stop {
        Some(stop) => tokio::select! {
            r = relayed => r.err().map(|e| e.to_string()),
            _ = stop.notified() => Some("policy no longer allows the connection".to_string()),
        },
        None => relayed.await.err().map(|e| e.to_string()),
    };
    let sent = moved.a_to_b.load(Ordering::Relaxed);
    let received = moved.b_to_a.load(Ordering::Relaxed);
    metrics.sent.get_or_create(&l).inc_by(sent);
    metrics.received.get_or_create(&l).inc_by(received);
    metrics.closed.get_or_create(&l).inc();
    let end = end.map(|e| format!(" error=\"{e}\"")).unwrap_or_default();
    tracing::info!(target: "access", "{log} sent={sent} received={received} duration_ms={}{end}", started.elapsed().as_millis());
}

/// Refuse a plaintext connection with a reset.
pub fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}
