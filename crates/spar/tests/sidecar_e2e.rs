//! End to end, as root: sidecar mode in the cluster in a box. The outcomes of Istio's traffic
//! management tasks hold with Istio's own YAML (request routing, fault injection, traffic
//! shifting, TCP traffic shifting, request timeouts, circuit breaking, mirroring), plus gRPC
//! and WebSocket through two sidecars, consistent hashing, outlier detection, sidecar <->
//! ambient over HBONE, and a Job whose sidecar does not keep it alive.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Down, exec, repo, require_root, spar, state_json, summary, text};

const NS: &str = "mesh";
const CLIENT: &str = "deploy/client";

fn client(state: &Path, url: &str, extra: &[&str]) -> serde_json::Value {
    let mut cmd = vec!["spar", "echo", "client", url, "--json", "--timeout", "15s"];
    cmd.extend_from_slice(extra);
    summary(&exec(state, NS, CLIENT, &cmd))
}

fn count(s: &serde_json::Value, group: &str, key: &str) -> u64 {
    s[group][key].as_u64().unwrap_or(0)
}

fn apply(state: &Path, yaml: &str) {
    let f = state.join("apply.yaml");
    std::fs::write(&f, yaml).expect("write");
    let out = spar(
        state,
        &["apply", "-n", NS, "-f", f.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}", text(&out));
    settle();
}

fn apply_sample(state: &Path, file: &str) {
    let f = repo(&format!("examples/istio-samples/{file}"));
    let out = spar(
        state,
        &["apply", "-n", NS, "-f", f.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{file}: {}", text(&out));
    settle();
}

fn delete(state: &Path, kind_name: &[(&str, &str)]) {
    for (kind, name) in kind_name {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {NS}}}\n"
        );
        let f = state.join("delete.yaml");
        std::fs::write(&f, yaml).expect("write");
        let out = spar(state, &["delete", "-f", f.to_str().expect("utf-8")]);
        assert!(out.status.success(), "{}", text(&out));
    }
    settle();
}

/// Config reaches every sidecar within the control plane's debounce plus one push.
fn settle() {
    std::thread::sleep(Duration::from_millis(1500));
}

