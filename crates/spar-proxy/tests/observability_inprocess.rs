//! In process, no root: a sidecar serves Istio's ports inside its pod — `:15020` with the
//! proxy's metrics merged with the application's (Istio's metrics merging), `:15021`
//! readiness, `127.0.0.1:15000` config dump — with Istio's metric and label names.

mod harness;

use std::net::SocketAddr;

use harness::{eventually, reviews_bare};
use spar_proxy::admin::AppMetrics;

/// GET `path` from the pod `ip`'s `port`, as Prometheus or a probe would: (status line, body).
async fn get(mesh: &harness::Mesh, ip: std::net::IpAddr, port: u16, path: &str) -> String {
    let real: SocketAddr = mesh
        .net
        .listening(ip, port)
        .unwrap_or_else(|| panic!("nothing listens on the pod's :{port}"));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(real).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("send");
    let mut out = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_to_string(&mut out),
    )
    .await
    .expect("an answer within 10 s")
    .expect("read");
    out
}

fn value(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| labels.iter().all(|w| l.contains(w)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_serves_istios_ports_with_merged_app_metrics() {
    let mut mesh = reviews_bare("").await;
    let server = mesh.pod("reviews-v1").clone();
    // The application: the echo on 9080, its own metrics on 9100 (`prometheus.io/port`).
    mesh.echo("reviews-v1", &[9080]).await;
    let l = tokio::net::TcpListener::bind(SocketAddr::new(server.ip, 0))
        .await
        .expect("bind");
    mesh.net
        .serve(server.ip, 9100, l.local_addr().expect("addr"));
    let info = spar_echo::PodInfo {
        pod: "reviews-v1".into(),
        version: "v1".into(),
        metrics: true,
        ..Default::default()
    };
    let _app = spar_echo::server::serve_http(l, info);
    mesh.sidecar_with_app_metrics(
        "reviews-v1",
        Some(AppMetrics {
            port: 9100,
            path: "/metrics".into(),
        }),
    )
    .await;
    mesh.sidecar("client").await;
    for _ in 0..3 {
        let r = mesh.get("client", "reviews", 9080, "/", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    // :15020/stats/prometheus: the proxy's metrics, then the application's.
    let stats = get(&mesh, server.ip, 15020, "/stats/prometheus").await;
    assert!(stats.starts_with("HTTP/1.1 200"), "{stats}");
    assert!(
        stats.contains("content-type: text/plain; version=0.0.4"),
        "merged metrics are Prometheus text: {stats}"
    );
    let dest = [
        "reporter=\"destination\"",
        "source_workload=\"client\"",
        "source_principal=\"spiffe://cluster.local/ns/mesh/sa/client\"",
        "destination_service=\"reviews.mesh.svc.cluster.local\"",
        "destination_service_name=\"reviews\"",
        "destination_service_namespace=\"mesh\"",
        "destination_canonical_service=\"reviews\"",
        "destination_canonical_revision=\"v1\"",
        "source_cluster=\"Kubernetes\"",
        "destination_cluster=\"Kubernetes\"",
        "request_protocol=\"http\"",
        "response_code=\"200\"",
        "grpc_response_status=\"\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    assert_eq!(
        value(&stats, "istio_requests_total", &dest),
        Some(3.0),
        "{stats}"
    );
    assert!(
        stats.contains("spar_echo_requests_total{pod=\"reviews-v1\",version=\"v1\"}"),
        "the application's own metrics are merged in: {stats}"
    );
    assert!(!stats.contains("# EOF"), "one document: {stats}");
    // The same on /metrics; :15021 answers readiness only; 15000 dumps the config.
    let ready = get(&mesh, server.ip, 15021, "/healthz/ready").await;
    assert!(
        ready.starts_with("HTTP/1.1 200") && ready.ends_with("ready\n"),
        "{ready}"
    );
    let no = get(&mesh, server.ip, 15021, "/stats/prometheus").await;
    assert!(no.starts_with("HTTP/1.1 404"), "{no}");
    let dump = get(&mesh, server.ip, 15000, "/config_dump").await;
    assert!(
        dump.starts_with("HTTP/1.1 200") && dump.contains("\"workloads\""),
        "{dump}"
    );
    let no = get(&mesh, server.ip, 15020, "/config_dump").await;
    assert!(
        no.starts_with("HTTP/1.1 404"),
        "the config stays off the pod IP: {no}"
    );

    // Without merging (the client): OpenMetrics as the proxy encodes it, source-side labels.
    let client = mesh.pod("client").clone();
    let stats = get(&mesh, client.ip, 15020, "/stats/prometheus").await;
    assert!(
        stats.contains("content-type: application/openmetrics-text"),
        "{stats}"
    );
    assert_eq!(
        value(
            &stats,
            "istio_requests_total",
            &[
                "reporter=\"source\"",
                "destination_canonical_service=\"reviews\""
            ]
        ),
        Some(3.0),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_that_does_not_answer_costs_only_its_own_metrics() {
    let mut mesh = reviews_bare("").await;
    let server = mesh.pod("reviews-v1").clone();
    mesh.echo("reviews-v1", &[9080]).await;
    // Nothing listens on 9101.
    mesh.sidecar_with_app_metrics(
        "reviews-v1",
        Some(AppMetrics {
            port: 9101,
            path: "/metrics".into(),
        }),
    )
    .await;
    mesh.sidecar("client").await;
    let r = mesh.get("client", "reviews", 9080, "/", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ip = server.ip;
    eventually(
        "the destination's request is counted",
        std::time::Duration::from_secs(5),
        || {
            let mesh = &mesh;
            async move {
                let stats = get(mesh, ip, 15020, "/stats/prometheus").await;
                stats.starts_with("HTTP/1.1 200")
                    && value(
                        &stats,
                        "istio_requests_total",
                        &["reporter=\"destination\""],
                    ) == Some(1.0)
                    && stats
                        .contains("# the application's metrics at :9101/metrics could not be read")
            }
        },
    )
    .await;
}
