//! The proxies the box runs for its pods and nodes, and their credentials: node proxies
//! (one per node), sidecars (one per injected pod, started before the pod's containers),
//! bearer tokens minted for each and kept fresh, and owner-only files.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::admin;
use crate::state::Paths;

/// Wait (bounded) until the proxy whose endpoints file is `endpoints` reports the pod
/// enrolled (listeners open, capture installed).
pub(crate) async fn wait_enrolled(endpoints: &Path, uid: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let addr = std::fs::read_to_string(endpoints)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["admin"].as_str().map(str::to_string));
        if let Some(addr) = addr {
            let uid = uid.to_string();
            let found = tokio::task::spawn_blocking(move || {
                admin::get(&addr, "/config_dump")
                    .ok()
                    .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                    .is_some_and(|v| v["enrolled"].get(&uid).is_some())
            })
            .await
            .unwrap_or(false);
            if found {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!(%uid, endpoints = %endpoints.display(), "pod not enrolled by its proxy within 30 s; starting it anyway");
}

/// SIGTERM, a grace period to drain, then SIGKILL.
pub(crate) async fn stop_child(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// Mint a token at the control plane and write it where only root can read it, then keep it
/// fresh: a new one at half its life, written whole (temp file, rename) so a proxy that reads
/// it meanwhile never sees half a token. Proxies read the file on every call.
pub(crate) fn mint_token(
    admin_addr: &admin::Control,
    subject: serde_json::Value,
    file: &Path,
    ttl: Duration,
) -> Result<(), String> {
    mint_once(admin_addr, &subject, file, ttl)?;
    let (admin_addr, file) = (admin_addr.clone(), file.to_path_buf());
    tokio::spawn(async move {
        let mut wait = ttl / 2;
        loop {
            tokio::time::sleep(wait).await;
            let (a, s, f) = (admin_addr.clone(), subject.clone(), file.clone());
            let minted = tokio::task::spawn_blocking(move || mint_once(&a, &s, &f, ttl))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            wait = match minted {
                Ok(()) => ttl / 2,
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "cannot refresh a proxy token; retrying");
                    Duration::from_secs(5).min(ttl / 4)
                }
            };
        }
    });
    Ok(())
}

/// Write `text` owner-only, whole (a temp file renamed over `path`).
pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?
        .write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path)
}

fn mint_once(
    admin_addr: &admin::Control,
    subject: &serde_json::Value,
    file: &Path,
    ttl: Duration,
) -> Result<(), String> {
    let mut body = subject.clone();
    body["ttl_seconds"] = ttl.as_secs().max(1).into();
    let token = admin_addr
        .post("/token", &body.to_string())
        .ok()
        .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["token"].as_str().map(str::to_string))
        .ok_or_else(|| "the control plane minted no token".to_string())?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let tmp = file.with_extension("token.tmp");
    std::fs::create_dir_all(dir)
        .and_then(|_| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::remove_file(&tmp);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?
                .write_all(token.as_bytes())?;
            std::fs::rename(&tmp, file)
        })
        .map_err(|e| format!("cannot write {}: {e}", file.display()))
}