fn admin_get(state: &Path, proxy: &str, path: &str) -> String {
    let f = std::fs::read_to_string(state.join("proxies").join(format!("{proxy}.json")))
        .expect("proxy endpoints");
    let v: serde_json::Value = serde_json::from_str(&f).expect("json");
    let mut s =
        std::net::TcpStream::connect(v["admin"].as_str().expect("admin")).expect("proxy admin");
    write!(s, "GET {path} HTTP/1.0\r\nHost: p\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

fn pod_log(state: &Path, pod: &str) -> String {
    std::fs::read_to_string(state.join("logs").join(format!("{NS}_{pod}.log"))).unwrap_or_default()
}

/// The fraction of `n` answers that came from `version`, over `n` requests.
fn share(state: &Path, url: &str, n: usize, version: &str) -> f64 {
    let s = client(
        state,
        url,
        &["--count", &n.to_string(), "--concurrency", "4"],
    );
    assert_eq!(count(&s, "by_status", "200"), n as u64, "{s}");
    count(&s, "by_version", version) as f64 / n as f64
}

fn banner_pod(state: &Path, addr: &str) -> String {
    let out = exec(state, NS, CLIENT, &["spar", "echo", "server-first", addr]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    [
        "reviews-v1-0",
        "reviews-v2-0",
        "reviews-v3-0",
        "ratings-v1-0",
        "ratings-v1-1",
    ]
    .into_iter()
    .find(|p| t.contains(p))
    .unwrap_or_else(|| panic!("no pod in banner: {t}"))
    .to_string()
}

#[test]
#[ignore = "needs root and network namespaces: run as root with --include-ignored (.ci/run does)"]
fn sidecar_mode() {
    require_root("sidecar_mode");
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path();
    let _guard = Down(state.to_path_buf());
    let mesh = repo("examples/sidecar/mesh.yaml");
    let out = spar(state, &["up", "-d", mesh.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));

    short_lived_job(state);
    protocols(state);
    request_routing(state);
    gateway_api_routing(state);
    fault_injection(state);
    traffic_shifting(state);
    tcp_traffic_shifting(state);
    request_timeouts(state);
    circuit_breaking(state);
    mirroring(state);
    rewrite_headers_redirect(state);
    consistent_hashing(state);
    retries(state);
    outlier_detection(state);
    sidecar_and_ambient(state);
    telemetry(state);
}

/// The Job ran through its sidecar, exited, and its sidecar stopped after it.
fn short_lived_job(state: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = state_json(state);
        let job = s["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "once-0")
            .cloned()
            .unwrap_or_default();
        if job["containers"][0]["completed"] == true {
            assert!(
                job["containers"][0]["last_exit"]
                    .as_str()
                    .is_some_and(|e| e.contains("exit status: 0")),
                "{job}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the job did not complete: {job}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(pod_log(state, "once-0").contains("status 200: 3"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while sidecar_running("once-0") {
        assert!(Instant::now() < deadline, "the job's sidecar outlived it");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sidecar_running(pod: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .any(|c| c.contains("proxy sidecar") && c.contains(&format!("--pod {pod} ")))
}

/// gRPC unary and streaming, WebSocket, malformed HTTP, server-first on an undeclared port.
fn protocols(state: &Path) {
    let out = exec(
        state,
        NS,
        CLIENT,
        &["spar", "echo", "grpc", "http://ratings:9070"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = exec(
        state,
        NS,
        CLIENT,
        &[
            "spar",
            "echo",
            "grpc",
            "http://ratings:9070",
            "--stream",
            "5",
            "--message",
            "m",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        v["replies"],
        serde_json::json!(["m-0", "m-1", "m-2", "m-3", "m-4"]),
        "{}",
        text(&out)
    );
    let out = exec(
        state,
        NS,
        CLIENT,
        &["spar", "echo", "ws", "reviews:9080", "--message", "ping-ws"],
    );
    assert_eq!(text(&out).trim(), "ping-ws", "{}", text(&out));
    // The destination sidecar hands the app the caller's verified identity and address.
    let get = "GET /who HTTP/1.1\r\nHost: reviews\r\nx-forwarded-client-cert: URI=spiffe://forged\r\nConnection: close\r\n\r\n";
    let out = exec(
        state,
        NS,
        CLIENT,
        &["spar", "echo", "tcp", "reviews:9080", "--message", get],
    );
    let t = text(&out);
    let body: serde_json::Value = t
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON answer: {t}"));
    assert_eq!(
        body["peer_identity"], "spiffe://cluster.local/ns/mesh/sa/client",
        "{t}"
    );
    let client_ip = state_json(state)["plan"]["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "client-0")
        .and_then(|p| p["ip"].as_str().map(str::to_string))
        .expect("client ip");
    assert!(
        body["source"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{client_ip}:"))),
        "{t}"
    );
    app_leg_mss(state, &client_ip);
    let bad = "GET / HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n";
    let out = exec(
        state,
        NS,
        CLIENT,
        &["spar", "echo", "tcp", "reviews:9080", "--message", bad],
    );
    assert!(text(&out).starts_with("HTTP/1.1 400"), "{}", text(&out));
    // Undeclared port, server speaks first: detection gives up quickly and it is TCP.
    let t = Instant::now();
    let pod = banner_pod(state, "ratings:9071");
    assert!(pod.starts_with("ratings-v1"));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "server-first hung: {:?}",
        t.elapsed()
    );
}

/// The sidecar's connections to its app carry the client's address, and their replies are
/// routed back over loopback: they must also run at loopback's segment size (the app's SYN-ACK
/// chose 1448 bytes, the pod link's, before `tcp_fwmark_accept` was set in captured pods).
/// The inbound sidecar keeps its connections to the app pooled after a request, so they can
/// be read with `ss` in the apps' namespaces.
fn app_leg_mss(state: &Path, client_ip: &str) {
    let s = client(state, "http://reviews:9080/", &["--count", "6"]);
    assert_eq!(count(&s, "by_status", "200"), 6, "{s}");
    let pods = state_json(state)["plan"]["pods"].clone();
    let mut mss = Vec::new();
    for p in pods.as_array().into_iter().flatten() {
        if !p["name"].as_str().is_some_and(|n| n.starts_with("reviews")) {
            continue;
        }
        let netns = p["netns"].as_str().expect("netns");
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "ss",
                "-tinH",
                "state",
                "established",
            ])
            .args(["( sport = :9080 )"])
            .output()
            .expect("ss");
        let t = String::from_utf8_lossy(&out.stdout).to_string();
        let lines: Vec<&str> = t.lines().collect();
        for pair in lines.chunks(2) {
            let [head, info] = pair else { continue };
            // The apps listen on `[::]`: their side shows `[::ffff:IP]:PORT`.
            if !(head.contains(&format!("{client_ip}:"))
                || head.contains(&format!("{client_ip}]:")))
            {
                continue;
            }
            let m = info
                .split_whitespace()
                .find_map(|f| f.strip_prefix("mss:"))
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or_else(|| panic!("no mss in {info}"));
            mss.push(m);
        }
    }
    assert!(
        !mss.is_empty(),
        "no pooled connection from a sidecar to a reviews app"
    );
    assert!(
        mss.iter().all(|m| *m > 16_000),
        "the app leg runs in small segments: mss {mss:?}"
    );
    println!("app leg: {} pooled connections, mss {mss:?}", mss.len());
}

fn request_routing(state: &Path) {
    apply_sample(state, "destination-rule-all.yaml");
    apply_sample(state, "virtual-service-all-v1.yaml");
    let s = client(state, "http://reviews:9080/", &["--count", "20"]);
    assert_eq!(count(&s, "by_version", "v1"), 20, "all to v1: {s}");
    apply_sample(state, "virtual-service-reviews-test-v2.yaml");
    let s = client(
        state,
        "http://reviews:9080/",
        &["--count", "10", "-H", "end-user: jason"],
    );
    assert_eq!(count(&s, "by_version", "v2"), 10, "jason to v2: {s}");
    let s = client(
        state,
        "http://reviews:9080/",
        &["--count", "10", "-H", "end-user: json"],
    );
    assert_eq!(count(&s, "by_version", "v1"), 10, "others to v1: {s}");
}

/// Istio's request routing task with Gateway API: an HTTPRoute on the reviews Service (it wins
/// over the VirtualService while it exists) sends to one version's Service, jason to v2.
fn gateway_api_routing(state: &Path) {
    let route = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: mesh}
spec:
  parentRefs: [{group: '', kind: Service, name: reviews, port: 9080}]
  rules:
  - matches: [{headers: [{type: Exact, name: end-user, value: jason}]}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - backendRefs: [{name: reviews-v3, port: 9080}]
";
    apply(state, route);
    let s = client(state, "http://reviews:9080/", &["--count", "10"]);
    assert_eq!(count(&s, "by_version", "v3"), 10, "the one backend: {s}");
    let s = client(
        state,
        "http://reviews:9080/",
        &["--count", "10", "-H", "end-user: jason"],
    );
    assert_eq!(count(&s, "by_version", "v2"), 10, "jason to v2: {s}");
    let f = state.join("route.yaml");
    std::fs::write(&f, route).expect("write");
    let out = spar(state, &["delete", "-f", f.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    settle();
    let s = client(state, "http://reviews:9080/", &["--count", "10"]);
    assert_eq!(
        count(&s, "by_version", "v1"),
        10,
        "the VirtualService again: {s}"
    );
}

fn fault_injection(state: &Path) {
    apply_sample(state, "virtual-service-ratings-test-delay.yaml");
    let s = client(state, "http://ratings:9080/", &["-H", "end-user: jason"]);
    assert_eq!(count(&s, "by_status", "200"), 1, "{s}");
    assert!(
        s["max_ms"].as_f64().unwrap_or(0.0) >= 7000.0,
        "7 s delay for jason: {s}"
    );
    let s = client(state, "http://ratings:9080/", &[]);
    assert!(
        s["max_ms"].as_f64().unwrap_or(1e9) < 2000.0,
        "no delay for others: {s}"
    );
    apply_sample(state, "virtual-service-ratings-test-abort.yaml");
    let s = client(
        state,
        "http://ratings:9080/",
        &["--count", "5", "-H", "end-user: jason"],
    );
    assert_eq!(count(&s, "by_status", "500"), 5, "abort for jason: {s}");
    let s = client(state, "http://ratings:9080/", &["--count", "5"]);
    assert_eq!(count(&s, "by_status", "200"), 5, "{s}");
}

fn traffic_shifting(state: &Path) {
    apply_sample(state, "virtual-service-all-v1.yaml");
    apply_sample(state, "virtual-service-reviews-50-v3.yaml");
    let v3 = share(state, "http://reviews:9080/", 300, "v3");
    assert!((0.40..=0.60).contains(&v3), "50/50: v3 had {v3}");
    apply_sample(state, "virtual-service-reviews-80-20.yaml");
    let v2 = share(state, "http://reviews:9080/", 300, "v2");
    assert!((0.12..=0.28).contains(&v2), "80/20: v2 had {v2}");
}

fn tcp_traffic_shifting(state: &Path) {
    apply(
        state,
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  tcp:
  - match: [{port: 9091}]
    route:
    - {destination: {host: reviews, port: {number: 9091}, subset: v1}, weight: 80}
    - {destination: {host: reviews, port: {number: 9091}, subset: v2}, weight: 20}
",
    );
    let mut by: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..60 {
        *by.entry(banner_pod(state, "reviews:9091")).or_default() += 1;
    }
    let v2 = f64::from(by.get("reviews-v2-0").copied().unwrap_or(0)) / 60.0;
    assert_eq!(by.get("reviews-v3-0"), None, "{by:?}");
    assert!((0.05..=0.40).contains(&v2), "80/20 over TCP: {by:?}");
}

fn request_timeouts(state: &Path) {
    apply(
        state,
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v2}}]
    timeout: 0.5s
",
    );
    let s = client(state, "http://reviews:9080/?delay=2s", &[]);
    assert_eq!(
        count(&s, "by_status", "504"),
        1,
        "0.5 s timeout against 2 s: {s}"
    );
    assert!(s["max_ms"].as_f64().unwrap_or(1e9) < 1500.0, "{s}");
    let s = client(state, "http://reviews:9080/?delay=100ms", &[]);
    assert_eq!(count(&s, "by_status", "200"), 1, "{s}");
}

fn circuit_breaking(state: &Path) {
    apply(
        state,
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  subsets: [{name: v1, labels: {version: v1}}]
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
",
    );
    let s = client(
        state,
        "http://ratings:9080/?delay=50ms",
        &["--count", "30", "--concurrency", "3"],
    );
    assert!(
        count(&s, "by_status", "503") > 0,
        "the breaker trips under concurrency 3: {s}"
    );
    assert!(count(&s, "by_status", "200") > 0, "{s}");
    let metrics = admin_get(state, "sidecar-mesh-client-0", "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total")
                && l.contains("response_flags=\"UO\"")
                && l.contains("response_code=\"503\"")),
        "overflow is reported as UO"
    );
    apply_sample(state, "destination-rule-all.yaml");
}

fn mirroring(state: &Path) {
    apply(
        state,
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v1}, weight: 100}]
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 100.0}
",
    );
    let s = client(state, "http://reviews:9080/mirrored", &["--count", "10"]);
    assert_eq!(
        count(&s, "by_version", "v1"),
        10,
        "the client sees only the primary: {s}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let copies = pod_log(state, "reviews-v2-0")
            .lines()
            .filter(|l| l.contains("GET /mirrored") && l.contains("-shadow"))
            .count();
        if copies >= 10 {
            break;
        }
        assert!(Instant::now() < deadline, "the mirror got {copies} copies");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn raw(state: &Path, addr: &str, request: &str) -> String {
    text(&exec(
        state,
        NS,
        CLIENT,
        &["spar", "echo", "tcp", addr, "--message", request],
    ))
}

fn rewrite_headers_redirect(state: &Path) {
    apply(
        state,
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /old/}}]
    rewrite: {uri: /new/}
    headers:
      request: {set: {x-added: 'yes'}, remove: [x-drop]}
      response: {set: {x-resp: '1'}}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {exact: /moved}}]
    redirect: {uri: /elsewhere, authority: other.example}
  - route: [{destination: {host: reviews, subset: v1}}]
",
    );
    let t = raw(
        state,
        "reviews:9080",
        "GET /old/page?q=1 HTTP/1.1\r\nHost: reviews\r\nx-drop: z\r\nConnection: close\r\n\r\n",
    );
    let body: serde_json::Value = t
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("{t}"));
    assert_eq!(body["path"], "/new/page", "{t}");
    assert_eq!(body["query"], "q=1", "{t}");
    assert_eq!(body["headers"]["x-added"], "yes", "{t}");
    assert!(body["headers"].get("x-drop").is_none(), "{t}");
    assert!(t.to_ascii_lowercase().contains("x-resp: 1"), "{t}");
    let t = raw(
        state,
        "reviews:9080",
        "GET /moved HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n",
    );
    assert!(t.starts_with("HTTP/1.1 301"), "{t}");
    assert!(
        t.to_ascii_lowercase()
            .contains("location: http://other.example/elsewhere"),
        "{t}"
    );
}

