//! Per-request load balancing, circuit breaking and outlier detection. Endpoint statistics
//! (in-flight requests, peak-EWMA latency, consecutive failures, ejection) live per endpoint
//! address; the choice itself is a pure function over them, tested by tables.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::{Balance, Limits, Outlier};

/// EWMA decay time: older latency samples fade over about this long.
const DECAY: Duration = Duration::from_secs(10);
/// Latency assumed for an endpoint nobody has measured yet.
const DEFAULT_RTT_MS: f64 = 5.0;

#[derive(Debug)]
pub struct EndpointStats {
    pub inflight: AtomicUsize,
    ewma: Mutex<(f64, Instant)>,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    times_ejected: AtomicU32,
    pub requests: AtomicU64,
}

impl Default for EndpointStats {
    fn default() -> Self {
        EndpointStats {
            inflight: AtomicUsize::new(0),
            ewma: Mutex::new((DEFAULT_RTT_MS, Instant::now())),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            times_ejected: AtomicU32::new(0),
            requests: AtomicU64::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EndpointStats {
    /// Peak-EWMA: a slower sample takes over at once, faster ones pull it down gradually.
    pub fn observe(&self, rtt: Duration) {
        let ms = rtt.as_secs_f64() * 1000.0;
        let mut g = lock(&self.ewma);
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(g.1).as_secs_f64();
        let w = (-elapsed / DECAY.as_secs_f64()).exp();
        g.0 = if ms > g.0 {
            ms
        } else {
            g.0 * w + ms * (1.0 - w)
        };
        g.1 = now;
    }

    /// Expected cost of one more request here.
    pub fn cost(&self) -> f64 {
        lock(&self.ewma).0 * (self.inflight.load(Ordering::Relaxed) as f64 + 1.0)
    }

    pub fn ejected(&self, now: Instant) -> bool {
        let mut g = lock(&self.ejected_until);
        match *g {
            Some(t) if now < t => true,
            Some(_) => {
                // Back in rotation: start counting afresh.
                *g = None;
                self.consecutive_5xx.store(0, Ordering::Relaxed);
                self.consecutive_gateway.store(0, Ordering::Relaxed);
                false
            }
            None => false,
        }
    }

    pub fn ejection_count(&self) -> u32 {
        self.times_ejected.load(Ordering::Relaxed)
    }
}

/// All endpoints' statistics, shared by every cluster of the proxy.
#[derive(Default)]
pub struct Stats {
    by_addr: Mutex<HashMap<SocketAddr, Arc<EndpointStats>>>,
}

impl Stats {
    pub fn get(&self, addr: SocketAddr) -> Arc<EndpointStats> {
        lock(&self.by_addr).entry(addr).or_default().clone()
    }
}

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

/// Pick an endpoint index. `avoid` holds endpoints a previous attempt already failed on;
/// ejected endpoints are skipped unless nothing else is left (Envoy's panic threshold).
pub fn pick(
    balance: &Balance,
    stats: &[Arc<EndpointStats>],
    avoid: &[usize],
    hash: Option<u64>,
    rr: &AtomicUsize,
    rand: &mut dyn FnMut(usize) -> usize,
) -> Option<usize> {
    if stats.is_empty() {
        return None;
    }
    let now = Instant::now();
    let mut live: Vec<usize> = (0..stats.len())
        .filter(|i| !avoid.contains(i) && !stats[*i].ejected(now))
        .collect();
    if live.is_empty() {
        live = (0..stats.len()).filter(|i| !avoid.contains(i)).collect();
    }
    if live.is_empty() {
        live = (0..stats.len()).collect();
    }
    let two = |rand: &mut dyn FnMut(usize) -> usize| {
        let a = live[rand(live.len())];
        let b = live[rand(live.len())];
        (a, b)
    };
    Some(match balance {
        Balance::RoundRobin => live[rr.fetch_add(1, Ordering::Relaxed) % live.len()],
        Balance::Random => live[rand(live.len())],
        Balance::LeastRequest => {
            let (a, b) = two(rand);
            if stats[b].inflight.load(Ordering::Relaxed) < stats[a].inflight.load(Ordering::Relaxed)
            {
                b
            } else {
                a
            }
        }
        Balance::PeakEwma => {
            let (a, b) = two(rand);
            if stats[b].cost() < stats[a].cost() {
                b
            } else {
                a
            }
        }
        Balance::Hash(_) => match hash {
            Some(h) => rendezvous(h, &live),
            // No key on this request: spread it like round robin.
            None => live[rr.fetch_add(1, Ordering::Relaxed) % live.len()],
        },
    })
}

/// Highest-random-weight hashing: each key prefers one endpoint, and removing an endpoint
/// moves only the keys that preferred it.
fn rendezvous(key: u64, live: &[usize]) -> usize {
    live.iter()
        .copied()
        .max_by_key(|i| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (key, *i as u64).hash(&mut h);
            h.finish()
        })
        .unwrap_or(0)
}

/// A stable hash of a key (header value, cookie, source IP, query parameter).
pub fn hash_key(v: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Circuit breaking for one cluster: at most `active` requests at once, at most
/// `max_pending` waiting for one of those slots; the rest are refused (`UO`).
pub struct Breaker {
    active: Arc<Semaphore>,
    pending: AtomicUsize,
    max_pending: usize,
    pub retries: AtomicUsize,
    pub max_retries: usize,
}

pub struct Overflow;

impl Breaker {
    /// `h2`: the upstream multiplexes, so requests (not connections) are the limit.
    pub fn new(l: &Limits, h2: bool) -> Breaker {
        let active = if h2 {
            l.http2_max_requests
        } else {
            l.max_connections
        };
        Breaker {
            active: Arc::new(Semaphore::new(
                active
                    .unwrap_or(Semaphore::MAX_PERMITS)
                    .min(Semaphore::MAX_PERMITS),
            )),
            pending: AtomicUsize::new(0),
            max_pending: l.max_pending.unwrap_or(usize::MAX),
            retries: AtomicUsize::new(0),
            max_retries: l.max_retries.unwrap_or(usize::MAX),
        }
    }

    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, Overflow> {
        if let Ok(p) = self.active.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Overflow);
        }
        let p = self.active.clone().acquire_owned().await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        p.map_err(|_| Overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: usize) -> Vec<Arc<EndpointStats>> {
        (0..n).map(|_| Arc::new(EndpointStats::default())).collect()
    }

    #[test]
    fn picks_by_policy() {
        let s = eps(3);
        let rr = AtomicUsize::new(0);
        let mut zero = |_| 0usize;
        let got: Vec<usize> = (0..4)
            .filter_map(|_| pick(&Balance::RoundRobin, &s, &[], None, &rr, &mut zero))
            .collect();
        assert_eq!(got, vec![0, 1, 2, 0]);
        // Least request: of the two sampled, the one with fewer in flight.
        s[0].inflight.store(5, Ordering::Relaxed);
        let mut seq = [0usize, 1].into_iter().cycle();
        let mut two = |_| seq.next().unwrap_or(0);
        assert_eq!(
            pick(&Balance::LeastRequest, &s, &[], None, &rr, &mut two),
            Some(1)
        );
        // Peak EWMA: a slow endpoint loses against a fast one.
        let s = eps(2);
        s[0].observe(Duration::from_millis(200));
        s[1].observe(Duration::from_millis(1));
        let mut seq = [0usize, 1].into_iter().cycle();
        let mut two = |_| seq.next().unwrap_or(0);
        assert_eq!(
            pick(&Balance::PeakEwma, &s, &[], None, &rr, &mut two),
            Some(1)
        );
        // Avoid what failed already.
        assert_eq!(
            pick(&Balance::RoundRobin, &s, &[0], None, &rr, &mut zero),
            Some(1)
        );
    }

    #[test]
    fn one_key_one_endpoint() {
        let s = eps(5);
        let rr = AtomicUsize::new(0);
        let mut r = |n: usize| (rand::random::<u32>() as usize) % n;
        let b = Balance::Hash(super::super::config::HashOn::SourceIp);
        for key in ["alice", "bob", "carol"] {
            let h = hash_key(key.as_bytes());
            let first = pick(&b, &s, &[], Some(h), &rr, &mut r);
            for _ in 0..20 {
                assert_eq!(pick(&b, &s, &[], Some(h), &rr, &mut r), first);
            }
        }
    }

    #[test]
    fn outlier_ejects_then_returns() {
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
        let rr = AtomicUsize::new(0);
        let mut zero = |_| 0usize;
        for _ in 0..4 {
            assert_eq!(
                pick(&Balance::RoundRobin, &s, &[], None, &rr, &mut zero),
                Some(1)
            );
        }
        std::thread::sleep(Duration::from_millis(60));
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

    #[tokio::test]
    async fn breaker_refuses_beyond_pending() {
        let l = Limits {
            max_connections: Some(1),
            max_pending: Some(1),
            ..Limits::default()
        };
        let b = Arc::new(Breaker::new(&l, false));
        let first = b.enter().await.ok().expect("first gets the slot");
        let b2 = b.clone();
        let waiting = tokio::spawn(async move { b2.enter().await.is_ok() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(b.enter().await.is_err(), "third overflows");
        drop(first);
        assert!(waiting.await.expect("join"), "the pending one proceeds");
    }
}
