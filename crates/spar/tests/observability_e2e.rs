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
    // Every target is scraped and up: pods that asked, sidecars, both node proxies (each
    // target's first scrape comes at its own offset within the 5 s interval).
    for pod in ["web-0", "loadgen-0", "ztunnel-node-1", "ztunnel-node-2"] {
        series("up", &[("pod", pod)], within);
    }
    let down = query("up==0");
    assert!(down.is_empty(), "targets down: {down:#?}");

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

    readiness_on_istios_ports(state);
    connection_ids_match_across_node_proxies(state);
    traces_reach_the_collector(state);
    proxy_config_and_analyze(state);
}

/// Readiness as kubelet probes and load balancers ask for it, from a pod outside the mesh
/// (Prometheus'): each node proxy's `:15021` on its node's address, a sidecar's `:15021` on
/// its pod IP (outside capture, as in Istio).
fn readiness_on_istios_ports(state: &std::path::Path) {
    let st = common::state_json(state);
    let mut urls: Vec<String> = st["plan"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            format!(
                "http://{}:15021/healthz/ready",
                n["gateway"].as_str().unwrap_or("")
            )
        })
        .collect();
    let web = st["plan"]["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["name"] == "web-0")
        .and_then(|p| p["ip"].as_str())
        .expect("web-0")
        .to_string();
    urls.push(format!("http://{web}:15021/healthz/ready"));
    for url in urls {
        let out = common::exec(
            state,
            "istio-system",
            "deploy/prometheus",
            &["spar", "echo", "client", &url, "--count", "1", "--json"],
        );
        let s = common::summary(&out);
        assert_eq!(s["by_status"]["200"], 1, "{url}: {s}");
    }
}

/// Tracing in the box: the loadgen's request to web leaves a CLIENT span (loadgen's sidecar)
/// and its SERVER child (web's sidecar) at the OTLP collector, over real processes.
fn traces_reach_the_collector(state: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = common::exec(
            state,
            "istio-system",
            "deploy/otel-collector",
            &[
                "spar",
                "echo",
                "tcp",
                "127.0.0.1:4318",
                "--message",
                "GET /api/spans HTTP/1.0\r\n\r\n",
            ],
        );
        let body = text(&out);
        let json = body.split("\r\n\r\n").nth(1).unwrap_or("[]");
        let spans: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
        let linked = spans.iter().any(|server| {
            server["kind"] == "SERVER"
                && server["service"] == "web.shop"
                && spans.iter().any(|client| {
                    client["kind"] == "CLIENT"
                        && client["service"] == "loadgen.shop"
                        && client["trace_id"] == server["trace_id"]
                        && client["span_id"] == server["parent_span_id"]
                })
        });
        if linked {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no loadgen -> web span pair at the collector: {body}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A node proxy puts its connection id in the HBONE CONNECT's `traceparent` and its log;
/// the destination's node proxy logs the same id (tcp-client -> echo, on either node).
fn connection_ids_match_across_node_proxies(state: &std::path::Path) {
    let ids = |dir: &str| -> Vec<String> {
        ["node-1", "node-2"]
            .iter()
            .flat_map(|node| {
                std::fs::read_to_string(state.join(format!("logs/proxy-{node}.log")))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains(&format!("{dir} src=")) && l.contains(":9000"))
                    .filter_map(|l| l.split("trace_id=").nth(1))
                    .map(|t| t.split_whitespace().next().unwrap_or("").to_string())
                    .filter(|t| t.len() == 32)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (out, inb) = (ids("outbound"), ids("inbound"));
    assert!(!out.is_empty(), "outbound connections carry an id");
    assert!(
        out.iter().any(|t| inb.contains(t)),
        "the destination logs the source's connection id: {out:?} vs {inb:?}"
    );
}

/// `spar proxy-config` tables from a sidecar and a node proxy, and `spar analyze --box`.
fn proxy_config_and_analyze(state: &std::path::Path) {
    let pc = |args: &[&str]| {
        let mut a = vec!["proxy-config"];
        a.extend_from_slice(args);
        let out = spar(state, &a);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let vs = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec: {host: web, subsets: [{name: v1, labels: {version: v1}}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: [web]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}, uri: {prefix: /api}}]
    route: [{destination: {host: web, subset: v1}}]
  - route: [{destination: {host: web}}]
";
    let f = state.join("web-vs.yaml");
    std::fs::write(&f, vs).expect("write");
    let out = spar(state, &["apply", "-f", f.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(10);
    let routes = loop {
        let r = pc(&["routes", "-n", "shop", "deploy/loadgen"]);
        if r.contains("jason") || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(routes.starts_with("SERVICE"), "{routes}");
    let jason = routes
        .lines()
        .find(|l| l.contains("jason"))
        .unwrap_or_else(|| panic!("{routes}"));
    for want in ["web", "uri=/api*", "end-user=jason", "subset v1"] {
        assert!(jason.contains(want), "{want}: {routes}");
    }
    let clusters = pc(&["clusters", "-n", "shop", "deploy/loadgen"]);
    assert!(
        clusters
            .lines()
            .any(|l| l.contains("web") && l.contains("v1(1)")),
        "{clusters}"
    );
    let endpoints = pc(&["endpoints", "-n", "shop", "deploy/loadgen"]);
    assert!(
        endpoints
            .lines()
            .any(|l| l.contains(":9080") && l.contains("HEALTHY") && l.contains("web")),
        "{endpoints}"
    );
    let listeners = pc(&["listeners", "-n", "shop", "web-0"]);
    for want in [
        "0.0.0.0:15001/tcp",
        "0.0.0.0:15008/tcp",
        "0.0.0.0:15020/tcp",
        "0.0.0.0:15021/tcp",
        "127.0.0.1:15000/tcp",
    ] {
        assert!(listeners.contains(want), "{want}: {listeners}");
    }
    let secrets = pc(&["secrets", "-n", "shop", "web-0"]);
    assert!(
        secrets.contains("spiffe://cluster.local/ns/shop/sa/web") && !secrets.contains("EXPIRED"),
        "{secrets}"
    );
    // An ambient pod: its node proxy's view.
    let workloads = pc(&["workloads", "-n", "tcp", "deploy/echo"]);
    assert!(
        workloads
            .lines()
            .any(|l| l.starts_with("echo-0") && l.contains("HBONE")),
        "{workloads}"
    );
    let json = pc(&["workloads", "-n", "tcp", "deploy/echo", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert!(v.as_array().is_some_and(|a| !a.is_empty()), "{json}");

    // The box's config is sound; a VirtualService to a host that does not exist is not.
    let out = spar(state, &["analyze", "--box"]);
    assert!(out.status.success(), "{}", text(&out));
    let bad = state.join("bad-vs.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: shop}
spec:
  hosts: [broken.example.com]
  http: [{route: [{destination: {host: reviewz}}]}]
",
    )
    .expect("write");
    let out = spar(state, &["apply", "-f", bad.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    // The control plane takes the change in after its debounce.
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = spar(state, &["analyze", "--box"]);
        if out.status.code() == Some(79) || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(out.status.code(), Some(79), "{}", text(&out));
    assert!(
        text(&out).contains(
            "Error [IST0101] (VirtualService shop/broken) Referenced host not found: \"reviewz\""
        ),
        "{}",
        text(&out)
    );
}
