//! In process, no root: one request through two sidecars leaves two spans with a
//! parent/child link at a real collector (`spar echo otlp`: OTLP gRPC, OTLP HTTP, Zipkin),
//! the trace context travels as W3C and B3, sampling follows Istio's Telemetry API.

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use harness::{Builder, Mesh, eventually};
use spar_echo::otlp::{Store, StoredSpan};

const MESH_CONFIG: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: otel
      opentelemetry: {service: otel.istio-system.svc.cluster.local, port: 4317}
    - name: otel-http
      opentelemetry:
        service: otel.istio-system.svc.cluster.local
        port: 4318
        http: {path: /v1/traces}
    - name: zipkin
      zipkin: {service: otel.istio-system.svc.cluster.local, port: 4318}
";

fn telemetry(provider: &str, percent: f64) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing:
  - providers: [{{name: {provider}}}]
    randomSamplingPercentage: {percent}
    customTags:
      team: {{literal: {{value: reviews-team}}}}
      user: {{header: {{name: end-user, defaultValue: anonymous}}}}
"
    )
}

/// client -> reviews (both with sidecars) and the collector pod outside the mesh.
async fn mesh(provider: &str, percent: f64) -> (Mesh, Store) {
    let mut mesh = Builder::new()
        .namespace("mesh", &[("istio-injection", "enabled")])
        .service("mesh", "reviews", &[(9080, "http")], &[("app", "reviews")])
        .service(
            "istio-system",
            "otel",
            &[(4317, "grpc-otlp"), (4318, "http-otlp")],
            &[("app", "otel")],
        )
        .pod("mesh", "client", &[("app", "client"), ("sa", "client")])
        .pod(
            "mesh",
            "reviews-v1",
            &[("app", "reviews"), ("version", "v1"), ("sa", "reviews")],
        )
        .pod("istio-system", "otel", &[("app", "otel")])
        .yaml(MESH_CONFIG)
        .yaml(&telemetry(provider, percent))
        .start()
        .await;
    let store = Store::default();
    let ip = mesh.pod("otel").ip;
    for (port, grpc) in [(4317, true), (4318, false)] {
        let l = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .expect("bind");
        mesh.net.serve(ip, port, l.local_addr().expect("addr"));
        let _task = if grpc {
            spar_echo::otlp::serve_grpc(l, store.clone())
        } else {
            spar_echo::otlp::serve_http(l, store.clone())
        };
    }
    mesh.echo("reviews-v1", &[9080]).await;
    mesh.sidecars(&["reviews-v1", "client"]).await;
    (mesh, store)
}

async fn spans_of(store: &Store, trace: &str, n: usize) -> Vec<StoredSpan> {
    let t = trace.to_string();
    eventually(
        &format!("{n} spans of trace {trace} at the collector"),
        Duration::from_secs(10),
        || {
            let (store, t) = (store.clone(), t.clone());
            async move { store.spans().iter().filter(|s| s.trace_id == t).count() >= n }
        },
    )
    .await;
    store
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == trace)
        .collect()
}

