//! End to end, as root: the real `spar` binary starts the Bookinfo example in network
//! namespaces, traffic crosses nodes by name and by VIP, workloads are supervised, and
//! `spar down` leaves nothing behind. One test function: the box's namespaces are global.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Down, box_namespaces, require_root, spar, state_json, summary, text};

fn exec(state: &Path, cmd: &[&str]) -> std::process::Output {
    common::exec(state, "bookinfo", "deploy/client", cmd)
}

fn example() -> std::path::PathBuf {
    common::repo("examples/bookinfo")
}

#[test]
#[ignore = "needs root and network namespaces: run as root with --include-ignored (.ci/run does)"]
fn cluster_in_a_box() {
    require_root("cluster_in_a_box");
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path();
    let _guard = Down(state.to_path_buf());
    let ex = example();
    let ex = ex.to_str().expect("utf-8");

    // Invalid topology: file, line and field; nothing created.
    let bad = state.join("bad.yaml");
    std::fs::write(&bad, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {app: x}}\n  template:\n    metadata: {labels: {app: y}}\n    spec: {containers: [{name: x, command: [sleep, '1']}]}\n").expect("write");
    let out = spar(state, &["up", "-d", bad.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("bad.yaml:7: Deployment/x: spec.template.metadata.labels"),
        "{}",
        text(&out)
    );
    assert!(box_namespaces().is_empty(), "nothing half-created");

    let out = spar(state, &["up", "-d", ex]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        box_namespaces().len(),
        1 + 2 + 7,
        "fabric, two nodes, seven pods"
    );

    // A second `spar up` is refused and leaves the running mesh alone.
    let out = spar(state, &["up", "-d", ex]);
    assert!(
        !out.status.success() && text(&out).contains("already running"),
        "{}",
        text(&out)
    );

    // By name, across nodes: client-0 is on node-1, details-v1-0 on node-2.
    let st = state_json(state);
    let node_of = |pod: &str| {
        st["plan"]["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .find(|p| p["name"] == pod)
            .expect("pod")["node"]
            .clone()
    };
    assert_ne!(node_of("client-0"), node_of("details-v1-0"));
    let s = summary(&exec(
        state,
        &[
            "spar",
            "echo",
            "client",
            "http://details:9080/",
            "--count",
            "5",
            "--json",
        ],
    ));
    assert_eq!(s["by_status"]["200"], 5);
    assert_eq!(s["by_pod"]["details-v1-0"], 5);
    // By VIP and by full name.
    let vip = st["plan"]["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == "details")
        .expect("svc")["vip"]
        .as_str()
        .expect("vip")
        .to_string();
    let s = summary(&exec(
        state,
        &[
            "spar",
            "echo",
            "client",
            &format!("http://{vip}:9080/"),
            "--json",
        ],
    ));
    assert_eq!(s["by_pod"]["details-v1-0"], 1);
    let s = summary(&exec(
        state,
        &[
            "spar",
            "echo",
            "client",
            "http://details.bookinfo.svc.cluster.local:9080/",
            "--json",
        ],
    ));
    assert_eq!(s["by_status"]["200"], 1);
    // The server sees the client pod's address.
    let out = exec(
        state,
        &[
            "spar",
            "echo",
            "tcp",
            "details:9080",
            "--message",
            "GET /?format=text HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n",
        ],
    );
    assert!(text(&out).contains("source=10.244.1."), "{}", text(&out));

    // Connection-level load balancing spreads new connections over the three reviews replicas.
    let s = summary(&exec(
        state,
        &[
            "spar",
            "echo",
            "client",
            "http://reviews:9080/",
            "--count",
            "60",
            "--no-keepalive",
            "--json",
        ],
    ));
    let versions = s["by_version"].as_object().expect("versions");
    assert_eq!(versions.len(), 3, "{s}");

    // TCP and server-first through a Service.
    let out = exec(
        state,
        &["spar", "echo", "tcp", "ratings:9090", "--message", "ping"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ping");
    let out = exec(state, &["spar", "echo", "server-first", "ratings:9091"]);
    assert!(
        text(&out).contains("220 ratings-v1-0") && text(&out).contains("echo: hello"),
        "{}",
        text(&out)
    );

    // exec passes stdin, stdout and the exit code through.
    let mut child = Command::new(env!("CARGO_BIN_EXE_spar"))
        .args([
            "exec",
            "-n",
            "bookinfo",
            "client-0",
            "--state-dir",
            state.to_str().expect("utf-8"),
            "--",
            "sh",
            "-c",
            "cat; exit 3",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"through")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through");

    // logs and status.
    let out = spar(state, &["logs", "-n", "bookinfo", "ratings-v1-0"]);
    assert!(text(&out).contains("HTTP/1.1 and h2c on"), "{}", text(&out));
    let out = spar(state, &["status"]);
    let status = text(&out);
    assert_eq!(
        status
            .lines()
            .filter(|l| l.starts_with("bookinfo "))
            .count(),
        7,
        "{status}"
    );
    assert!(
        status
            .lines()
            .filter(|l| l.starts_with("bookinfo "))
            .all(|l| l.contains(" none ") && l.contains(" yes ")),
        "{status}"
    );

    // Labels change live and show in status.
    let out = spar(
        state,
        &[
            "label",
            "namespace",
            "bookinfo",
            "istio.io/dataplane-mode=ambient",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    std::thread::sleep(Duration::from_millis(700));
    assert!(text(&spar(state, &["status"])).contains(" ambient "));

    // `spar apply` reaches the box's control plane; bad input is refused with its location.
    let vs = state.join("vs.yaml");
    std::fs::write(&vs, "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: bookinfo}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n").expect("write");
    let out = spar(state, &["apply", "-f", vs.to_str().expect("utf-8")]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "VirtualService/bookinfo/reviews configured",
        "{}",
        text(&out)
    );
    let out = spar(state, &["delete", "-f", vs.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));

    // A crashed workload is restarted.
    let pid = state_json(state)["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["name"] == "details-v1-0")
        .expect("pod")["containers"][0]["pid"]
        .as_i64()
        .expect("pid");
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let p = state_json(state)["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .find(|p| p["name"] == "details-v1-0")
            .cloned()
            .expect("pod");
        if p["containers"][0]["restarts"].as_u64() >= Some(1) && p["ready"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "details was not restarted: {p}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let s = summary(&exec(
        state,
        &["spar", "echo", "client", "http://details:9080/", "--json"],
    ));
    assert_eq!(s["by_status"]["200"], 1);

    // Something applied to this box by hand, which must not outlive it.
    let ghost = state.join("ghost.yaml");
    std::fs::write(&ghost, "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ghost, namespace: bookinfo}\nspec:\n  hosts: [ghost.example.com]\n  addresses: [240.0.0.9]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.9.9.9}]\n").expect("write");
    let out = spar(state, &["apply", "-f", ghost.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));

    // spar down leaves nothing behind.
    let pids: Vec<i64> = state_json(state)["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .filter_map(|p| p["containers"][0]["pid"].as_i64())
        .collect();
    let out = spar(state, &["down"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(box_namespaces().is_empty());
    assert!(
        !Path::new("/etc/netns").exists()
            || std::fs::read_dir("/etc/netns")
                .expect("dir")
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().starts_with("spar-"))
    );
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "workload {pid} still running"
        );
    }

    // `spar down` leaves no state a later box could inherit: no control-plane state (applied
    // resources, CA), no tokens, no proxy endpoint files.
    for gone in ["control", "tokens", "proxies", "box.json"] {
        assert!(!state.join(gone).exists(), "{gone} outlived the box");
    }

    // A second box of another topology starts from its own files only: none of Bookinfo's
    // workloads, Services or the resource applied to the first box are in its control plane,
    // and its pods (which reuse the first box's pod IPs) are served.
    let other = state.join("other.yaml");
    std::fs::write(&other, OTHER_BOX).expect("write");
    let out = spar(state, &["up", "-d", other.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    let admin =
        spar_box::admin::Control::locate(&state.join("control")).expect("admin address and token");
    let (code, registry) = admin.get("/debug/registry").expect("registry");
    assert_eq!(code, 200, "{registry}");
    for ghost in ["bookinfo", "productpage", "ghost"] {
        assert!(
            !registry.contains(ghost),
            "the second box's control plane holds {ghost} of the first box"
        );
    }
    assert!(registry.contains("web"), "{registry}");
    let s = summary(&common::exec(
        state,
        "other",
        "deploy/client",
        &[
            "spar",
            "echo",
            "client",
            "http://web:8080/",
            "--count",
            "20",
            "--no-keepalive",
            "--json",
        ],
    ));
    assert_eq!(s["by_status"]["200"], 20, "{s}");
    let out = spar(state, &["down"]);
    assert!(out.status.success(), "{}", text(&out));

    // After a crashed `spar up` (killed outright), `spar down` still cleans up.
    let out = spar(state, &["up", "-d", ex]);
    assert!(out.status.success(), "{}", text(&out));
    let daemon = state_json(state)["pid"].as_i64().expect("pid");
    Command::new("kill")
        .args(["-9", &daemon.to_string()])
        .status()
        .expect("kill");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !box_namespaces().is_empty(),
        "a killed daemon leaves its namespaces"
    );
    let out = spar(state, &["down"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(box_namespaces().is_empty());
    let leftover = Command::new("pgrep")
        .args(["-f", &format!("control --state-dir {}", state.display())])
        .output()
        .expect("pgrep");
    assert!(leftover.stdout.is_empty(), "control plane left running");

    // Without -d, `spar up` stays in the foreground and Ctrl-C tears everything down.
    let mut fg = Command::new(env!("CARGO_BIN_EXE_spar"))
        .args(["up", ex, "--state-dir", state.to_str().expect("utf-8")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(state.join("box.json").exists() && state_json(state)["ready"] == true) {
        assert!(Instant::now() < deadline, "foreground mesh not ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    Command::new("kill")
        .args(["-INT", &fg.id().to_string()])
        .status()
        .expect("kill");
    let status = fg.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(box_namespaces().is_empty(), "Ctrl-C removes the namespaces");
}

/// A small mesh unlike Bookinfo, for the second box.
const OTHER_BOX: &str = "apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: other}
spec:
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: other}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        command: [spar, echo, serve, --port, '8080']
        ports: [{containerPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: other}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers:
      - name: client
        command: [sleep, infinity]
";
