//! End to end, as root: Istio's ambient L7 tasks through a waypoint in the box
//! (examples/waypoint/mesh.yaml) with Istio's YAML: opting in live with a namespace label,
//! request routing (all to v1; jason to v2), traffic shifting, fault injection, request
//! timeouts, L7 authorization at the waypoint (`targetRefs`), `reporter="waypoint"` metrics,
//! a server-first protocol through the waypoint, waypoint-only enforcement both ways, and a
//! waypoint killed and restarted by the box.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Down, exec, repo, require_root, spar, summary, text};

const NS: &str = "wp";
const CLIENT: &str = "deploy/client";
const WAIT: Duration = Duration::from_secs(15);

#[test]
#[ignore = "needs root and network namespaces: run as root with --include-ignored (.ci/run does)"]
fn waypoint_tasks() {
    require_root("waypoint_tasks");
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path();
    let _guard = Down(state.to_path_buf());
    let mesh = repo("examples/waypoint/mesh.yaml");
    let out = spar(state, &["up", "-d", mesh.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));

    opt_in(state);
    routing(state);
    gateway_route(state);
    faults_and_timeouts(state);
    authorization(state);
    jwt(state);
    server_first(state);
    waypoint_only(state);
    waypoint_restart(state);
}

fn client(state: &Path, url: &str, n: usize, headers: &[&str]) -> serde_json::Value {
    let count = n.to_string();
    let mut cmd = vec![
        "spar",
        "echo",
        "client",
        url,
        "--count",
        &count,
        "--json",
        "--timeout",
        "5s",
    ];
    for h in headers {
        cmd.extend(["-H", h]);
    }
    summary(&exec(state, NS, CLIENT, &cmd))
}

fn count(s: &serde_json::Value, group: &str, key: &str) -> u64 {
    s[group][key].as_u64().unwrap_or(0)
}

/// Poll `f` until it holds, or fail with `what`.
fn eventually(what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + WAIT;
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// The waypoint pods' metrics (every replica's, concatenated).
fn waypoint_metrics(state: &Path) -> String {
    let mut all = String::new();
    for e in std::fs::read_dir(state.join("proxies"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with("waypoint-") {
            continue;
        }
        let Ok(v) = std::fs::read_to_string(e.path())
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).map_err(|e| e.to_string()))
        else {
            continue;
        };
        let Some(addr) = v["admin"].as_str() else {
            continue;
        };
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: p\r\n\r\n");
            let _ = s.read_to_string(&mut all);
        }
    }
    all
}