/// Retries move a failed GET to another endpoint; a POST that reached the upstream is not
/// retried.
fn retries(state: &Path) {
    apply(
        state,
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings}}]
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: 5xx}
",
    );
    let failing = "http://ratings:9080/?status=503&only=ratings-v1-0";
    let s = client(state, failing, &["--count", "10"]);
    assert_eq!(
        count(&s, "by_status", "200"),
        10,
        "GETs retried elsewhere: {s}"
    );
    let s = client(state, failing, &["--count", "10", "-X", "POST"]);
    assert!(count(&s, "by_status", "503") > 0, "POSTs not retried: {s}");
}

fn consistent_hashing(state: &Path) {
    apply(
        state,
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  subsets: [{name: v1, labels: {version: v1}}]
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
",
    );
    let mut pods = Vec::new();
    for user in ["alice", "bob", "carol", "dave", "erin"] {
        let s = client(
            state,
            "http://ratings:9080/",
            &[
                "--count",
                "12",
                "--concurrency",
                "3",
                "-H",
                &format!("x-user: {user}"),
            ],
        );
        let by = s["by_pod"].as_object().cloned().unwrap_or_default();
        assert_eq!(by.len(), 1, "one key, one endpoint: {s}");
        pods.extend(by.keys().cloned());
    }
    pods.sort();
    pods.dedup();
    // Five keys over two endpoints: the map is not degenerate.
    assert_eq!(pods.len(), 2, "keys spread over both endpoints: {pods:?}");
}

