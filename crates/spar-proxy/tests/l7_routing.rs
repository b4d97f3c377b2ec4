//! In process, no root: a client's sidecar routes by Istio's VirtualService and
//! DestinationRule to the `reviews` pods' sidecars over HBONE mTLS; each test asserts what a
//! user would check (which version answered, statuses, headers the server saw).

mod harness;

use std::time::Duration;

use bytes::Bytes;
use harness::{Builder, SUBSETS, request, reviews, reviews_bare, seen, spread};
use http::Method;
use http_body_util::Full;

const H: &str = "reviews";

fn vs(http: &str) -> String {
    format!(
        "{SUBSETS}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: mesh}}
spec:
  hosts: [reviews]
  http:
{http}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_virtual_service_requests_spread_over_every_version() {
    let mesh = reviews("").await;
    let (pods, statuses) = spread(&mesh, "client", H, 9080, "/", &[], 60).await;
    assert_eq!(statuses.get(&200), Some(&60), "{statuses:?}");
    assert_eq!(pods.len(), 3, "all three versions answer: {pods:?}");
    let r = mesh.get("client", H, 9080, "/", &[]).await;
    assert_eq!(
        r.json()["peer_identity"],
        "spiffe://cluster.local/ns/mesh/sa/client",
        "the server sees the client's verified identity: {}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_to_v1() {
    let mesh = reviews(&vs(
        "  - route: [{destination: {host: reviews, subset: v1}}]",
    ))
    .await;
    let (pods, _) = spread(&mesh, "client", H, 9080, "/", &[], 30).await;
    assert_eq!(pods.get("reviews-v1"), Some(&30), "{pods:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_match_pins_one_user_to_v2() {
    let mesh = reviews(&vs("  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]"))
    .await;
    let (pods, _) = spread(&mesh, "client", H, 9080, "/", &[("end-user", "jason")], 20).await;
    assert_eq!(pods.get("reviews-v2"), Some(&20), "{pods:?}");
    let (pods, _) = spread(&mesh, "client", H, 9080, "/", &[("end-user", "json")], 20).await;
    assert_eq!(pods.get("reviews-v1"), Some(&20), "{pods:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_shift_traffic_80_20() {
    let mesh = reviews(&vs("  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v3}, weight: 20}"))
    .await;
    let (pods, _) = spread(&mesh, "client", H, 9080, "/", &[], 300).await;
    let v1 = pods.get("reviews-v1").copied().unwrap_or(0);
    let v3 = pods.get("reviews-v3").copied().unwrap_or(0);
    assert_eq!(v1 + v3, 300, "{pods:?}");
    assert!((210..=270).contains(&v1), "80/20 over 300: {pods:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_matches_exact_prefix_and_regex() {
    let mesh = reviews(&vs("  - match: [{uri: {exact: /exact}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /api/}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {regex: '/v[0-9]+/.*'}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - directResponse: {status: 404, body: {string: nothing here}}"))
    .await;
    for (path, want) in [
        ("/exact", "reviews-v1"),
        ("/api/items", "reviews-v2"),
        ("/v12/items", "reviews-v3"),
    ] {
        let r = mesh.get("client", H, 9080, path, &[]).await;
        assert_eq!(
            (r.status, r.pod().as_str()),
            (200, want),
            "{path}: {}",
            r.body
        );
    }
    let r = mesh.get("client", H, 9080, "/exact/no", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (404, "nothing here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameters_and_methods_match() {
    let mesh = reviews(&vs("  - match: [{queryParams: {debug: {exact: '1'}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{method: {exact: POST}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - route: [{destination: {host: reviews, subset: v1}}]"))
    .await;
    assert_eq!(
        mesh.get("client", H, 9080, "/?a=b&debug=1", &[])
            .await
            .pod(),
        "reviews-v2"
    );
    assert_eq!(
        mesh.get("client", H, 9080, "/?debug=10", &[]).await.pod(),
        "reviews-v1"
    );
    let r = mesh
        .send(
            "client",
            H,
            9080,
            request(Method::POST, H, 9080, "/", &[], "{}"),
        )
        .await;
    assert_eq!(r.pod(), "reviews-v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_changes_the_path_and_authority_the_server_sees() {
    let mesh = reviews(&vs("  - match: [{uri: {prefix: /old/}}]
    rewrite: {uri: /new/, authority: reviews.internal}
    route: [{destination: {host: reviews, subset: v1}}]"))
    .await;
    let r = mesh.get("client", H, 9080, "/old/a/b?x=1", &[]).await;
    let j = r.json();
    assert_eq!(j["path"], "/new/a/b", "{}", r.body);
    assert_eq!(j["query"], "x=1");
    assert_eq!(j["headers"]["host"], "reviews.internal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_answer_with_the_location() {
    let mesh = reviews(&vs("  - match: [{uri: {exact: /moved}}]
    redirect: {uri: /here, authority: other, redirectCode: 302}
  - route: [{destination: {host: reviews}}]"))
    .await;
    let r = mesh.get("client", H, 9080, "/moved", &[]).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location").as_deref(), Some("http://other/here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_operations_on_request_and_response() {
    let mesh = reviews(&vs("  - headers:
      request: {set: {x-set: one}, add: {x-added: two}, remove: [x-secret]}
      response: {set: {x-served-by: spar}}
    route:
    - destination: {host: reviews, subset: v1}
      headers: {request: {set: {x-dest: v1}}}"))
    .await;
    let r = mesh
        .get(
            "client",
            H,
            9080,
            "/",
            &[("x-secret", "s"), ("x-set", "zero")],
        )
        .await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-set"], "one", "{}", r.body);
    assert_eq!(h["x-added"], "two");
    assert_eq!(h["x-dest"], "v1");
    assert!(h.get("x-secret").is_none(), "removed: {}", r.body);
    assert!(h.get("x-request-id").is_some(), "a request id is added");
    assert_eq!(r.header("x-served-by").as_deref(), Some("spar"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_subsets_and_hosts_answer_503() {
    let mesh = reviews(&vs("  - match: [{uri: {exact: /nosubset}}]
    route: [{destination: {host: reviews, subset: v9}}]
  - match: [{uri: {exact: /nohost}}]
    route: [{destination: {host: nowhere.example.com}}]
  - route: [{destination: {host: reviews}}]"))
    .await;
    let r = mesh.get("client", H, 9080, "/nosubset", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (503, "no healthy upstream"));
    let r = mesh.get("client", H, 9080, "/nohost", &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("nowhere.example.com"), "{}", r.body);
    let m = mesh.metrics("client");
    assert!(m.contains("response_flags=\"UH\""), "{m}");
    assert!(m.contains("response_flags=\"NC\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_are_routed_and_reach_the_server_over_http2() {
    let mesh = reviews(&vs(
        "  - route: [{destination: {host: reviews, subset: v2}}]",
    ))
    .await;
    let mut c = mesh.h2_client("client", H, 9080).await;
    for _ in 0..5 {
        let r = c.send(request(Method::GET, H, 9080, "/h2", &[], "")).await;
        assert_eq!(
            (r.status, r.pod().as_str()),
            (200, "reviews-v2"),
            "{}",
            r.body
        );
        assert_eq!(r.json()["protocol"], "HTTP/2.0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_labels_route_by_who_calls() {
    let mut mesh = Builder::new()
        .namespace("mesh", &[("istio-injection", "enabled")])
        .service("mesh", "reviews", &[(9080, "http")], &[("app", "reviews")])
        .pod("mesh", "client", &[("app", "client")])
        .pod("mesh", "tester", &[("app", "tester")])
        .pod(
            "mesh",
            "reviews-v1",
            &[("app", "reviews"), ("version", "v1")],
        )
        .pod(
            "mesh",
            "reviews-v2",
            &[("app", "reviews"), ("version", "v2")],
        )
        .yaml(&vs("  - match: [{sourceLabels: {app: tester}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]"))
        .start()
        .await;
    mesh.echo("reviews-v1", &[9080]).await;
    mesh.echo("reviews-v2", &[9080]).await;
    mesh.sidecars(&["reviews-v1", "reviews-v2", "client", "tester"])
        .await;
    assert_eq!(
        mesh.get("tester", H, 9080, "/", &[]).await.pod(),
        "reviews-v2"
    );
    assert_eq!(
        mesh.get("client", H, 9080, "/", &[]).await.pod(),
        "reviews-v1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_change_applies_to_the_next_request_on_the_same_connection() {
    let mesh = reviews(&vs(
        "  - route: [{destination: {host: reviews, subset: v1}}]",
    ))
    .await;
    let mut c = mesh.client("client", H, 9080).await;
    let r = c.send(request(Method::GET, H, 9080, "/", &[], "")).await;
    assert_eq!(r.pod(), "reviews-v1");
    mesh.apply(&vs(
        "  - route: [{destination: {host: reviews, subset: v3}}]",
    ))
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = c.send(request(Method::GET, H, 9080, "/", &[], "")).await;
        if r.pod() == "reviews-v3" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new route never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_reach_the_server_whole() {
    let mut mesh = reviews_bare(&vs(
        "  - route: [{destination: {host: reviews, subset: v1}}]",
    ))
    .await;
    let rec = mesh.app("reviews-v1", 9080, 200, Duration::ZERO).await;
    mesh.sidecars(&["reviews-v1", "client"]).await;
    // One small (buffered for replay), one large (streamed).
    for size in [1000usize, 300_000] {
        let body = "x".repeat(size);
        let req = http::Request::builder()
            .method(Method::PUT)
            .uri("/upload")
            .header("host", "reviews:9080")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let r = mesh.send("client", H, 9080, req).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let got: Vec<usize> = seen(&rec).iter().map(|s| s.body).collect();
    assert_eq!(got, vec![1000, 300_000]);
}