/// The trace id the application saw (the server echoes the request headers).
fn seen_traceparent(r: &harness::Reply) -> (String, String) {
    let tp = r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent reached the app: {}", r.body))
        .to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    (parts[1].to_string(), parts[2].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_two_sidecars_parent_and_child_spans_over_each_protocol() {
    for (provider, via) in [
        ("otel", "otlp-grpc"),
        ("otel-http", "otlp-http"),
        ("zipkin", "zipkin"),
    ] {
        let (mesh, store) = mesh(provider, 100.0).await;
        let r = mesh
            .get(
                "client",
                "reviews",
                9080,
                "/reviews/1",
                &[("end-user", "jason")],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let (trace, app_parent) = seen_traceparent(&r);
        let spans = spans_of(&store, &trace, 2).await;
        assert_eq!(spans.len(), 2, "{spans:#?}");
        let client = spans
            .iter()
            .find(|s| s.kind == "CLIENT")
            .expect("client span");
        let server = spans
            .iter()
            .find(|s| s.kind == "SERVER")
            .expect("server span");
        assert_eq!(
            client.parent_span_id, "",
            "the client's span starts the trace"
        );
        assert_eq!(
            server.parent_span_id, client.span_id,
            "the server's span is the client's child"
        );
        assert_eq!(
            app_parent, server.span_id,
            "the application's calls descend from the server span"
        );
        for s in [client, server] {
            assert_eq!(s.via, via);
            assert_eq!(s.name, "reviews.mesh.svc.cluster.local:9080/*");
            assert_eq!(s.attributes["http.method"], "GET");
            assert_eq!(s.attributes["http.status_code"], "200");
            assert_eq!(s.attributes["team"], "reviews-team");
            assert_eq!(s.attributes["user"], "jason");
            assert!(s.attributes.contains_key("guid:x-request-id"), "{s:?}");
        }
        assert_eq!(client.service, "client.mesh");
        assert_eq!(server.service, "reviews.mesh");
        assert!(client.attributes["upstream_cluster"].starts_with("outbound|9080||reviews."));
        assert!(server.attributes["upstream_cluster"].starts_with("inbound|9080||reviews."));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_context_and_sampling_decision_are_kept_in_w3c_and_b3() {
    // 0%: nothing is sampled here, so only a caller's decision makes spans.
    let (mesh, store) = mesh("otel", 0.0).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    // W3C, sampled by the caller.
    let tp = format!("00-{trace}-{parent}-01");
    let r = mesh
        .get(
            "client",
            "reviews",
            9080,
            "/",
            &[("traceparent", tp.as_str()), ("tracestate", "v=1")],
        )
        .await;
    assert_eq!(r.status, 200);
    let spans = spans_of(&store, trace, 2).await;
    let client = spans.iter().find(|s| s.kind == "CLIENT").expect("client");
    assert_eq!(
        client.parent_span_id, parent,
        "a child of the caller's span"
    );
    assert_eq!(r.json()["headers"]["tracestate"], "v=1");
    // B3 multi, sampled: the app sees B3 multi (and W3C) with the server span as parent.
    let b3_trace = "a3ce929d0e0e4736a3ce929d0e0e4736";
    let r = mesh
        .get(
            "client",
            "reviews",
            9080,
            "/",
            &[
                ("x-b3-traceid", b3_trace),
                ("x-b3-spanid", parent),
                ("x-b3-sampled", "1"),
            ],
        )
        .await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-b3-traceid"], b3_trace, "{}", r.body);
    assert_eq!(h["x-b3-sampled"], "1");
    let spans = spans_of(&store, b3_trace, 2).await;
    let server = spans.iter().find(|s| s.kind == "SERVER").expect("server");
    assert_eq!(h["x-b3-spanid"], server.span_id.as_str());
    assert_eq!(h["x-b3-parentspanid"], server.parent_span_id.as_str());
    // B3 single.
    let single = format!("{b3_trace}-{parent}-1");
    let r = mesh
        .get("client", "reviews", 9080, "/", &[("b3", single.as_str())])
        .await;
    let b3 = r.json()["headers"]["b3"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(b3.starts_with(b3_trace) && b3.contains("-1-"), "{b3}");
    // Not sampled by the caller, nor here: the context still travels, no span is made.
    let untraced = "11111111111111111111111111111111";
    let tp = format!("00-{untraced}-{parent}-00");
    for _ in 0..5 {
        let r = mesh
            .get(
                "client",
                "reviews",
                9080,
                "/",
                &[("traceparent", tp.as_str())],
            )
            .await;
        let (t, _) = seen_traceparent(&r);
        assert_eq!(t, untraced);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        store.spans().iter().all(|s| s.trace_id != untraced),
        "an unsampled trace is not reported"
    );
    // No context at 0%: a new trace, not reported.
    let before = store.spans().len();
    for _ in 0..10 {
        let r = mesh.get("client", "reviews", 9080, "/", &[]).await;
        assert!(seen_traceparent(&r).0.len() == 32);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(store.spans().len(), before);
}