fn outlier_detection(state: &Path) {
    apply(
        state,
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  subsets: [{name: v1, labels: {version: v1}}]
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 2
      interval: 1s
      baseEjectionTime: 4s
      maxEjectionPercent: 100
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings}}]
    retries: {attempts: 0}
",
    );
    let failing = "http://ratings:9080/?status=503&only=ratings-v1-0";
    let s = client(state, failing, &["--count", "10"]);
    let bad = count(&s, "by_status", "503");
    assert!(
        (1..=3).contains(&bad),
        "two failures eject the endpoint: {s}"
    );
    let s = client(state, failing, &["--count", "10"]);
    assert_eq!(
        count(&s, "by_pod", "ratings-v1-1"),
        10,
        "ejected endpoint gets nothing: {s}"
    );
    std::thread::sleep(Duration::from_secs(5));
    let s = client(state, "http://ratings:9080/", &["--count", "10"]);
    assert!(
        count(&s, "by_pod", "ratings-v1-0") > 0,
        "back after the ejection time: {s}"
    );
    delete(
        state,
        &[
            ("VirtualService", "ratings"),
            ("DestinationRule", "ratings"),
        ],
    );
}

fn sidecar_and_ambient(state: &Path) {
    let s = client(state, "http://web.amb:8080/", &["--count", "5"]);
    assert_eq!(count(&s, "by_status", "200"), 5, "sidecar -> ambient: {s}");
    let s = summary(&exec(
        state,
        "amb",
        "deploy/web",
        &[
            "spar",
            "echo",
            "client",
            "http://ratings.mesh:9080/",
            "--json",
            "--count",
            "5",
        ],
    ));
    assert_eq!(count(&s, "by_status", "200"), 5, "ambient -> sidecar: {s}");
    let metrics = admin_get(state, "sidecar-mesh-ratings-v1-0", "/metrics")
        + &admin_get(state, "sidecar-mesh-ratings-v1-1", "/metrics");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("istio_requests_total{reporter=\"destination\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/amb/sa/web\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")
        ),
        "the ambient pod arrived over HBONE with its own identity: {metrics}"
    );
}