fn waypoint_requests(state: &Path) -> u64 {
    waypoint_metrics(state)
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && l.contains("reporter=\"waypoint\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn apply_sample(state: &Path, file: &str) {
    let f = repo(&format!("examples/istio-samples/{file}"));
    let out = spar(
        state,
        &["apply", "-n", NS, "-f", f.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{file}: {}", text(&out));
}

fn apply(state: &Path, yaml: &str) {
    let f = state.join("apply.yaml");
    std::fs::write(&f, yaml).expect("write");
    let out = spar(state, &["apply", "-f", f.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
}

fn delete(state: &Path, yaml: &str) {
    let f = state.join("delete.yaml");
    std::fs::write(&f, yaml).expect("write");
    let out = spar(state, &["delete", "-f", f.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Before the label, traffic goes straight to the pods; after it, through the waypoint.
fn opt_in(state: &Path) {
    let s = client(state, "http://reviews:9080/", 6, &[]);
    assert_eq!(count(&s, "by_status", "200"), 6, "{s}");
    assert_eq!(waypoint_requests(state), 0, "no label, no waypoint");
    let out = spar(
        state,
        &["label", "namespace", NS, "istio.io/use-waypoint=waypoint"],
    );
    assert!(out.status.success(), "{}", text(&out));
    eventually("requests go through the waypoint", || {
        let before = waypoint_requests(state);
        let s = client(state, "http://reviews:9080/", 6, &[]);
        let through = waypoint_requests(state) - before;
        (count(&s, "by_status", "200") == 6 && through == 6)
            .then_some(())
            .ok_or(format!("{through} of 6 through the waypoint: {s}"))
    });
    let m = waypoint_metrics(state);
    assert!(
        m.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("reporter=\"waypoint\"")
            && l.contains("source_workload=\"client\"")
            && l.contains("destination_service=\"reviews.wp.svc.cluster.local\"")),
        "Istio's labels, the original client as source: {m}"
    );
}

/// Istio's request routing and traffic shifting tasks, at the waypoint.
fn routing(state: &Path) {
    apply_sample(state, "destination-rule-all.yaml");
    apply_sample(state, "virtual-service-all-v1.yaml");
    eventually("all to v1", || {
        let s = client(state, "http://reviews:9080/", 10, &[]);
        (count(&s, "by_version", "v1") == 10)
            .then_some(())
            .ok_or(s.to_string())
    });
    apply_sample(state, "virtual-service-reviews-test-v2.yaml");
    eventually("jason to v2", || {
        let s = client(state, "http://reviews:9080/", 10, &["end-user: jason"]);
        (count(&s, "by_version", "v2") == 10)
            .then_some(())
            .ok_or(s.to_string())
    });
    apply_sample(state, "virtual-service-reviews-50-v3.yaml");
    eventually("50/50", || {
        let s = client(state, "http://reviews:9080/", 200, &[]);
        let (v1, v3) = (count(&s, "by_version", "v1"), count(&s, "by_version", "v3"));
        (v1 + v3 == 200 && (75..=125).contains(&v1))
            .then_some(())
            .ok_or(s.to_string())
    });
    apply_sample(state, "virtual-service-reviews-80-20.yaml");
    eventually("80/20", || {
        let s = client(state, "http://reviews:9080/", 200, &[]);
        let (v1, v2) = (count(&s, "by_version", "v1"), count(&s, "by_version", "v2"));
        (v1 + v2 == 200 && (140..=185).contains(&v1))
            .then_some(())
            .ok_or(s.to_string())
    });
    apply_sample(state, "virtual-service-all-v1.yaml");
}

/// An HTTPRoute attached to the waypoint Gateway itself (Istio's "Configure waypoint
/// proxies"): it routes the Services that use the waypoint, ahead of their VirtualService;
/// deleted, the VirtualService (all to v1) is in force again.
fn gateway_route(state: &Path) {
    let route = "apiVersion: v1
kind: Service
metadata: {name: reviews-v3, namespace: wp}
spec: {selector: {app: reviews, version: v3}, ports: [{name: http, port: 9080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews-v3-at-the-waypoint, namespace: wp}
spec:
  parentRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  hostnames: [reviews.wp.svc.cluster.local]
  rules: [{backendRefs: [{name: reviews-v3, port: 9080}]}]
";
    apply(state, route);
    eventually("the waypoint's route: all to v3", || {
        let s = client(state, "http://reviews:9080/", 10, &[]);
        (count(&s, "by_version", "v3") == 10)
            .then_some(())
            .ok_or(s.to_string())
    });
    delete(state, route);
    eventually("the VirtualService again: all to v1", || {
        let s = client(state, "http://reviews:9080/", 10, &[]);
        (count(&s, "by_version", "v1") == 10)
            .then_some(())
            .ok_or(s.to_string())
    });
}

/// Istio's fault injection (abort for jason on ratings) and request timeout tasks.
fn faults_and_timeouts(state: &Path) {
    apply_sample(state, "virtual-service-ratings-test-abort.yaml");
    eventually("jason gets the abort", || {
        let s = client(state, "http://ratings:9080/", 4, &["end-user: jason"]);
        (count(&s, "by_status", "500") == 4)
            .then_some(())
            .ok_or(s.to_string())
    });
    let s = client(state, "http://ratings:9080/", 4, &[]);
    assert_eq!(
        count(&s, "by_status", "200"),
        4,
        "others are not aborted: {s}"
    );
    apply(
        state,
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: wp}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings}}]
    timeout: 0.5s
",
    );
    eventually("the route's timeout", || {
        let s = client(state, "http://ratings:9080/?delay=2s", 1, &[]);
        (count(&s, "by_status", "504") == 1)
            .then_some(())
            .ok_or(s.to_string())
    });
    let s = client(state, "http://ratings:9080/", 2, &[]);
    assert_eq!(count(&s, "by_status", "200"), 2, "{s}");
}

const VIEWER: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: wp}
spec:
  targetRefs:
  - {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/wp/sa/client]}}]
    to: [{operation: {methods: [GET]}}]
";

/// Istio's L7 authorization at a waypoint: GET allowed for the client, DELETE denied, other
/// identities denied; the denials answered as Istio does.
fn authorization(state: &Path) {
    apply(state, VIEWER);
    eventually("DELETE is denied", || {
        let out = exec(
            state,
            NS,
            CLIENT,
            &[
                "spar",
                "echo",
                "client",
                "http://reviews:9080/",
                "-X",
                "DELETE",
                "--json",
            ],
        );
        let s = summary(&out);
        (count(&s, "by_status", "403") == 1)
            .then_some(())
            .ok_or(s.to_string())
    });
    let s = client(state, "http://reviews:9080/", 3, &[]);
    assert_eq!(count(&s, "by_status", "200"), 3, "GET is allowed: {s}");
    let out = exec(
        state,
        NS,
        "deploy/intruder",
        &[
            "spar",
            "echo",
            "tcp",
            "reviews:9080",
            "--message",
            "GET / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n",
        ],
    );
    let answer = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        answer.starts_with("HTTP/1.1 403") && answer.ends_with("RBAC: access denied"),
        "another identity is denied with Istio's answer: {answer}"
    );
    assert!(
        waypoint_metrics(state)
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"waypoint\"")
                && l.contains("response_code=\"403\"")),
        "denials counted at the waypoint"
    );
    delete(state, VIEWER);
}