pub(crate) fn control_grpc(paths: &Paths) -> String {
    std::fs::read_to_string(paths.control().join("endpoints.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["grpc"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Start an injected pod's sidecar with the pod's own token, and wait until it captures the
/// pod's traffic. `None` if it could not start (the pod then runs without it, loudly).
pub(crate) async fn start_sidecar(
    spar: &Path,
    root: &Path,
    admin_addr: &admin::Control,
    pod: &crate::plan::PodPlan,
    token_ttl: Duration,
) -> Option<tokio::process::Child> {
    let paths = Paths::new(root);
    let key = format!("{}-{}", pod.namespace, pod.name);
    let token_file = root.join("tokens").join(format!("{key}.token"));
    let subject = serde_json::json!({
        "kind": "pod", "namespace": pod.namespace, "name": pod.name,
        "service_account": pod.service_account,
    });
    if let Err(e) = mint_token(admin_addr, subject, &token_file, token_ttl) {
        tracing::error!(pod = %key, error = %e, "cannot start the sidecar");
        return None;
    }
    let endpoints = root.join("proxies").join(format!("sidecar-{key}.json"));
    let _ = std::fs::create_dir_all(root.join("proxies"));
    let _ = std::fs::remove_file(&endpoints);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.logs().join(format!("sidecar-{key}.log")));
    let ports = |k: &str| {
        pod.annotations
            .get(k)
            .map(|v| v.replace(' ', ""))
            .filter(|v| !v.is_empty())
    };
    let mut cmd = tokio::process::Command::new(spar);
    cmd.args([
        "proxy",
        "sidecar",
        "--namespace",
        &pod.namespace,
        "--pod",
        &pod.name,
    ])
    .args(["--xds", &control_grpc(&paths), "--admin", "127.0.0.1:0"])
    .arg("--root-cert")
    .arg(paths.control().join("ca").join("root-cert.pem"))
    .arg("--token-file")
    .arg(&token_file)
    .arg("--endpoints-file")
    .arg(&endpoints)
    .args(
        ports("traffic.sidecar.istio.io/excludeInboundPorts")
            .map(|p| vec!["--exclude-inbound-ports".to_string(), p])
            .unwrap_or_default(),
    )
    .args(
        ports("traffic.sidecar.istio.io/excludeOutboundPorts")
            .map(|p| vec!["--exclude-outbound-ports".to_string(), p])
            .unwrap_or_default(),
    )
    .args(pod.app_metrics.iter().flat_map(|(port, path)| {
        [
            "--app-metrics-port".to_string(),
            port.to_string(),
            "--app-metrics-path".to_string(),
            path.clone(),
        ]
    }))
    .stdout(Stdio::null())
    .stderr(log.map(Stdio::from).unwrap_or(Stdio::null()))
    .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(pod = %key, error = %e, "cannot start the sidecar");
            return None;
        }
    };
    wait_enrolled(
        &endpoints,
        &format!("Kubernetes//Pod/{}/{}", pod.namespace, pod.name),
    )
    .await;
    Some(child)
}

/// One node proxy per node, restarted if it exits, with a node token minted for it.
pub(crate) async fn run_node_proxy(
    spar: PathBuf,
    root: PathBuf,
    admin_addr: admin::Control,
    node: String,
    token_ttl: Duration,
    stop: watch::Receiver<bool>,
) {
    let paths = Paths::new(&root);
    let token_file = root.join("tokens").join(format!("{node}.token"));
    if let Err(e) = mint_token(
        &admin_addr,
        serde_json::json!({ "kind": "node", "name": node }),
        &token_file,
        token_ttl,
    ) {
        return tracing::error!(%node, error = %e, "cannot start the node proxy");
    }
    let grpc = control_grpc(&paths);
    let _ = std::fs::create_dir_all(root.join("proxies"));
    let command = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.logs().join(format!("proxy-{node}.log")));
        let mut cmd = tokio::process::Command::new(&spar);
        cmd.args([
            "proxy",
            "node",
            "--node",
            &node,
            "--xds",
            &grpc,
            "--admin",
            "127.0.0.1:0",
        ])
        .arg("--root-cert")
        .arg(paths.control().join("ca").join("root-cert.pem"))
        .arg("--token-file")
        .arg(&token_file)
        .arg("--endpoints-file")
        .arg(root.join("proxies").join(format!("{node}.json")))
        .args(["--node-netns", &crate::plan::node_netns(&node)])
        .stdout(Stdio::null())
        .stderr(log.map(Stdio::from).unwrap_or(Stdio::null()));
        cmd
    };
    crate::supervise::keep_running("node proxy", &node, command, stop).await
}
