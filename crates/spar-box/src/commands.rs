//! The operator commands against a running box: down, status, exec, logs, label.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::sandbox::{self, User};
use crate::state::{BoxState, Paths, alive};
use crate::{Error, admin, net};

/// Stop the running mesh and remove everything it made, also after a crashed `spar up`.
pub fn down(state_dir: &Path) -> Result<String, Error> {
    let paths = Paths::new(state_dir);
    let mut said = String::new();
    let made = net::box_namespaces().len();
    if let Ok(s) = BoxState::read(&paths) {
        if alive(s.pid) {
            let _ = kill(Pid::from_raw(s.pid), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while alive(s.pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if alive(s.pid) {
                let _ = kill(Pid::from_raw(s.pid), Signal::SIGKILL);
            }
        }
        // Anything the owner could not stop (it crashed, or was killed) goes now.
        for pod in &s.pods {
            for c in &pod.containers {
                if let Some(pid) = c.pid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        let _ = writeln!(said, "stopped the mesh (spar up pid {})", s.pid);
    }
    for pid in helper_pids(&paths) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    net::destroy();
    paths.clear_box_state()?;
    let left = net::box_namespaces().len();
    let _ = writeln!(said, "removed {} network namespaces", made - left.min(made));
    if left > 0 {
        return Err(Error::Invalid(format!(
            "{left} network namespaces could not be removed; see `ip netns list`"
        )));
    }
    Ok(said)
}

/// The control plane and node proxies a crashed box left behind: `spar control` or
/// `spar proxy` processes whose arguments point into this state directory.
fn helper_pids(paths: &Paths) -> Vec<i32> {
    let root = paths.root.display().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let helper = matches!(args.get(1).map(String::as_str), Some("control" | "proxy"));
            (helper && args.iter().any(|a| a.starts_with(&root))).then_some(pid)
        })
        .collect()
}

/// Nodes and pods as a table.
pub fn status(state_dir: &Path) -> Result<String, Error> {
    let s = BoxState::read(&Paths::new(state_dir))?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "NODE      POD-CIDR         FABRIC-IP     NODE-PROXY metrics (on the node, and on this host's loopback with /config_dump)"
    );
    for n in &s.plan.nodes {
        let proxy =
            std::fs::read_to_string(state_dir.join("proxies").join(format!("{}.json", n.name)))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["admin"].as_str().map(|a| format!("http://{a}/metrics")))
                .map(|host| format!("http://{}:15020/metrics {host}", n.gateway))
                .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<9} {:<16} {:<13} {proxy}",
            n.name,
            n.pod_cidr,
            n.fabric_ip.to_string()
        );
    }
    for (n, pod) in s
        .plan
        .pods
        .iter()
        .filter(|p| crate::ingress::is_ingress(p))
        .enumerate()
    {
        let addr = crate::ingress::host_address(n);
        let ports: std::collections::BTreeSet<u32> = s
            .plan
            .services
            .iter()
            .flat_map(|sv| &sv.ports)
            .flat_map(|p| &p.endpoints)
            .filter(|(ip, _)| *ip == pod.ip)
            .map(|(_, port)| *port)
            .collect();
        let urls: Vec<String> = ports.iter().map(|p| format!("{addr}:{p}")).collect();
        let _ = writeln!(
            out,
            "INGRESS   {}/{} reachable from this host at {}",
            pod.namespace,
            pod.name,
            urls.join(", ")
        );
    }
    if s.plan.pods.iter().any(crate::observability::is_prometheus) {
        let _ = writeln!(
            out,
            "PROMETHEUS  http://{}:{} (from this host)",
            crate::observability::HOST_ADDRESS,
            crate::observability::PORT
        );
    }
    let _ = writeln!(
        out,
        "\nNAMESPACE    POD                      NODE      IP            MODE     READY  RESTARTS"
    );
    for p in &s.pods {
        let restarts: u32 = p.containers.iter().map(|c| c.restarts).sum();
        let _ = writeln!(
            out,
            "{:<12} {:<24} {:<9} {:<13} {:<8} {:<6} {}",
            p.namespace,
            p.name,
            p.node,
            p.ip,
            s.mode(&p.namespace),
            if p.ready { "yes" } else { "no" },
            restarts
        );
    }
    out.push_str(&proxy_status(state_dir));
    out.push_str(&control_status(&Paths::new(state_dir)));
    Ok(out)
}

/// Each proxy's connection counters (open, refused by a cap, handshakes timed out), read
/// from its metrics.
fn proxy_status(state_dir: &Path) -> String {
    let Ok(dir) = std::fs::read_dir(state_dir.join("proxies")) else {
        return String::new();
    };
    let mut files: Vec<_> = dir.flatten().map(|e| e.path()).collect();
    files.sort();
    let mut out = String::from("\nPROXY                            OPEN    REFUSED  TIMEOUTS\n");
    for f in files {
        let Some(name) = f.file_stem().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        let admin = std::fs::read_to_string(&f)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["admin"].as_str().map(str::to_string));
        let counters = admin
            .and_then(|a| admin::get(&a, "/metrics").ok())
            .filter(|(code, _)| *code == 200)
            .map(|(_, text)| connection_counters(&text));
        let _ = match counters {
            Some((open, refused, timeouts)) => {
                writeln!(out, "{name:<32} {open:<7} {refused:<8} {timeouts}")
            }
            None => writeln!(out, "{name:<32} -       -        -"),
        };
    }
    out
}

