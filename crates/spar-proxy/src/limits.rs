//! Bounds on what a client can make a proxy hold: connections per listener and per source
//! address (a flood at one pod's port never starves the node's other pods), and how long a
//! TLS/HTTP/2 handshake or an HTTP/1 request head may take (a client that connects and then
//! says nothing is dropped, not kept forever). Counted for `/metrics` and `spar status`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The limits, Istio-like by default (Envoy's listener handshake timeout is 15 s, its
/// request-headers timeout off; ztunnel bounds handshakes at 10 s).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections one listener (one pod's port) holds at once.
    pub per_listener: usize,
    /// Connections one source address holds at one listener.
    pub per_source: usize,
    /// TLS and HTTP/2 handshakes on 15008; the HBONE dial and its CONNECT answer.
    pub handshake: Duration,
    /// An HTTP/1 request head, from the first byte to the blank line.
    pub header_read: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_listener: 16_384,
            per_source: 512,
            handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// The proxy's counters: connections open, refused (by which cap), handshakes timed out.
#[derive(Clone, Default)]
pub struct LimitMetrics {
    pub open: Gauge<i64, AtomicI64>,
    pub refused: Family<ReasonLabel, Counter>,
    pub timeouts: Counter<u64, AtomicU64>,
}

impl LimitMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "spar_connections_open",
            "Connections accepted and not yet closed",
            self.open.clone(),
        );
        r.register(
            "spar_connections_refused",
            "Connections closed at accept by a cap (reason: listener, source)",
            self.refused.clone(),
        );
        r.register(
            "spar_handshake_timeouts",
            "TLS, HTTP/2 or HTTP/1 request heads that took longer than allowed",
            self.timeouts.clone(),
        );
    }

    pub fn timed_out(&self) {
        self.timeouts.inc();
    }
}

/// One listener's admission: how many it holds, and from whom.
pub struct Admission {
    limits: Limits,
    metrics: LimitMetrics,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    open: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Held by a connection while it lives; gives its place back when dropped.
pub struct Admitted {
    admission: Arc<Admission>,
    source: IpAddr,
}

/// Why a connection was turned away at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Listener,
    Source,
}

impl Admission {
    pub fn new(limits: Limits, metrics: LimitMetrics) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            metrics,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admit a connection from `source`, or say which cap it hit.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Admitted, Refusal> {
        let mut s = self.lock();
        let refusal = if s.open >= self.limits.per_listener {
            Some(Refusal::Listener)
        } else if s.by_source.get(&source).copied().unwrap_or(0) >= self.limits.per_source {
            Some(Refusal::Source)
        } else {
            None
        };
        if let Some(r) = refusal {
            let reason = match r {
                Refusal::Listener => "listener",
                Refusal::Source => "source",
            };
            self.metrics
                .refused
                .get_or_create(&ReasonLabel {
                    reason: reason.into(),
                })
                .inc();
            return Err(r);
        }
        s.open += 1;
        *s.by_source.entry(source).or_default() += 1;
        self.metrics.open.inc();
        Ok(Admitted {
            admission: self.clone(),
            source,
        })
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.lock().open
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut s = self.admission.lock();
        s.open = s.open.saturating_sub(1);
        if let Some(n) = s.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                s.by_source.remove(&self.source);
            }
        }
        self.admission.metrics.open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn caps_per_source_and_per_listener_and_places_come_back() {
        let m = LimitMetrics::default();
        let a = Admission::new(
            Limits {
                per_listener: 3,
                per_source: 2,
                ..Limits::default()
            },
            m.clone(),
        );
        let one = a.admit(ip(1)).expect("first");
        let two = a.admit(ip(1)).expect("second");
        assert_eq!(a.admit(ip(1)).err(), Some(Refusal::Source));
        let three = a.admit(ip(2)).expect("another source");
        assert_eq!(a.admit(ip(3)).err(), Some(Refusal::Listener));
        assert_eq!((a.open(), m.open.get()), (3, 3));
        drop(one);
        let _again = a.admit(ip(1)).expect("a place came back");
        drop((two, three));
        assert_eq!(a.open(), 1);
        let refused: u64 = ["listener", "source"]
            .iter()
            .map(|r| {
                m.refused
                    .get_or_create(&ReasonLabel {
                        reason: r.to_string(),
                    })
                    .get()
            })
            .sum();
        assert_eq!(refused, 2);
    }
}
