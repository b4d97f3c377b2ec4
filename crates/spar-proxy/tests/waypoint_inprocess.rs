//! In process, no root: ambient L7 through a waypoint. Node proxies send the traffic of a
//! namespace labelled `istio.io/use-waypoint` to the waypoint over HBONE; the waypoint
//! routes it (VirtualService, DestinationRule), authorizes it (`targetRefs` to its Gateway
//! or to a Service: 403 `RBAC: access denied`), counts it with `reporter="waypoint"`, and
//! passes TCP through; a Service labelled `istio.io/use-waypoint: none` skips it.

mod harness;

use std::time::Duration;

use harness::{Builder, Mesh, SUBSETS, VERSION_SERVICES, request, spread};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const H: &str = "reviews";

/// Namespace `mesh` (ambient, using waypoint `waypoint`): `client` on node-1, reviews v1
/// and v2 (HTTP on 9080, TCP echo on 9090) on node-2, the waypoint's pod on node-3, and
/// `direct` (a Service that opts out) backed by reviews-v1.
async fn ambient_with_waypoint(extra: &str) -> Mesh {
    let mut b = Builder::new()
        .namespace(
            "mesh",
            &[
                ("istio.io/dataplane-mode", "ambient"),
                ("istio.io/use-waypoint", "waypoint"),
            ],
        )
        .yaml(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: mesh}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
",
        )
        .service(
            "mesh",
            "waypoint",
            &[(15008, "mesh")],
            &[("gateway.networking.k8s.io/gateway-name", "waypoint")],
        )
        .service(
            "mesh",
            "reviews",
            &[(9080, "http"), (9090, "tcp-echo")],
            &[("app", "reviews")],
        )
        .pod_on(
            "mesh",
            "client",
            "node-1",
            &[("app", "client"), ("sa", "client")],
        )
        .pod_on(
            "mesh",
            "intruder",
            "node-1",
            &[("app", "intruder"), ("sa", "intruder")],
        )
        .pod_on(
            "mesh",
            "waypoint-0",
            "node-3",
            &[
                ("gateway.networking.k8s.io/gateway-name", "waypoint"),
                ("istio.io/dataplane-mode", "none"),
                ("sa", "waypoint"),
            ],
        );
    for v in ["v1", "v2"] {
        b = b.pod_on(
            "mesh",
            &format!("reviews-{v}"),
            "node-2",
            &[("app", "reviews"), ("version", v), ("sa", "reviews")],
        );
    }
    b = b.yaml(
        "apiVersion: v1
kind: Service
metadata: {name: direct, namespace: mesh, labels: {istio.io/use-waypoint: none}}
spec:
  clusterIP: 10.96.250.250
  selector: {version: v1}
  ports: [{name: http, port: 9080}]
",
    );
    if !extra.is_empty() {
        b = b.yaml(extra);
    }
    let mut mesh = b.start().await;
    for v in ["v1", "v2"] {
        let pod = format!("reviews-{v}");
        mesh.echo(&pod, &[9080]).await;
        mesh.tcp_echo(&pod, 9090).await;
    }
    mesh.node_proxy("node-1").await;
    mesh.node_proxy("node-2").await;
    mesh.waypoint("waypoint-0", "waypoint").await;
    for (node, pods) in [
        ("node-1", &["client", "intruder"][..]),
        ("node-2", &["reviews-v1", "reviews-v2"][..]),
    ] {
        let proxy = mesh.nodes[node].proxy.clone();
        for p in pods {
            let spec = mesh.pod(p).clone();
            mesh.wait_enrolled(&proxy, &spec).await;
        }
    }
    mesh
}