/// (open, refused, timed out) from a proxy's Prometheus text.
fn connection_counters(text: &str) -> (u64, u64, u64) {
    let sum = |prefix: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v.max(0.0) as u64)
            .sum()
    };
    (
        sum("spar_connections_open "),
        sum("spar_connections_refused_total"),
        sum("spar_handshake_timeouts_total"),
    )
}

/// Connected proxies and NACKs, as the control plane reports them (empty when unreachable).
fn control_status(paths: &Paths) -> String {
    let Some(admin) = admin::Control::locate(&paths.control()) else {
        return String::new();
    };
    let Ok((200, body)) = admin.get("/debug/status") else {
        return String::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
        return String::new();
    };
    let mut out = String::new();
    let proxies = v["proxies"].as_array().map(Vec::len).unwrap_or(0);
    let _ = writeln!(
        out,
        "\nCONTROL PLANE  config generation {}, {proxies} proxies connected",
        v["generation"]
    );
    for p in v["proxies"].as_array().into_iter().flatten() {
        for (type_url, t) in p["types"].as_object().into_iter().flatten() {
            if let Some(nack) = t["nack"].as_array() {
                let msg = nack.get(1).and_then(|m| m.as_str()).unwrap_or("");
                let _ = writeln!(
                    out,
                    "  NACK from {} for {type_url}: {msg}",
                    p["subject"].as_str().unwrap_or("?")
                );
            }
        }
    }
    for r in v["rejected_config"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  rejected config: {}", r.as_str().unwrap_or(""));
    }
    for r in v["jwks_errors"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  {}", r.as_str().unwrap_or(""));
    }
    for r in v["warnings"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  warning: {}", r.as_str().unwrap_or(""));
    }
    out
}

/// Run a command inside a pod, passing stdio and the exit code through.
pub fn exec(
    state_dir: &Path,
    namespace: &str,
    pod: &str,
    command: &[String],
) -> Result<i32, Error> {
    let s = BoxState::read(&Paths::new(state_dir))?;
    let p = s.find_pod(namespace, pod)?;
    // As the pod's containers run: confined, as the first container's user, with the
    // `spar` running this command bound in.
    let spar_bin = std::env::current_exe()?;
    let user = p
        .containers
        .first()
        .map(|c| User::of(c.run_as_user, c.run_as_group))
        .unwrap_or(User::of(None, None));
    let paths = Paths::new(state_dir);
    let argv = sandbox::argv(
        &p.netns,
        user,
        &spar_bin,
        None,
        &[paths.root.as_path()],
        command,
    );
    // The pod's environment, not the operator's shell's (as `kubectl exec`).
    let status = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", sandbox::path_env(sandbox::POD_PATH))
        .env("HOME", "/")
        .envs(std::env::var("TERM").map(|t| ("TERM", t)))
        .status()?;
    Ok(status.code().unwrap_or(128 + status_signal(&status)))
}

fn status_signal(s: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.signal().unwrap_or(1)
}

/// A pod's output so far.
pub fn logs(state_dir: &Path, namespace: &str, pod: &str) -> Result<String, Error> {
    let paths = Paths::new(state_dir);
    let s = BoxState::read(&paths)?;
    let p = s.find_pod(namespace, pod)?;
    Ok(std::fs::read_to_string(paths.pod_log(&p.namespace, &p.name)).unwrap_or_default())
}

/// `KEY=VALUE` sets, `KEY-` removes; applied to the control plane at once.
pub fn label_namespace(
    state_dir: &Path,
    namespace: &str,
    changes: &[String],
) -> Result<String, Error> {
    let paths = Paths::new(state_dir);
    let _lock = BoxState::lock(&paths)?;
    let mut s = BoxState::read(&paths)?;
    let labels = s.namespaces.entry(namespace.to_string()).or_default();
    for c in changes {
        if let Some(k) = c.strip_suffix('-') {
            labels.remove(k);
        } else if let Some((k, v)) = c.split_once('=') {
            labels.insert(k.into(), v.into());
        } else {
            return Err(Error::Invalid(format!(
                "label change {c:?}: use KEY=VALUE or KEY-"
            )));
        }
    }
    let doc = serde_json::json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": namespace, "labels": labels } });
    let admin = admin::Control::locate(&paths.control())
        .ok_or_else(|| Error::NotRunning(state_dir.display().to_string()))?;
    let (code, body) = admin.post("/apply?source=spar-label", &doc.to_string())?;
    if code != 200 {
        return Err(Error::Invalid(body));
    }
    s.write(&paths)?;
    Ok(format!("namespace/{namespace} labeled\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_from_metrics() {
        let text = "# TYPE spar_connections_open gauge\nspar_connections_open 7\nspar_connections_refused_total{reason=\"source\"} 3\nspar_connections_refused_total{reason=\"listener\"} 1\nspar_handshake_timeouts_total 2\n";
        assert_eq!(connection_counters(text), (7, 4, 2));
    }
}
