//! End to end, as root: ambient mode in the cluster in a box. Labelling a namespace moves its
//! running pods into the mesh (HBONE mTLS between node proxies), policies apply at L4, and
//! removing the label returns them to plaintext, with no pod restarted.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Down, exec, repo, require_root, spar, state_json, summary, text};

const MARK: &str = "SPARMARK7731";

fn pod_ip(state: &Path, name: &str) -> String {
    state_json(state)["plan"]["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["name"] == name)
        .expect("pod")["ip"]
        .as_str()
        .expect("ip")
        .to_string()
}

fn proxy_get(state: &Path, node: &str, path: &str) -> String {
    let f = std::fs::read_to_string(state.join("proxies").join(format!("{node}.json")))
        .expect("proxy endpoints");
    let v: serde_json::Value = serde_json::from_str(&f).expect("json");
    let mut s =
        std::net::TcpStream::connect(v["admin"].as_str().expect("admin")).expect("proxy admin");
    write!(s, "GET {path} HTTP/1.0\r\nHost: p\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

fn enrolled(state: &Path) -> usize {
    ["node-1", "node-2"]
        .iter()
        .map(|n| {
            let body = proxy_get(state, n, "/config_dump");
            let json = body.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("{}");
            serde_json::from_str::<serde_json::Value>(json)
                .ok()
                .and_then(|v| v["enrolled"].as_object().map(|o| o.len()))
                .unwrap_or(0)
        })
        .sum()
}

fn wait_enrolled(state: &Path, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while enrolled(state) != want {
        assert!(
            Instant::now() < deadline,
            "expected {want} enrolled pods, have {}",
            enrolled(state)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Run `traffic` while sniffing node-1's link to the other nodes: (marker count, HBONE frames).
fn capture(traffic: impl FnOnce()) -> (u64, u64) {
    let sniffer = Command::new("ip")
        .args(["netns", "exec", "spar-node-1", "python3"])
        .arg(repo("crates/spar/tests/fixtures/sniff.py"))
        .args(["uplink", "3", MARK])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 sniffer");
    std::thread::sleep(Duration::from_millis(800));
    traffic();
    let out = sniffer.wait_with_output().expect("sniffer");
    let fields: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(
        fields.len(),
        3,
        "sniffer output: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(fields[1] > 0, "the sniffer saw no traffic");
    (fields[0], fields[2])
}

/// One HTTP exchange over raw TCP, so the answer shows the source address the server saw.
fn raw_get(state: &Path, ns: &str, pod: &str, addr: &str) -> Output {
    let req = format!("GET /{MARK}?format=text HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    exec(
        state,
        ns,
        pod,
        &["spar", "echo", "tcp", addr, "--message", &req],
    )
}

fn ok(state: &Path, ns: &str, pod: &str, url: &str) -> bool {
    let s = summary(&exec(
        state,
        ns,
        pod,
        &["spar", "echo", "client", url, "--json", "--timeout", "5s"],
    ));
    s["by_status"]["200"] == 1
}

fn apply(state: &Path, yaml: &str) {
    let f = state.join("policy.yaml");
    std::fs::write(&f, yaml).expect("write");
    let out = spar(state, &["apply", "-f", f.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    std::thread::sleep(Duration::from_millis(2000));
}

fn delete(state: &Path, yaml: &str) {
    let f = state.join("policy.yaml");
    std::fs::write(&f, yaml).expect("write");
    let out = spar(state, &["delete", "-f", f.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    std::thread::sleep(Duration::from_millis(2000));
}

const BOOKINFO: &str = "bookinfo";
const CLIENT: &str = "deploy/client";

#[test]
#[ignore = "needs root and network namespaces: run as root with --include-ignored (.ci/run does)"]
fn ambient_mode() {
    require_root("ambient_mode");
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path();
    let _guard = Down(state.to_path_buf());
    let example = repo("examples/bookinfo");
    let extra = repo("crates/spar/tests/fixtures/ambient-extra.yaml");
    let out = spar(
        state,
        &[
            "up",
            "-d",
            "--cert-ttl",
            "8s",
            example.to_str().expect("utf-8"),
            extra.to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let client_ip = pod_ip(state, "client-0");
    let details_ip = pod_ip(state, "details-v1-0");
    wait_enrolled(state, 1); // other/client2

    // Before: plaintext on the wire between nodes.
    let (marks, _) = capture(|| {
        assert!(text(&raw_get(state, BOOKINFO, CLIENT, "details:9080")).contains("200 OK"));
    });
    assert!(marks > 0, "plaintext carries the marker");

    // Label the namespace: its running pods join without restarting.
    assert!(
        spar(
            state,
            &[
                "label",
                "namespace",
                BOOKINFO,
                "istio.io/dataplane-mode=ambient"
            ]
        )
        .status
        .success()
    );
    wait_enrolled(state, 8);
    let mut answer = String::new();
    let (marks, hbone) =
        capture(|| answer = text(&raw_get(state, BOOKINFO, CLIENT, "details:9080")));
    assert!(
        answer.contains(&format!("source={client_ip}:")),
        "the server sees the client pod's address: {answer}"
    );
    assert_eq!(marks, 0, "no plaintext on the link between nodes");
    assert!(hbone > 0, "traffic crossed as HBONE (port 15008)");
    let metrics = proxy_get(state, "node-2", "/metrics");
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{reporter=\"destination\"")
                && l.contains("bookinfo-details")
        })
        .unwrap_or_else(|| panic!("no destination metric: {metrics}"));
    for want in [
        "source_principal=\"spiffe://cluster.local/ns/bookinfo/sa/client\"",
        "destination_principal=\"spiffe://cluster.local/ns/bookinfo/sa/bookinfo-details\"",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        assert!(line.contains(want), "{line}");
    }
    let source_side = proxy_get(state, "node-1", "/metrics");
    assert!(
        source_side.contains("istio_tcp_connections_opened_total{reporter=\"source\""),
        "{source_side}"
    );
    let ready = proxy_get(state, "node-1", "/healthz/ready");
    assert!(
        ready.starts_with("HTTP/1.0 200") || ready.starts_with("HTTP/1.1 200"),
        "{ready}"
    );

    // DNS: ServiceEntry hosts are answered by the node proxy's DNS proxy (15053).
    let entry = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: bookinfo}\nspec:\n  hosts: [api.example.com]\n  addresses: [10.96.9.9]\n  ports: [{number: 80, name: http}]\n  resolution: STATIC\n  endpoints: [{address: 192.0.2.10}]\n";
    apply(state, entry);
    let out = exec(
        state,
        BOOKINFO,
        CLIENT,
        &["getent", "hosts", "api.example.com"],
    );
    assert!(
        text(&out).contains("10.96.9.9"),
        "DNS answer from the mesh: {}",
        text(&out)
    );
    delete(state, entry);

    // Server-first protocols need no configuration.
    let out = exec(
        state,
        BOOKINFO,
        CLIENT,
        &["spar", "echo", "server-first", "ratings:9091"],
    );
    assert!(
        text(&out).contains("220 ratings-v1-0") && text(&out).contains("echo: hello"),
        "{}",
        text(&out)
    );
    // Nothing listening behind the tunnel: the client sees the connection fail.
    let out = exec(
        state,
        BOOKINFO,
        CLIENT,
        &[
            "spar",
            "echo",
            "tcp",
            &format!("{details_ip}:9999"),
            "--message",
            "x",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "{}",
        text(&out)
    );
    // Garbage on 15008 is dropped, and the proxy keeps serving.
    let _ = exec(
        state,
        "legacy",
        "deploy/client3",
        &[
            "spar",
            "echo",
            "tcp",
            &format!("{details_ip}:15008"),
            "--message",
            "not TLS",
        ],
    );
    assert!(ok(state, BOOKINFO, CLIENT, "http://details:9080/"));

    // PeerAuthentication: STRICT refuses the client outside the mesh, PERMISSIVE lets it in.
    let strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: bookinfo}\nspec: {mtls: {mode: STRICT}}\n";
    apply(state, strict);
    assert!(
        !ok(
            state,
            "legacy",
            "deploy/client3",
            "http://details.bookinfo:9080/"
        ),
        "plaintext refused under STRICT"
    );
    assert!(
        ok(state, BOOKINFO, CLIENT, "http://details:9080/"),
        "mesh client allowed under STRICT"
    );
    apply(state, &strict.replace("STRICT", "PERMISSIVE"));
    assert!(
        ok(
            state,
            "legacy",
            "deploy/client3",
            "http://details.bookinfo:9080/"
        ),
        "plaintext allowed under PERMISSIVE"
    );
    assert!(ok(state, BOOKINFO, CLIENT, "http://details:9080/"));
    delete(state, strict);

    // L4 AuthorizationPolicy.
    let policies = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: details-allow, namespace: bookinfo}}\nspec:\n  selector: {{matchLabels: {{app: details}}}}\n  rules: [{{from: [{{source: {{principals: [cluster.local/ns/bookinfo/sa/client]}}}}]}}]\n---\n\
apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: ratings-deny, namespace: bookinfo}}\nspec:\n  selector: {{matchLabels: {{app: ratings}}}}\n  action: DENY\n  rules: [{{from: [{{source: {{namespaces: [other]}}}}]}}]\n---\n\
apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: productpage-ip, namespace: bookinfo}}\nspec:\n  selector: {{matchLabels: {{app: productpage}}}}\n  rules: [{{from: [{{source: {{ipBlocks: [{client_ip}/32]}}}}]}}]\n---\n\
apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: reviews-l7, namespace: bookinfo}}\nspec:\n  selector: {{matchLabels: {{app: reviews}}}}\n  rules: [{{to: [{{operation: {{methods: [GET]}}}}]}}]\n"
    );
    apply(state, &policies);
    assert!(
        ok(state, BOOKINFO, CLIENT, "http://details:9080/"),
        "allowed principal"
    );
    assert!(
        !ok(
            state,
            "other",
            "deploy/client2",
            "http://details.bookinfo:9080/"
        ),
        "other principal denied"
    );
    assert!(
        ok(state, BOOKINFO, CLIENT, "http://ratings:9080/"),
        "namespace not denied"
    );
    assert!(
        !ok(
            state,
            "other",
            "deploy/client2",
            "http://ratings.bookinfo:9080/"
        ),
        "denied namespace"
    );
    assert!(
        ok(state, BOOKINFO, CLIENT, "http://productpage:9080/"),
        "allowed IP block"
    );
    assert!(
        !ok(
            state,
            "other",
            "deploy/client2",
            "http://productpage.bookinfo:9080/"
        ),
        "IP outside the block"
    );
    assert!(
        !ok(state, BOOKINFO, CLIENT, "http://reviews:9080/"),
        "an L7 rule without a waypoint fails closed"
    );
    let log = std::fs::read_to_string(state.join("logs/proxy-node-2.log")).unwrap_or_default();
    assert!(
        log.contains("denied=") && log.contains("no ALLOW policy matched"),
        "denials are logged with a reason"
    );
    delete(state, &policies);

    // Certificates live 8 s here: a long-lived connection and new ones keep working across rotations.
    let expiry = |s: &Path| proxy_get(s, "node-1", "/config_dump");
    let before = expiry(state);
    let long = Command::new(env!("CARGO_BIN_EXE_spar"))
        .args(["exec", "-n", BOOKINFO, CLIENT, "--state-dir", state.to_str().expect("utf-8"), "--", "python3", "-c"])
        .arg("import socket,time\ns=socket.create_connection(('ratings',9090))\nn=0\nfor i in range(12):\n    s.sendall(b'x')\n    n+=len(s.recv(1))\n    time.sleep(1)\nprint(n)")
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        ok(state, BOOKINFO, CLIENT, "http://details:9080/"),
        "new connection after the first certificates expired"
    );
    let out = long.wait_with_output().expect("long-lived client");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "12",
        "the long-lived connection survived rotation"
    );
    assert_ne!(before, expiry(state), "certificates were rotated");

    // The control plane goes away: proxies keep serving with what they have, and pick up
    // changes once it is back (the box restarts it on the same address).
    let control = Command::new("pgrep")
        .args([
            "-f",
            &format!("control --state-dir {}", state.join("control").display()),
        ])
        .output()
        .expect("pgrep");
    let pid = String::from_utf8_lossy(&control.stdout)
        .lines()
        .next()
        .expect("control plane pid")
        .to_string();
    Command::new("kill")
        .args(["-9", &pid])
        .status()
        .expect("kill");
    assert!(
        ok(state, BOOKINFO, CLIENT, "http://details:9080/"),
        "served while the control plane is down"
    );
    let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: bookinfo}\nspec:\n  selector: {matchLabels: {app: details}}\n  action: DENY\n  rules: [{}]\n";
    let deny_file = state.join("deny.yaml");
    std::fs::write(&deny_file, deny).expect("write");
    let deny_path = deny_file.to_str().expect("utf-8");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !spar(state, &["apply", "-f", deny_path]).status.success() {
        assert!(
            Instant::now() < deadline,
            "the control plane did not come back"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while ok(state, BOOKINFO, CLIENT, "http://details:9080/") {
        assert!(
            Instant::now() < deadline,
            "proxies did not resynchronise with the restarted control plane"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    delete(state, deny);

    // `spar waypoint apply`, as istioctl's: a waypoint deployed into the running box (no pod
    // restarted), the namespace enrolled, and traffic through it.
    let out = spar(
        state,
        &["waypoint", "apply", "-n", BOOKINFO, "--enroll-namespace"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(text(&raw_get(state, BOOKINFO, CLIENT, "details:9080")).contains("200 OK"));
        let m = proxy_get(state, "waypoint-bookinfo-waypoint-0", "/metrics");
        if m.lines().any(|l| {
            l.starts_with("istio_requests_total{reporter=\"waypoint\"")
                && l.contains("destination_service=\"details.bookinfo.svc.cluster.local\"")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no request through the new waypoint: {m}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        spar(
            state,
            &["label", "namespace", BOOKINFO, "istio.io/use-waypoint-"]
        )
        .status
        .success()
    );

    // Remove the label: back to plaintext, no pod restarted.
    assert!(
        spar(
            state,
            &["label", "namespace", BOOKINFO, "istio.io/dataplane-mode-"]
        )
        .status
        .success()
    );
    wait_enrolled(state, 1);
    let (marks, _) = capture(|| {
        assert!(text(&raw_get(state, BOOKINFO, CLIENT, "details:9080")).contains("200 OK"));
    });
    assert!(marks > 0, "plaintext again");
    let st = state_json(state);
    let restarts: u64 = st["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .flat_map(|p| p["containers"].as_array().cloned().unwrap_or_default())
        .map(|c| c["restarts"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(restarts, 0, "no pod was restarted");
}