fn telemetry(state: &Path) {
    let metrics = admin_get(state, "sidecar-mesh-client-0", "/metrics");
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{reporter=\"source\"")
                && l.contains("destination_service=\"web.amb.svc.cluster.local\"")
        })
        .unwrap_or_else(|| panic!("no request metric: {metrics}"));
    for want in [
        "source_principal=\"spiffe://cluster.local/ns/mesh/sa/client\"",
        "destination_principal=\"spiffe://cluster.local/ns/amb/sa/web\"",
        "response_code=\"200\"",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        assert!(line.contains(want), "{want} missing from {line}");
    }
    assert!(metrics.contains("istio_request_duration_milliseconds_bucket"));
    assert!(metrics.contains("istio_response_bytes_sum"));
    // The destination side reports too, with the caller's identity.
    let metrics = admin_get(state, "sidecar-mesh-reviews-v1-0", "/metrics");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("istio_requests_total{reporter=\"destination\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/mesh/sa/client\"")
                && l.contains("destination_service=\"reviews.mesh.svc.cluster.local\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")
        ),
        "no destination-side request metric: {metrics}"
    );
    access_logging(state);
}

fn sidecar_log(state: &Path, pod: &str) -> String {
    std::fs::read_to_string(state.join("logs").join(format!("sidecar-{NS}-{pod}.log")))
        .unwrap_or_default()
}

