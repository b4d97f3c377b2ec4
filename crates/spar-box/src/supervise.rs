//! Workload processes: each container's command runs inside its pod's network namespace,
//! confined (`sandbox`: no view of the box's keys, no capabilities), restarted with back-off
//! when it exits, like a Deployment (a Job's container runs to completion: `restartPolicy` Never, or
//! OnFailure until it succeeds); output appended to the pod's log file.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::watch;

use crate::plan::{ContainerPlan, PodPlan};
use crate::sandbox::{self, User};

/// What every container of the box shares: the `spar` binary bound into pods, the
/// directories hidden from them, and the `PATH` they see.
#[derive(Debug, Clone)]
pub struct Confine {
    pub spar_bin: PathBuf,
    pub hide: Vec<PathBuf>,
    pub path_env: String,
    /// The box's observability directory (Prometheus's config and targets), bound
    /// read-only into the Prometheus pod only.
    pub observability: Option<PathBuf>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run this long resets the back-off (the process was healthy for a while).
const HEALTHY_RUN: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct ContainerState {
    pub pid: Option<u32>,
    pub restarts: u32,
    pub running: bool,
    pub last_exit: Option<String>,
    /// Ran to completion and will not be restarted (Jobs).
    #[serde(default)]
    pub completed: bool,
}

/// Run one container until `stop` turns true; then stop its process group.
pub async fn supervise(
    pod: PodPlan,
    container: ContainerPlan,
    log: PathBuf,
    confine: Confine,
    state: Arc<Mutex<ContainerState>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log);
        let (out, err) = match log_file.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        let user = User::of(container.run_as_user, container.run_as_group);
        let hide: Vec<&std::path::Path> = confine.hide.iter().map(|p| p.as_path()).collect();
        let volume = crate::observability::volume(&pod, &confine);
        let argv = sandbox::argv(
            &pod.netns,
            user,
            &confine.spar_bin,
            volume.as_ref(),
            &hide,
            &container.command,
        );
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .env("PATH", &confine.path_env)
            .envs(container.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                set(&state, |s| s.last_exit = Some(format!("cannot start: {e}")));
                if wait_or_stop(&mut stop, backoff).await {
                    return;
                }
                continue;
            }
        };
        let pid = child.id();
        set(&state, |s| {
            s.pid = pid;
            s.running = true;
        });
        let exited = tokio::select! {
            status = child.wait() => Some(status),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(status) = exited else {
            terminate(pid, &mut child).await;
            set(&state, |s| s.running = false);
            return;
        };
        let succeeded = status.as_ref().is_ok_and(|s| s.success());
        let what = status
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        if pod.restart_policy == "Never" || (pod.restart_policy == "OnFailure" && succeeded) {
            tracing::info!(pod = %pod.name, container = %container.name, %what, "container completed");
            set(&state, |s| {
                s.running = false;
                s.completed = true;
                s.last_exit = Some(what);
            });
            return;
        }
        tracing::warn!(pod = %pod.name, container = %container.name, %what, "container exited; restarting");
        set(&state, |s| {
            s.running = false;
            s.restarts += 1;
            s.last_exit = Some(what);
        });
        if started.elapsed() > HEALTHY_RUN {
            backoff = Duration::from_secs(1);
        }
        if wait_or_stop(&mut stop, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Sleep for `d`; true if asked to stop meanwhile.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    stopped || *stop.borrow()
}

/// SIGTERM to the whole process group, SIGKILL after a grace period.
async fn terminate(pid: Option<u32>, child: &mut tokio::process::Child) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(3), child.wait())
            .await
            .is_err()
        {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let _ = child.kill().await;
}

fn set(state: &Arc<Mutex<ContainerState>>, f: impl FnOnce(&mut ContainerState)) {
    f(&mut state.lock().unwrap_or_else(|e| e.into_inner()));
}

/// True when every port accepts a TCP connection on the pod's address, from inside its namespace.
pub fn ports_ready(netns: &str, ip: std::net::Ipv4Addr, ports: &[u32]) -> bool {
    let path = format!("/var/run/netns/{netns}");
    let ports = ports.to_vec();
    // A fresh thread: setns changes only the calling thread, which then ends.
    std::thread::spawn(move || {
        let Ok(f) = std::fs::File::open(&path) else {
            return false;
        };
        if nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
            return false;
        }
        ports.iter().all(|p| {
            let Ok(port) = u16::try_from(*p) else {
                return false;
            };
            std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_millis(300))
                .is_ok()
        })
    })
    .join()
    .unwrap_or(false)
}

/// Keep a proxy process running until `stop`: start it with `command`, and start it again
/// (after a second) whenever it exits; on `stop`, kill it and wait for it.
pub async fn keep_running(
    what: &str,
    key: &str,
    mut command: impl FnMut() -> Command,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let mut child = match command().kill_on_drop(true).spawn() {
            Ok(c) => c,
            Err(e) => return tracing::error!(%what, %key, error = %e, "cannot start"),
        };
        let exited = tokio::select! {
            status = child.wait() => Some(status),
            _ = stop.wait_for(|s| *s) => None,
        };
        match exited {
            Some(status) => tracing::warn!(%what, %key, ?status, "exited; restarting"),
            None => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
