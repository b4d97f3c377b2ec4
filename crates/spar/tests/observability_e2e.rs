//! End to end, as root: `spar up --observability` runs Istio's Prometheus addon in the box.
//! Prometheus (Debian's package, in a pod of its own) scrapes sidecars on `:15020/stats/prometheus`
//! (merged with the application's metrics, as Istio's injector arranges) and node proxies on
//! their node's `:15020/metrics`; its HTTP API answers with Istio's metric and label names
//! after traffic. The echo workload's request log and TCP banner are checked on the way.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{Down, repo, require_root, spar, text};

const PROMETHEUS: &str = "10.254.0.2:9090";

/// The result vector of an instant query, through Prometheus's HTTP API from the host.
fn query(q: &str) -> Vec<serde_json::Value> {
    let Ok(mut s) = std::net::TcpStream::connect(PROMETHEUS) else {
        return Vec::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if write!(
        s,
        "GET /api/v1/query?query={q} HTTP/1.0\r\nHost: prometheus\r\n\r\n"
    )
    .is_err()
    {
        return Vec::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("{}");
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["data"]["result"].as_array().cloned())
        .unwrap_or_default()
}

/// Wait (bounded) until `q` has a series whose labels include all of `want`.
fn series(q: &str, want: &[(&str, &str)], within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let result = query(q);
        if let Some(s) = result
            .iter()
            .find(|s| want.iter().all(|(k, v)| s["metric"][k].as_str() == Some(v)))
        {
            return s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {q} series with {want:?} after {within:?}; Prometheus has: {result:#?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
#[ignore = "needs root, network namespaces and Debian's prometheus: run as root with --include-ignored (.ci/run does)"]
fn prometheus_scrapes_istios_ports_and_names() {
    require_root("prometheus_scrapes_istios_ports_and_names");
    assert!(
        std::process::Command::new("sh")
            .args(["-c", "command -v prometheus"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "this test needs Debian's prometheus package (scripts/install-deps installs it)"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path();
    let _guard = Down(state.to_path_buf());
    let example = repo("examples/observability");
    let out = spar(
        state,
        &[
            "up",
            "-d",
            "--observability",
            example.to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let status = text(&out);
    assert!(
        status.contains("PROMETHEUS  http://10.254.0.2:9090"),
        "{status}"
    );
    assert!(
        status.contains(":15020/metrics"),
        "node proxies' addresses: {status}"
    );

    // HTTP through two sidecars, reported by the destination with Istio's labels.
    let within = Duration::from_secs(60);
    let s = series(
        "istio_requests_total",
        &[
            ("reporter", "destination"),
            ("namespace", "shop"),
            ("source_workload", "loadgen"),
            ("source_canonical_service", "loadgen"),
            ("destination_workload", "web"),
            ("destination_canonical_service", "web"),
            ("destination_canonical_revision", "v1"),
            ("destination_service", "web.shop.svc.cluster.local"),
            ("destination_service_name", "web"),
            ("destination_service_namespace", "shop"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/shop/sa/loadgen",
            ),
            (
                "destination_principal",
                "spiffe://cluster.local/ns/shop/sa/web",
            ),
            ("request_protocol", "http"),
            ("response_code", "200"),
            ("response_flags", "-"),
            ("connection_security_policy", "mutual_tls"),
            ("source_cluster", "Kubernetes"),
            ("destination_cluster", "Kubernetes"),
            ("app", "web"),
        ],
        within,
    );
    assert!(
        s["metric"].get("grpc_response_status").is_none()
            || s["metric"]["grpc_response_status"] == "",
        "{s}"
    );
    series(
        "istio_requests_total",
        &[("reporter", "source"), ("pod", "loadgen-0")],
        within,
    );
    series(
        "istio_request_duration_milliseconds_bucket",
        &[("reporter", "destination"), ("destination_workload", "web")],
        within,
    );
    // The application's own metrics, merged into its sidecar's endpoint.
    series(
        "spar_echo_requests_total",
        &[("pod", "web-0"), ("namespace", "shop")],
        within,
    );
    // TCP between ambient pods, reported by the node proxies (scraped as ztunnel pods).
    let tcp = series(
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("destination_workload", "echo"),
            ("source_workload", "tcp-client"),
            ("request_protocol", "tcp"),
            ("connection_security_policy", "mutual_tls"),
            ("app", "ztunnel"),
        ],
        within,
    );
    assert!(
        tcp["metric"]["pod"]
            .as_str()
            .is_some_and(|p| p.starts_with("ztunnel-node-")),
        "{tcp}"
    );
    // Every target Prometheus found is up: pods that asked, sidecars, node proxies.
    let down = query("up==0");
    assert!(down.is_empty(), "targets down: {down:#?}");
    let up = query("up");
    assert!(up.len() >= 4, "web, loadgen, two node proxies: {up:#?}");

    // The echo's request log (`spar logs`) and its TCP banner.
    let logs = text(&spar(state, &["logs", "-n", "shop", "deploy/web"]));
    assert!(
        logs.lines()
            .any(|l| l.starts_with("echo: GET /hello host=web:9080 source=")
                && l.ends_with("x-request-id=loadgen")),
        "{logs}"
    );
    let logs = text(&spar(state, &["logs", "-n", "tcp", "deploy/tcp-client"]));
    assert!(logs.contains("hello v1 world"), "{logs}");
}
