//! Whether to try again: a pure decision over the route's retry policy, the request and how
//! the last attempt ended, and Envoy's jittered exponential back-off between attempts.

use std::time::Duration;

use http::Method;
use rand::Rng;

use super::config::Retry;

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The upstream answered with this status.
    Status(u16),
    /// No connection: the request never reached the upstream.
    ConnectFailed,
    /// The connection broke after the request was (maybe) sent.
    Reset,
    /// The per-try timeout fired.
    Timeout,
}

/// What else bears on a retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryState {
    /// Attempts made so far (1 after the first).
    pub made: u32,
    /// The request body can be sent again (it was buffered).
    pub replayable: bool,
    /// The cluster's retry budget (`maxRetries`) has room.
    pub budget: bool,
    /// A protocol upgrade (WebSocket) is under way: never retried.
    pub upgrade: bool,
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Retry after `last`? Never beyond `attempts` retries, never a body that cannot be replayed,
/// and never a non-idempotent request that may have reached the upstream (unless the route
/// says `non-idempotent`).
pub fn should_retry(r: &Retry, method: &Method, last: Attempt, s: RetryState) -> bool {
    if s.made > r.attempts || !s.budget || s.upgrade || !s.replayable {
        return false;
    }
    let reached = last != Attempt::ConnectFailed;
    if reached && !idempotent(method) && !r.on.non_idempotent {
        return false;
    }
    let on = &r.on;
    match last {
        Attempt::Status(code) => {
            (on.five_xx && code >= 500)
                || (on.gateway_error && matches!(code, 502..=504))
                || on.statuses.contains(&code)
        }
        Attempt::ConnectFailed => {
            on.connect_failure || on.refused_stream || on.five_xx || on.gateway_error
        }
        Attempt::Reset => on.reset || on.five_xx || on.gateway_error,
        Attempt::Timeout => {
            on.reset || on.five_xx || on.gateway_error || r.per_try_timeout.is_some()
        }
    }
}

/// Envoy's back-off: uniform in [0, 25 ms x 2^(retry-1)), capped at 250 ms.
pub fn backoff(retry: u32, rng: &mut impl Rng) -> Duration {
    let ceiling = (25u64 << retry.saturating_sub(1).min(4)).min(250);
    Duration::from_millis(rng.random_range(0..ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::config::RetryOn;
    use rand::SeedableRng;

    fn policy(attempts: u32, on: RetryOn) -> Retry {
        Retry {
            attempts,
            per_try_timeout: None,
            on,
        }
    }

    fn state(made: u32) -> RetryState {
        RetryState {
            made,
            replayable: true,
            budget: true,
            upgrade: false,
        }
    }

    #[test]
    fn table() {
        let default = crate::l7::config::RetryOn {
            connect_failure: true,
            refused_stream: true,
            statuses: vec![503],
            ..Default::default()
        };
        let five = RetryOn {
            five_xx: true,
            ..Default::default()
        };
        let gw = RetryOn {
            gateway_error: true,
            ..Default::default()
        };
        let post_ok = RetryOn {
            five_xx: true,
            non_idempotent: true,
            ..Default::default()
        };
        let (get, post) = (Method::GET, Method::POST);
        let no_replay = RetryState {
            replayable: false,
            ..state(1)
        };
        let no_budget = RetryState {
            budget: false,
            ..state(1)
        };
        let upgrade = RetryState {
            upgrade: true,
            ..state(1)
        };
        for (i, (p, m, last, s, want)) in [
            (
                policy(2, default.clone()),
                &get,
                Attempt::Status(503),
                state(1),
                true,
            ),
            (
                policy(2, default.clone()),
                &get,
                Attempt::Status(500),
                state(1),
                false,
            ),
            (
                policy(2, default.clone()),
                &get,
                Attempt::ConnectFailed,
                state(1),
                true,
            ),
            (
                policy(2, default.clone()),
                &get,
                Attempt::Status(503),
                state(2),
                true,
            ),
            (
                policy(2, default.clone()),
                &get,
                Attempt::Status(503),
                state(3),
                false,
            ),
            (
                policy(0, default.clone()),
                &get,
                Attempt::Status(503),
                state(1),
                false,
            ),
            // A POST that reached the upstream is never sent twice; one that did not is.
            (
                policy(2, default.clone()),
                &post,
                Attempt::Status(503),
                state(1),
                false,
            ),
            (
                policy(2, default.clone()),
                &post,
                Attempt::ConnectFailed,
                state(1),
                true,
            ),
            (
                policy(2, post_ok),
                &post,
                Attempt::Status(500),
                state(1),
                true,
            ),
            (
                policy(2, five.clone()),
                &get,
                Attempt::Status(500),
                state(1),
                true,
            ),
            (
                policy(2, five.clone()),
                &get,
                Attempt::Status(404),
                state(1),
                false,
            ),
            (
                policy(2, five.clone()),
                &get,
                Attempt::Reset,
                state(1),
                true,
            ),
            (
                policy(2, gw.clone()),
                &get,
                Attempt::Status(502),
                state(1),
                true,
            ),
            (
                policy(2, gw.clone()),
                &get,
                Attempt::Status(500),
                state(1),
                false,
            ),
            (policy(2, gw), &get, Attempt::Timeout, state(1), true),
            (
                policy(2, default.clone()),
                &get,
                Attempt::Reset,
                state(1),
                false,
            ),
            (
                policy(2, five.clone()),
                &get,
                Attempt::Status(503),
                no_replay,
                false,
            ),
            (
                policy(2, five.clone()),
                &get,
                Attempt::Status(503),
                no_budget,
                false,
            ),
            (policy(2, five), &get, Attempt::Status(503), upgrade, false),
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(
                should_retry(&p, m, last, s),
                want,
                "case {i}: {m} {last:?} {s:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for (retry, ceiling) in [(1, 25), (2, 50), (3, 100), (4, 200), (5, 250), (30, 250)] {
            let worst = (0..500)
                .map(|_| backoff(retry, &mut rng))
                .max()
                .expect("some");
            assert!(
                worst < Duration::from_millis(ceiling),
                "retry {retry}: {worst:?}"
            );
            assert!(
                worst >= Duration::from_millis(ceiling * 3 / 4),
                "retry {retry} spreads up to its ceiling: {worst:?}"
            );
        }
    }
}
