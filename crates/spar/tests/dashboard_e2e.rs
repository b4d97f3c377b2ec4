//! End to end, as root: `spar dashboard` on a running box, opened in headless Chromium
//! (Debian's `chromium`). After traffic through the sidecar mesh (Bookinfo's reviews and
//! ratings, called by `client`), the page shows those edges with their rates and mTLS, the
//! proxies with their certificates, and config problems; a screenshot is written under the
//! test's output directory (`target/tmp/dashboard-sidecar-mesh.png`).

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Down, exec, repo, require_root, spar, text};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(addr: &str, path: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: dashboard\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn chromium(args: &[&str], url: &str) -> std::process::Output {
    let profile = tempfile::tempdir().expect("profile dir");
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1200",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .expect("chromium runs")
}

#[test]
#[ignore = "needs root, network namespaces and Debian's chromium: run as root with --include-ignored (.ci/run does)"]
fn dashboard_shows_the_mesh_in_chromium() {
    require_root("dashboard_shows_the_mesh_in_chromium");
    assert!(
        Command::new("sh")
            .args(["-c", "command -v chromium"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "this test needs Debian's chromium package (scripts/install-deps installs it)"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path();
    let _guard = Down(state.to_path_buf());
    let example = repo("examples/sidecar");
    let out = spar(state, &["up", "-d", example.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    for url in [
        "http://reviews:9080/",
        "http://ratings:9080/?status=503&only=ratings-v1-0",
    ] {
        let out = exec(
            state,
            "mesh",
            "deploy/client",
            &["spar", "echo", "client", url, "--count", "20"],
        );
        assert!(out.status.success(), "{}", text(&out));
    }

    // A free port for the dashboard (bound, released, then taken by the dashboard).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let _dash = Kill(
        Command::new(env!("CARGO_BIN_EXE_spar"))
            .args([
                "dashboard",
                "--listen",
                &addr,
                "--interval",
                "1s",
                "--state-dir",
            ])
            .arg(state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spar dashboard"),
    );
    let want = [
        "mesh/client->mesh/reviews-v1",
        "mesh/client->mesh/reviews-v2",
        "mesh/client->mesh/reviews-v3",
        "mesh/client->mesh/ratings-v1",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let graph = loop {
        let g: serde_json::Value =
            serde_json::from_str(&get(&addr, "/api/graph")).unwrap_or_default();
        let edges: Vec<String> = g["graph"]["edges"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{}->{}",
                    e["source"].as_str().unwrap_or(""),
                    e["target"].as_str().unwrap_or("")
                )
            })
            .collect();
        if want.iter().all(|w| edges.iter().any(|e| e == w)) {
            break g;
        }
        assert!(Instant::now() < deadline, "edges so far: {edges:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let edges = graph["graph"]["edges"].as_array().expect("edges");
    let ratings = edges
        .iter()
        .find(|e| e["target"] == "mesh/ratings-v1")
        .expect("ratings edge");
    assert_eq!(ratings["mtls"], true, "{ratings}");
    assert_eq!(ratings["protocol"], "http");
    assert!(
        ratings["total"].as_f64().unwrap_or(0.0) >= 1.0
            && ratings["error_rate"].as_f64().unwrap_or(0.0) > 0.0,
        "ratings-v1 answered 503s: {ratings}"
    );
    assert!(ratings["p99_ms"].is_number(), "{ratings}");

    // The page, as a browser runs it.
    let url = format!("http://{addr}/");
    let dom = String::from_utf8_lossy(&chromium(&["--dump-dom"], &url).stdout).into_owned();
    for w in want {
        let escaped = w.replace('>', "&gt;");
        assert!(
            dom.contains(&format!("data-edge=\"{w}\""))
                || dom.contains(&format!("data-edge=\"{escaped}\"")),
            "the drawn graph has {w}: {dom}"
        );
    }
    assert!(dom.contains("mTLS"), "edges say mTLS");
    for s in [
        "service:mesh/reviews->mesh/reviews-v2",
        "service:mesh/ratings->mesh/ratings-v1",
    ] {
        let escaped = s.replace('>', "&gt;");
        assert!(
            dom.contains(&format!("data-serves=\"{s}\""))
                || dom.contains(&format!("data-serves=\"{escaped}\"")),
            "Services are drawn with their workloads: {s}"
        );
    }
    assert!(
        dom.contains("spiffe://cluster.local/ns/mesh/sa/client"),
        "the proxies' certificates are listed"
    );
    assert!(dom.contains("Config problems"));
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-sidecar-mesh.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&[&format!("--screenshot={}", shot.display())], &url);
    let png = std::fs::read(&shot).unwrap_or_default();
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG"),
        "a screenshot at {} ({} bytes)",
        shot.display(),
        png.len()
    );
    eprintln!("dashboard screenshot: {}", shot.display());
}
