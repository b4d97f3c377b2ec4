//! Per-request load balancing. Endpoint statistics (in-flight requests, peak-EWMA latency,
//! consecutive failures, ejection) live per endpoint address; the choice itself is a pure
//! function over them, tested by tables. Time is tokio's, so tests can pause the clock.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::config::Balance;

/// EWMA decay time: older latency samples fade over about this long.
const DECAY: Duration = Duration::from_secs(10);
/// Latency assumed for an endpoint nobody has measured yet.
const DEFAULT_RTT_MS: f64 = 5.0;

#[derive(Debug)]
pub struct EndpointStats {
    pub inflight: AtomicUsize,
    ewma: Mutex<(f64, Instant)>,
    pub(super) consecutive_5xx: AtomicU32,
    pub(super) consecutive_gateway: AtomicU32,
    pub(super) ejected_until: Mutex<Option<Instant>>,
    pub(super) times_ejected: AtomicU32,
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

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_jumps_up_and_decays_down() {
        let e = EndpointStats::default();
        e.observe(Duration::from_millis(100));
        assert!(
            (e.cost() - 100.0).abs() < 0.01,
            "a slower sample takes over: {}",
            e.cost()
        );
        // Ten seconds later (one decay time) a 1 ms sample pulls it about 63% of the way.
        tokio::time::advance(Duration::from_secs(10)).await;
        e.observe(Duration::from_millis(1));
        let c = e.cost();
        assert!((30.0..45.0).contains(&c), "decayed toward 1 ms: {c}");
        // Load counts: one request in flight doubles the expected cost.
        e.inflight.store(1, Ordering::Relaxed);
        assert!((e.cost() - 2.0 * c).abs() < 0.01);
    }
}