/// Access logs follow Istio's Telemetry API: none by default, on for the namespace, and a
/// selector turns the client side off for one workload.
fn access_logging(state: &Path) {
    let logged = |tag: &str| {
        let s = client(state, &format!("http://ratings:9080/?tag={tag}"), &[]);
        assert_eq!(count(&s, "by_status", "200"), 1, "{s}");
        let line = format!("\"GET /?tag={tag} HTTP/1.1\" 200");
        let server = ["ratings-v1-0", "ratings-v1-1"]
            .iter()
            .any(|p| sidecar_log(state, p).contains(&line));
        (sidecar_log(state, "client-0").contains(&line), server)
    };
    assert_eq!(
        logged("before"),
        (false, false),
        "no Telemetry: no access log"
    );
    apply(
        state,
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: logs, namespace: mesh}\n\
         spec: {accessLogging: [{providers: [{name: envoy}]}]}\n",
    );
    assert_eq!(logged("on"), (true, true), "namespace-wide access logs");
    apply(
        state,
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: quiet-client, namespace: mesh}\n\
         spec: {selector: {matchLabels: {app: client}}, accessLogging: [{match: {mode: CLIENT}, disabled: true}]}\n",
    );
    assert_eq!(
        logged("client-off"),
        (false, true),
        "the client's own Telemetry wins"
    );
}
