//! In process, no root: retries, timeouts, fault injection, mirroring, load balancing,
//! circuit breaking and outlier detection through real sidecars, with scripted applications
//! that fail or stall on purpose.

mod harness;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use harness::{Mesh, SUBSETS, request, reviews, reviews_bare, seen, spread};
use http::Method;

const H: &str = "reviews";

fn vs(http: &str) -> String {
    format!("{SUBSETS}---\n{}", vs_only(http))
}

/// A VirtualService alone (with `dr` for the subsets).
fn vs_only(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: mesh}}
spec:
  hosts: [reviews]
  http:
{http}"
    )
}

fn dr(policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: mesh}}
spec:
  host: reviews
  trafficPolicy:
{policy}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  - {{name: v3, labels: {{version: v3}}}}
"
    )
}

/// `reviews` with v1 answering `status` after `delay`, v2 and v3 echo.
async fn one_bad(extra: &str, status: u16, delay: Duration) -> (Mesh, harness::Recorder) {
    let mut mesh = reviews_bare(extra).await;
    let bad = mesh.app("reviews-v1", 9080, status, delay).await;
    mesh.echo("reviews-v2", &[9080]).await;
    mesh.echo("reviews-v3", &[9080]).await;
    mesh.sidecars(&["reviews-v1", "reviews-v2", "reviews-v3", "client"])
        .await;
    (mesh, bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_that_meets_a_503_is_retried_on_another_endpoint() {
    let (mesh, bad) = one_bad("", 503, Duration::ZERO).await;
    let (pods, statuses) = spread(&mesh, "client", H, 9080, "/", &[], 60).await;
    assert_eq!(
        statuses.get(&200),
        Some(&60),
        "Istio's default retries hide v1: {statuses:?}"
    );
    assert!(!pods.contains_key("reviews-v1"));
    assert!(!seen(&bad).is_empty(), "v1 was tried");
    assert!(mesh.metrics("client").contains("istio_requests_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_reached_the_upstream_is_not_sent_twice() {
    let (mesh, bad) = one_bad("", 503, Duration::ZERO).await;
    let mut c = mesh.client("client", H, 9080).await;
    let mut failed = 0;
    for _ in 0..30 {
        let r = c.send(request(Method::POST, H, 9080, "/", &[], "{}")).await;
        if r.status == 503 {
            failed += 1;
        }
    }
    let v1 = seen(&bad).len();
    assert_eq!(failed, v1, "every POST v1 got failed, none was retried");
    assert!(failed > 0, "v1 was picked at least once in 30");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_zero_passes_failures_through() {
    let (mesh, _) = one_bad(
        &format!(
            "{}---\n{}",
            dr("    loadBalancer: {simple: ROUND_ROBIN}"),
            vs_only(
                "  - retries: {attempts: 0}
    route: [{destination: {host: reviews}}]"
            )
        ),
        503,
        Duration::ZERO,
    )
    .await;
    let (_, statuses) = spread(&mesh, "client", H, 9080, "/", &[], 60).await;
    assert_eq!(
        statuses.get(&503),
        Some(&20),
        "every third request meets v1: {statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_5xx_covers_500_and_exhausted_retries_report_urx() {
    let (mesh, bad) = one_bad(
        &vs("  - retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: reviews, subset: v1}}]"),
        500,
        Duration::ZERO,
    )
    .await;
    let r = mesh.get("client", H, 9080, "/", &[]).await;
    assert_eq!(r.status, 500, "only v1, which always fails");
    assert_eq!(seen(&bad).len(), 4, "the first attempt and three retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_answers_504() {
    let (mesh, _) = one_bad(
        &vs("  - timeout: 300ms
    route: [{destination: {host: reviews, subset: v1}}]"),
        200,
        Duration::from_secs(3),
    )
    .await;
    let t = Instant::now();
    let r = mesh.get("client", H, 9080, "/", &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (504, "upstream request timeout\n")
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(mesh.metrics("client").contains("response_flags=\"UT\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_try_timeout_moves_to_a_faster_endpoint() {
    let (mesh, bad) = one_bad(
        &vs(
            "  - retries: {attempts: 2, perTryTimeout: 400ms, retryOn: 5xx}
    route: [{destination: {host: reviews}}]",
        ),
        200,
        Duration::from_secs(5),
    )
    .await;
    let t = Instant::now();
    let (pods, statuses) = spread(&mesh, "client", H, 9080, "/", &[], 20).await;
    assert_eq!(statuses.get(&200), Some(&20), "{statuses:?}");
    assert!(!pods.contains_key("reviews-v1"));
    assert!(!seen(&bad).is_empty(), "v1 was tried and timed out");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_abort_and_delay() {
    let mesh = reviews(&vs("  - match: [{uri: {exact: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {exact: /half}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 50}}}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {exact: /delay}}]
    fault: {delay: {fixedDelay: 400ms, percentage: {value: 100}}}
    route: [{destination: {host: reviews}}]"))
    .await;
    let r = mesh.get("client", H, 9080, "/abort", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (418, "fault filter abort\n"));
    let (_, statuses) = spread(&mesh, "client", H, 9080, "/half", &[], 200).await;
    let aborted = statuses.get(&500).copied().unwrap_or(0);
    assert!(
        (60..=140).contains(&aborted),
        "about half of 200: {statuses:?}"
    );
    let t = Instant::now();
    let r = mesh.get("client", H, 9080, "/delay", &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    let m = mesh.metrics("client");
    assert!(m.contains("response_flags=\"FI\""), "{m}");
    assert!(m.contains("response_flags=\"DI\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_fault_aborts_carry_a_grpc_status() {
    let mesh = reviews(&vs(
        "  - fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: reviews}}]",
    ))
    .await;
    let r = mesh
        .get(
            "client",
            H,
            9080,
            "/pkg.Svc/Call",
            &[("content-type", "application/grpc")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status").as_deref(), Some("14"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_copies_reach_the_mirror_and_the_client_sees_only_the_primary() {
    let mut mesh = reviews_bare(&vs(
        "  - route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 100}",
    ))
    .await;
    mesh.echo("reviews-v1", &[9080]).await;
    let shadow = mesh.app("reviews-v2", 9080, 500, Duration::ZERO).await;
    mesh.echo("reviews-v3", &[9080]).await;
    mesh.sidecars(&["reviews-v1", "reviews-v2", "reviews-v3", "client"])
        .await;
    for _ in 0..5 {
        let r = mesh.get("client", H, 9080, "/m", &[]).await;
        assert_eq!((r.status, r.pod().as_str()), (200, "reviews-v1"));
    }
    harness::eventually("the mirror saw five copies", Duration::from_secs(5), || {
        let n = seen(&shadow).len();
        async move { n == 5 }
    })
    .await;
    let s = &seen(&shadow)[0];
    assert_eq!(
        s.headers.get("host").and_then(|h| h.to_str().ok()),
        Some("reviews:9080-shadow")
    );
    assert_eq!(s.path, "/m");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_visits_each_endpoint_in_turn() {
    let mesh = reviews(&dr("    loadBalancer: {simple: ROUND_ROBIN}")).await;
    let (pods, _) = spread(&mesh, "client", H, 9080, "/", &[], 60).await;
    assert_eq!(
        pods.values().copied().collect::<Vec<_>>(),
        vec![20, 20, 20],
        "{pods:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_and_random_spread_over_all() {
    for lb in ["LEAST_REQUEST", "RANDOM"] {
        let mesh = reviews(&dr(&format!("    loadBalancer: {{simple: {lb}}}"))).await;
        let (pods, statuses) = spread(&mesh, "client", H, 9080, "/", &[], 90).await;
        assert_eq!(statuses.get(&200), Some(&90));
        assert_eq!(pods.len(), 3, "{lb}: {pods:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_a_user_on_one_endpoint() {
    let mesh = reviews(&dr(
        "    loadBalancer: {consistentHash: {httpHeaderName: x-user}}",
    ))
    .await;
    let mut homes = BTreeSet::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        let (pods, _) = spread(&mesh, "client", H, 9080, "/", &[("x-user", user)], 10).await;
        assert_eq!(pods.len(), 1, "{user} always reaches one pod: {pods:?}");
        homes.extend(pods.into_keys());
    }
    assert!(homes.len() > 1, "users are spread: {homes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_refuses_beyond_its_limits() {
    let (mesh, _) = one_bad(
        &format!(
            "{}---\n{}",
            dr("    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}"),
            vs_only(
                "  - route: [{destination: {host: reviews, subset: v1}}]
    retries: {attempts: 0}"
            )
        ),
        200,
        Duration::from_millis(500),
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = mesh.client("client", H, 9080);
        tasks.push(c);
    }
    let mut clients = Vec::new();
    for c in tasks {
        clients.push(c.await);
    }
    let replies = futures_join(
        clients
            .iter_mut()
            .map(|c| c.send(request(Method::GET, H, 9080, "/", &[], "")))
            .collect(),
    )
    .await;
    let overflow = replies.iter().filter(|r| r.status == 503).count();
    let ok = replies.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        (ok, overflow),
        (2, 2),
        "one active, one pending, the rest refused"
    );
    assert!(mesh.metrics("client").contains("response_flags=\"UO\""));
}

/// Run futures at once and collect their outputs in order.
async fn futures_join<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = fs.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    for d in done {
        out.extend(d);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_failing_endpoint() {
    let (mesh, bad) = one_bad(
        &format!(
            "{}---\n{}",
            dr("    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}"),
            vs_only("  - route: [{destination: {host: reviews}}]
    retries: {attempts: 0}")
        ),
        500,
        Duration::ZERO,
    )
    .await;
    let (_, first) = spread(&mesh, "client", H, 9080, "/", &[], 60).await;
    let before = seen(&bad).len();
    assert!(
        (2..=4).contains(&before),
        "v1 is ejected after two failures: {before} requests, {first:?}"
    );
    let (pods, statuses) = spread(&mesh, "client", H, 9080, "/", &[], 60).await;
    assert_eq!(statuses.get(&200), Some(&60), "{statuses:?}");
    assert_eq!(
        seen(&bad).len(),
        before,
        "no request reaches the ejected endpoint"
    );
    assert_eq!(pods.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_opens_new_upstream_connections() {
    for (limit, conns) in [(1usize, 6usize), (3, 2)] {
        let mut mesh = reviews_bare(&format!(
            "{}---\n{}",
            dr(&format!(
                "    connectionPool: {{http: {{maxRequestsPerConnection: {limit}}}}}"
            )),
            vs_only("  - route: [{destination: {host: reviews, subset: v1}}]")
        ))
        .await;
        let rec = mesh.app("reviews-v1", 9080, 200, Duration::ZERO).await;
        mesh.sidecars(&["reviews-v1", "client"]).await;
        let mut c = mesh.client("client", H, 9080).await;
        for _ in 0..6 {
            assert_eq!(
                c.send(request(Method::GET, H, 9080, "/", &[], ""))
                    .await
                    .status,
                200
            );
        }
        // Each upstream connection of the client's sidecar is one inbound connection to v1's
        // sidecar, which keeps one application connection per downstream connection.
        let peers: BTreeSet<_> = seen(&rec).iter().map(|s| s.peer).collect();
        assert_eq!(peers.len(), conns, "limit {limit}: {peers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_upstream_connections_are_reused() {
    let mut mesh = reviews_bare(&vs(
        "  - route: [{destination: {host: reviews, subset: v1}}]",
    ))
    .await;
    let rec = mesh.app("reviews-v1", 9080, 200, Duration::ZERO).await;
    mesh.sidecars(&["reviews-v1", "client"]).await;
    for _ in 0..3 {
        let mut c = mesh.client("client", H, 9080).await;
        for _ in 0..3 {
            assert_eq!(
                c.send(request(Method::GET, H, 9080, "/", &[], ""))
                    .await
                    .status,
                200
            );
        }
    }
    let peers: BTreeSet<_> = seen(&rec).iter().map(|s| s.peer).collect();
    assert_eq!(
        peers.len(),
        1,
        "nine requests over three downstream connections, one upstream: {peers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_skipped_by_connect_failure_retries() {
    let mut mesh = reviews_bare("").await;
    // v1 has a sidecar but no application: its sidecar answers the tunnel with 503.
    mesh.echo("reviews-v2", &[9080]).await;
    mesh.echo("reviews-v3", &[9080]).await;
    mesh.sidecars(&["reviews-v1", "reviews-v2", "reviews-v3", "client"])
        .await;
    let (pods, statuses) = spread(&mesh, "client", H, 9080, "/", &[], 40).await;
    assert_eq!(statuses.get(&200), Some(&40), "{statuses:?}");
    assert!(!pods.contains_key("reviews-v1"));
}
