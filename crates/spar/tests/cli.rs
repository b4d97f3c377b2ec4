//! The real `spar` binary: validate, and a control plane process driven by `spar apply`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn spar() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spar"))
}

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn validate_accepts_istio_samples() {
    let out = spar()
        .arg("validate")
        .arg(repo().join("examples/istio-samples"))
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 errors"));
}

#[test]
fn analyze_reports_codes_resources_and_lines_and_exits_79() {
    let broken = repo().join("crates/spar/tests/fixtures/analyze-broken.yaml");
    let out = spar().arg("analyze").arg(&broken).output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(79),
        "istioctl's code for errors found: {text}"
    );
    let file = broken.display().to_string();
    for want in [
        format!(
            "Error [IST0101] (VirtualService shop/reviews {file}:38) Referenced host not found: \"reviewz\""
        ),
        format!(
            "Error [IST0101] (VirtualService shop/reviews {file}:38) Referenced host+subset in destinationrule not found: \"reviews+v3\""
        ),
        format!("Warning [IST0127] (AuthorizationPolicy shop/ratings-viewer {file}:48)"),
        format!("Warning [SPAR0001] (DestinationRule shop/reviews {file}:29) Subset \"v2\""),
        format!("Error [SPAR0002] (PeerAuthentication shop/strict {file}:56)"),
        format!("Warning [SPAR0003] (Namespace shop {file}:3)"),
        format!("Info [IST0118] (Service shop/reviews {file}:9) Port name \"web\""),
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&want)),
            "missing {want}:\n{text}"
        );
    }
    // The Istio samples are sound; warnings fail only when asked.
    let out = spar()
        .arg("analyze")
        .arg(repo().join("examples/sidecar"))
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = spar()
        .args(["analyze", "-o", "json", "--failure-threshold", "info"])
        .arg(&broken)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(79));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v.as_array().map(|a| a.len()), Some(8), "{v}");
}

#[test]
fn validate_reports_file_line_and_fails() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("good.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n",
    )
    .expect("write");
    let bad = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      simple: FASTEST\n";
    std::fs::write(dir.path().join("bad.yaml"), bad).expect("write");
    std::fs::write(dir.path().join("syntax.yaml"), "a: [1,\n").expect("write");
    let out = spar()
        .arg("validate")
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bad_path = dir.path().join("bad.yaml");
    let want = format!(
        "{}:9: DestinationRule/reviews: spec.trafficPolicy.loadBalancer.simple: \"FASTEST\" is not one of",
        bad_path.display()
    );
    assert!(stdout.contains(&want), "{stdout}");
    assert!(stdout.contains("syntax.yaml:"), "{stdout}");
}

#[test]
fn control_process_apply_and_token() {
    let state = tempfile::tempdir().expect("tmp");
    let mut child = spar()
        .args([
            "control",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(state.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let endpoints = state.path().join("endpoints.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !endpoints.exists() {
        assert!(Instant::now() < deadline, "control plane did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let file = state.path().join("vs.yaml");
    std::fs::write(&file, "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v2}\n").expect("write");
    let out = spar()
        .args(["apply", "--state-dir"])
        .arg(state.path())
        .arg("-f")
        .arg(&file)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "VirtualService/default/reviews configured"
    );
    std::fs::write(&file, "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec: {hosts: []}\n").expect("write");
    let out = spar()
        .args(["apply", "--state-dir"])
        .arg(state.path())
        .arg("-f")
        .arg(&file)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "vs.yaml:4: VirtualService/reviews: spec.hosts: at least one host is required"
        )
    );
    let out = spar()
        .args(["control", "token", "node", "node-1", "--state-dir"])
        .arg(state.path())
        .output()
        .expect("runs");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split('.')
            .count(),
        3,
        "a JWT"
    );
    let _ = child.kill();
    let _ = child.wait();
}