/// Istio's JWT task at a waypoint: RequestAuthentication and an AuthorizationPolicy that
/// requires a request principal, both by `targetRefs` to the waypoint.
fn jwt(state: &Path) {
    let keys = state.join("jwt");
    let ks = keys.to_str().expect("utf-8");
    let out = common::spar_plain(&["jwt", "keygen", "--out", ks, "--alg", "ES256"]);
    assert!(out.status.success(), "{}", text(&out));
    let jwks =
        String::from_utf8_lossy(&common::spar_plain(&["jwt", "jwks", "--key-dir", ks]).stdout)
            .trim()
            .to_string();
    let token = String::from_utf8_lossy(
        &common::spar_plain(&[
            "jwt",
            "token",
            "--key-dir",
            ks,
            "--iss",
            "testing@secure.istio.io",
            "--sub",
            "alice",
        ])
        .stdout,
    )
    .trim()
    .to_string();
    let policies = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt-example, namespace: wp}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  jwtRules: [{{issuer: testing@secure.istio.io, jwks: '{jwks}'}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: wp}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: ALLOW
  rules: [{{from: [{{source: {{requestPrincipals: ['testing@secure.istio.io/alice']}}}}]}}]
"
    );
    apply(state, &policies);
    let bearer = format!("Authorization: Bearer {token}");
    eventually("no token: 403", || {
        let s = client(state, "http://reviews:9080/", 1, &[]);
        (count(&s, "by_status", "403") == 1)
            .then_some(())
            .ok_or(s.to_string())
    });
    let s = client(
        state,
        "http://reviews:9080/",
        1,
        &["Authorization: Bearer not.a.jwt"],
    );
    assert_eq!(
        count(&s, "by_status", "401"),
        1,
        "an invalid token: 401: {s}"
    );
    let s = client(state, "http://reviews:9080/", 2, &[&bearer]);
    assert_eq!(count(&s, "by_status", "200"), 2, "a valid token: 200: {s}");
    delete(state, &policies);
    eventually("policies gone", || {
        let s = client(state, "http://reviews:9080/", 1, &[]);
        (count(&s, "by_status", "200") == 1)
            .then_some(())
            .ok_or(s.to_string())
    });
}

/// A server-first protocol (the server speaks first) through a waypoint-enabled namespace.
fn server_first(state: &Path) {
    eventually("the banner arrives", || {
        let out = exec(
            state,
            NS,
            CLIENT,
            &["spar", "echo", "server-first", "ratings:9091"],
        );
        let t = text(&out);
        t.contains("ratings-v1").then_some(()).ok_or(t)
    });
}

/// Waypoint-only enforcement, Spar's opt-in: off, a connection straight to a pod is
/// admitted; on, the pod's node proxy refuses it and the waypoint's traffic still flows.
fn waypoint_only(state: &Path) {
    let ip = common::state_json(state)["plan"]["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["name"] == "reviews-v1-0")
        .and_then(|p| p["ip"].as_str())
        .expect("reviews-v1 ip")
        .to_string();
    let direct = format!("http://{ip}:9080/");
    let s = client(state, &direct, 2, &[]);
    assert_eq!(
        count(&s, "by_status", "200"),
        2,
        "off: a direct connection is admitted: {s}"
    );
    let out = spar(
        state,
        &["label", "namespace", NS, "spar.io/waypoint-only=true"],
    );
    assert!(out.status.success(), "{}", text(&out));
    eventually("a direct connection is refused", || {
        let s = client(state, &direct, 1, &[]);
        (count(&s, "by_status", "200") == 0)
            .then_some(())
            .ok_or(s.to_string())
    });
    let s = client(state, "http://reviews:9080/", 5, &[]);
    assert_eq!(
        count(&s, "by_status", "200"),
        5,
        "through the waypoint it flows: {s}"
    );
    let out = spar(state, &["label", "namespace", NS, "spar.io/waypoint-only-"]);
    assert!(out.status.success(), "{}", text(&out));
    eventually("off again", || {
        let s = client(state, &direct, 1, &[]);
        (count(&s, "by_status", "200") == 1)
            .then_some(())
            .ok_or(s.to_string())
    });
}

/// The waypoint is killed: the box restarts it and traffic resumes.
fn waypoint_restart(state: &Path) {
    let pid = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains("proxy waypoint") && cmd.contains(&state.display().to_string()))
                .then_some(pid)
        })
        .expect("the waypoint runs");
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    let killed = Instant::now();
    eventually("traffic resumes", || {
        let s = client(state, "http://reviews:9080/", 3, &[]);
        (count(&s, "by_status", "200") == 3)
            .then_some(())
            .ok_or(s.to_string())
    });
    println!("waypoint killed: traffic back after {:?}", killed.elapsed());
}