fn waypoint_requests(mesh: &Mesh) -> u64 {
    mesh.metrics("waypoint-0")
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && l.contains("reporter=\"waypoint\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_through_the_waypoint_is_routed_and_counted() {
    let mesh = ambient_with_waypoint("").await;
    let (pods, statuses) = spread(&mesh, "client", H, 9080, "/", &[], 20).await;
    assert_eq!(statuses.get(&200), Some(&20), "{statuses:?}");
    assert_eq!(pods.len(), 2, "spread over v1 and v2 per request: {pods:?}");
    assert_eq!(
        waypoint_requests(&mesh),
        20,
        "every request went through the waypoint"
    );
    let m = mesh.metrics("waypoint-0");
    assert!(
        m.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("source_workload=\"client\"")
            && l.contains("destination_service=\"reviews.mesh.svc.cluster.local\"")),
        "the source is the original client: {m}"
    );
    // Istio's request routing task: all to v1, then jason to v2.
    mesh.apply(&format!(
        "{SUBSETS}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: mesh}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
"
    ))
    .await;
    let (pods, _) = spread(&mesh, "client", H, 9080, "/", &[], 10).await;
    assert_eq!(
        pods.get("reviews-v1-0").or(pods.get("reviews-v1")),
        Some(&10),
        "{pods:?}"
    );
    let (pods, _) = spread(&mesh, "client", H, 9080, "/", &[("end-user", "jason")], 10).await;
    assert_eq!(
        pods.get("reviews-v2-0").or(pods.get("reviews-v2")),
        Some(&10),
        "{pods:?}"
    );
    // A Service that opts out goes straight to its endpoint.
    let before = waypoint_requests(&mesh);
    let r = mesh.get("client", "10.96.250.250", 9080, "/", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        waypoint_requests(&mesh),
        before,
        "use-waypoint: none skips the waypoint"
    );
}

fn ap(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: mesh}}
spec: {spec}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waypoint_enforces_policies_that_target_it() {
    let mesh = ambient_with_waypoint("").await;
    assert_eq!(mesh.get("client", H, 9080, "/", &[]).await.status, 200);
    // Istio's L7 authorization task at a waypoint: GET allowed for the client, nothing else.
    mesh.apply(&ap(
        "reviews-viewer",
        "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], action: ALLOW, rules: [{from: [{source: {principals: [cluster.local/ns/mesh/sa/client]}}], to: [{operation: {methods: [GET]}}]}]}",
    ))
    .await;
    let mut c = mesh.client("client", H, 9080).await;
    assert_eq!(
        c.send(request(Method::GET, H, 9080, "/", &[], ""))
            .await
            .status,
        200
    );
    let r = c.send(request(Method::DELETE, H, 9080, "/", &[], "")).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "RBAC: access denied"),
        "the next request on the same connection"
    );
    let r = mesh.get("intruder", H, 9080, "/", &[]).await;
    assert_eq!(
        r.status, 403,
        "another identity: the client's own, not the node proxy's"
    );
    assert!(
        mesh.metrics("waypoint-0")
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"waypoint\"")
                && l.contains("response_code=\"403\"")),
        "denials counted at the waypoint"
    );
    // A policy targeting another Service does not reach reviews; one targeting reviews does.
    mesh.delete(&ap("reviews-viewer", "{}")).await;
    mesh.apply(&ap(
        "deny-other",
        "{targetRefs: [{kind: Service, group: '', name: ratings}], action: DENY, rules: [{}]}",
    ))
    .await;
    assert_eq!(mesh.get("client", H, 9080, "/", &[]).await.status, 200);
    mesh.apply(&ap(
        "deny-reviews",
        "{targetRefs: [{kind: Service, group: '', name: reviews}], action: DENY, rules: [{to: [{operation: {paths: [/admin*]}}]}]}",
    ))
    .await;
    assert_eq!(mesh.get("client", H, 9080, "/ok", &[]).await.status, 200);
    assert_eq!(
        mesh.get("client", H, 9080, "/admin/x", &[]).await.status,
        403
    );
    // Selector policies are for sidecars and node proxies, not for the waypoint.
    mesh.apply(&ap(
        "selector-deny",
        "{selector: {matchLabels: {gateway.networking.k8s.io/gateway-name: waypoint}}, action: DENY, rules: [{}]}",
    ))
    .await;
    assert_eq!(mesh.get("client", H, 9080, "/ok", &[]).await.status, 200);
}

