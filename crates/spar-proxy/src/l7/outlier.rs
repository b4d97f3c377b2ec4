//! Outlier detection: consecutive 5xx or gateway errors eject an endpoint for a time that
//! grows with each ejection, as Envoy does; `balance::pick` skips ejected endpoints.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::balance::{EndpointStats, lock};
use super::config::Outlier;

/// How a request to an endpoint ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Status(u16),
    /// Connection refused, reset or timed out: a gateway error.
    Failed,
}

/// Record an outcome; ejects the endpoint when its consecutive failures reach the threshold
/// and fewer than `max_ejection_percent` of `peers` are out (at least one may always go).
/// Returns true when this outcome ejected the endpoint.
pub fn record(
    od: Option<&Outlier>,
    ep: &EndpointStats,
    outcome: Outcome,
    peers: &[Arc<EndpointStats>],
) -> bool {
    let (five, gateway) = match outcome {
        Outcome::Status(s) => (s >= 500, matches!(s, 502..=504)),
        Outcome::Failed => (true, true),
    };
    let c5 = if five {
        ep.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1
    } else {
        ep.consecutive_5xx.store(0, Ordering::Relaxed);
        0
    };
    let cg = if gateway {
        ep.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
    } else {
        ep.consecutive_gateway.store(0, Ordering::Relaxed);
        0
    };
    let Some(od) = od else { return false };
    let trip = od.consecutive_5xx.is_some_and(|n| c5 >= n)
        || od.consecutive_gateway.is_some_and(|n| cg >= n);
    if !trip {
        return false;
    }
    let now = Instant::now();
    if ep.ejected(now) {
        return false;
    }
    let out = peers.iter().filter(|p| p.ejected(now)).count();
    let allowed = (peers.len() * od.max_ejection_percent as usize / 100).max(1);
    if out >= allowed {
        return false;
    }
    let n = ep.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
    *lock(&ep.ejected_until) = Some(now + od.base_ejection * n);
    true
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::balance::pick;
    use super::*;

    fn eps(n: usize) -> Vec<Arc<EndpointStats>> {
        (0..n).map(|_| Arc::new(EndpointStats::default())).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn outlier_ejects_then_returns() {
        let s = eps(2);
        let od = Outlier {
            consecutive_5xx: Some(2),
            consecutive_gateway: None,
            interval: Duration::from_secs(1),
            base_ejection: Duration::from_millis(50),
            max_ejection_percent: 100,
        };
        assert!(!record(Some(&od), &s[0], Outcome::Status(500), &s));
        assert!(!record(Some(&od), &s[0], Outcome::Status(200), &s));
        assert!(!record(Some(&od), &s[0], Outcome::Status(503), &s));
        assert!(record(Some(&od), &s[0], Outcome::Status(503), &s));
        let rr = std::sync::atomic::AtomicUsize::new(0);
        let mut zero = |_| 0usize;
        for _ in 0..4 {
            assert_eq!(
                pick(
                    &crate::l7::config::Balance::RoundRobin,
                    &s,
                    &[],
                    None,
                    &rr,
                    &mut zero
                ),
                Some(1)
            );
        }
        tokio::time::advance(Duration::from_millis(60)).await;
        assert!(!s[0].ejected(Instant::now()));
        // With max 10 % of two endpoints, one may still go, but not the second.
        let od10 = Outlier {
            max_ejection_percent: 10,
            ..od
        };
        let s = eps(2);
        for _ in 0..2 {
            record(Some(&od10), &s[0], Outcome::Failed, &s);
            record(Some(&od10), &s[1], Outcome::Failed, &s);
        }
        let now = Instant::now();
        assert_eq!(s.iter().filter(|e| e.ejected(now)).count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn each_ejection_lasts_longer() {
        let s = eps(2);
        let od = Outlier {
            consecutive_5xx: Some(1),
            consecutive_gateway: None,
            interval: Duration::from_secs(1),
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 100,
        };
        for (round, lasts) in [(1u32, 30u64), (2, 60), (3, 90)] {
            assert!(
                record(Some(&od), &s[0], Outcome::Failed, &s),
                "round {round}"
            );
            tokio::time::advance(Duration::from_secs(lasts - 1)).await;
            assert!(s[0].ejected(Instant::now()), "round {round}: still out");
            tokio::time::advance(Duration::from_secs(2)).await;
            assert!(
                !s[0].ejected(Instant::now()),
                "round {round}: back after {lasts} s"
            );
        }
        assert_eq!(s[0].ejection_count(), 3);
    }
}
