//! Circuit breaking for one cluster (Istio's connection pool settings).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::Limits;

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
    use std::time::Duration;

    use super::*;

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