async fn echo(mesh: &Mesh) -> bool {
    let Ok(mut s) = mesh.try_connect("client", H, 9090).await else {
        return false;
    };
    if s.write_all(b"ping").await.is_err() || s.shutdown().await.is_err() {
        return false;
    }
    let mut back = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut back)).await;
    matches!(r, Ok(Ok(_))) && back == b"ping"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_passes_through_the_waypoint_and_l4_policy_applies_there() {
    let mesh = ambient_with_waypoint("").await;
    assert!(echo(&mesh).await, "TCP through the waypoint");
    mesh.apply(&ap(
        "tcp-deny",
        "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], action: DENY, rules: [{to: [{operation: {ports: ['9090']}}]}]}",
    ))
    .await;
    assert!(!echo(&mesh).await, "denied at the waypoint");
    let m = mesh.metrics("waypoint-0");
    assert!(
        m.lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"waypoint\"")),
        "{m}"
    );
}

/// Tracing at the waypoint: a request the caller sampled leaves a span there, a child of
/// the caller's, exported to the mesh config's OpenTelemetry collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waypoint_reports_a_span_per_request() {
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = collector.local_addr().expect("addr").port();
    let store = spar_echo::otlp::Store::default();
    let _task = spar_echo::otlp::serve_grpc(collector, store.clone());
    let mesh = ambient_with_waypoint(&format!(
        "apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    extensionProviders:
    - name: otel
      opentelemetry: {{service: \"127.0.0.1\", port: {port}}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing: [{{providers: [{{name: otel}}], randomSamplingPercentage: 0}}]
"
    ))
    .await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    let tp = format!("00-{trace}-{parent}-01");
    let r = mesh
        .get("client", H, 9080, "/", &[("traceparent", tp.as_str())])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let span = loop {
        if let Some(s) = store.spans().into_iter().find(|s| s.trace_id == trace) {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no span reached the collector"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(span.kind, "SERVER");
    assert_eq!(span.parent_span_id, parent, "a child of the caller's span");
    assert_eq!(span.name, "reviews.mesh.svc.cluster.local:9080/*");
    assert!(
        span.attributes["upstream_cluster"].starts_with("outbound|9080||reviews."),
        "{span:?}"
    );
    // The server sees the waypoint's span as its parent.
    let seen = r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(seen.contains(&span.span_id), "{seen} vs {span:?}");
}

/// Istio's "Configure waypoint proxies": an HTTPRoute whose `parentRefs` name the waypoint
/// Gateway routes every Service that uses the waypoint; deleted, the Service spreads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_httproute_on_the_waypoint_gateway_routes_its_services() {
    let mesh = ambient_with_waypoint(VERSION_SERVICES).await;
    let route = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews-at-the-waypoint, namespace: mesh}
spec:
  parentRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  hostnames: [reviews.mesh.svc.cluster.local]
  rules:
  - matches: [{headers: [{name: end-user, value: jason}]}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - backendRefs: [{name: reviews-v1, port: 9080}]
";
    mesh.apply(route).await;
    let v = |pods: &std::collections::BTreeMap<String, usize>, version: &str| -> usize {
        pods.iter()
            .filter(|(p, _)| p.contains(version))
            .map(|(_, n)| n)
            .sum()
    };
    let before = waypoint_requests(&mesh);
    let (pods, _) = spread(&mesh, "client", H, 9080, "/", &[], 10).await;
    assert_eq!(v(&pods, "v1"), 10, "all to v1: {pods:?}");
    let (pods, _) = spread(&mesh, "client", H, 9080, "/", &[("end-user", "jason")], 10).await;
    assert_eq!(v(&pods, "v2"), 10, "jason to v2: {pods:?}");
    assert_eq!(waypoint_requests(&mesh), before + 20, "at the waypoint");
    mesh.delete(route).await;
    let (pods, _) = spread(&mesh, "client", H, 9080, "/", &[], 20).await;
    assert!(
        v(&pods, "v1") > 0 && v(&pods, "v2") > 0,
        "without the route, both versions again: {pods:?}"
    );
}
