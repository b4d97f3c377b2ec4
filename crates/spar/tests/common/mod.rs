//! Helpers for end-to-end tests that drive the real `spar` binary as root.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn spar(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spar"))
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("spar runs")
}

/// `spar ARGS...` for commands that take no state directory (`spar jwt`, `spar validate`).
pub fn spar_plain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spar"))
        .args(args)
        .output()
        .expect("spar runs")
}

/// `spar exec -n NS POD -- CMD...`
pub fn exec(state: &Path, ns: &str, pod: &str, cmd: &[&str]) -> Output {
    let s = state.to_str().expect("utf-8 path");
    let mut args = vec!["exec", "-n", ns, pod, "--state-dir", s, "--"];
    args.extend_from_slice(cmd);
    Command::new(env!("CARGO_BIN_EXE_spar"))
        .args(&args)
        .output()
        .expect("spar runs")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The JSON summary of `spar echo client --json`.
pub fn summary(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

pub fn box_namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("spar-"))
        .map(str::to_string)
        .collect()
}

pub fn state_json(state: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(state.join("box.json")).expect("box.json"))
        .expect("json")
}

pub fn repo(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(rel)
}

/// Root-only tests are `#[ignore]`d, so a plain `cargo test` lists them as skipped; run with
/// `--include-ignored` they must really run, so a non-root run fails here, loudly.
pub fn require_root(test: &str) {
    assert!(
        is_root(),
        "{test} needs root (network namespaces, nftables); run it as root, as .ci/run does"
    );
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whatever happens, stop the mesh before the state directory goes away.
pub struct Down(pub PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = spar(&self.0, &["down"]);
    }
}
