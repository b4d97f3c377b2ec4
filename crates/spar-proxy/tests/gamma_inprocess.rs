//! In process, no root: Gateway API routes for the mesh (GAMMA) in sidecar mode. An HTTPRoute
//! whose parentRef is the `reviews` Service routes its traffic: to other Services by backendRef
//! and weight, by header match, with header modifiers, redirects and rewrites; a backendRef to
//! a Service that does not exist answers 500.

mod harness;

use harness::{Mesh, VERSION_SERVICES, request, reviews, spread};
use http::Method;

const H: &str = "reviews";

fn route(rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: reviews, namespace: mesh}}
spec:
  parentRefs: [{{group: '', kind: Service, name: reviews, port: 9080}}]
  rules:
{rules}"
    )
}

async fn mesh() -> Mesh {
    reviews(VERSION_SERVICES).await
}

fn share(pods: &std::collections::BTreeMap<String, usize>, version: &str) -> usize {
    pods.iter()
        .filter(|(p, _)| p.contains(version))
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_httproute_on_the_service_routes_by_backend_and_header() {
    let mesh = mesh().await;
    let (pods, _) = spread(&mesh, "client", H, 9080, "/", &[], 30).await;
    assert!(pods.len() >= 2, "without a route: every version: {pods:?}");
    mesh.apply(&route(
        "  - matches: [{headers: [{name: end-user, value: jason}]}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - backendRefs: [{name: reviews-v1, port: 9080}]
",
    ))
    .await;
    let (pods, _) = spread(&mesh, "client", H, 9080, "/", &[], 20).await;
    assert_eq!(
        share(&pods, "v1"),
        20,
        "one backend: reviews-v1 only: {pods:?}"
    );
    let (pods, _) = spread(&mesh, "client", H, 9080, "/", &[("end-user", "jason")], 10).await;
    assert_eq!(share(&pods, "v2"), 10, "jason to v2: {pods:?}");
    // Traffic shifting by weight, 50/50.
    mesh.apply(&route(
        "  - backendRefs: [{name: reviews-v1, port: 9080, weight: 50}, {name: reviews-v3, port: 9080, weight: 50}]
",
    ))
    .await;
    let (pods, _) = spread(&mesh, "client", H, 9080, "/", &[], 100).await;
    let (v1, v3) = (share(&pods, "v1"), share(&pods, "v3"));
    assert_eq!(v1 + v3, 100, "{pods:?}");
    assert!((30..=70).contains(&v1), "about half each: {pods:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_a_missing_backend() {
    let mesh = mesh().await;
    mesh.apply(&route(
        "  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-route, value: gamma}]}
    backendRefs: [{name: reviews-v1, port: 9080}]
  - matches: [{path: {type: Exact, value: /gone}}]
    backendRefs: [{name: no-such-service, port: 9080}]
  - backendRefs: [{name: reviews-v1, port: 9080}]
",
    ))
    .await;
    let r = mesh
        .send(
            "client",
            H,
            9080,
            request(Method::GET, H, 9080, "/old", &[], ""),
        )
        .await;
    assert_eq!(r.status, 301);
    assert!(
        r.header("location").is_some_and(|l| l.ends_with("/new")),
        "{:?}",
        r.header("location")
    );
    let r = mesh.get("client", H, 9080, "/api/items", &[]).await;
    assert_eq!(r.status, 200);
    let seen = r.json();
    assert_eq!(seen["path"], "/v2/items", "the prefix rewritten: {seen}");
    assert_eq!(seen["headers"]["x-route"], "gamma", "{seen}");
    assert_eq!(
        mesh.get("client", H, 9080, "/gone", &[]).await.status,
        500,
        "a backendRef to a missing Service answers 500"
    );
}
