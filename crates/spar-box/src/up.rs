//! `spar up`: check, plan, build the network, start the control plane and the workloads,
//! keep the status file current, and tear everything down on Ctrl-C or SIGTERM.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spar_model::{Kind, Resource, Spec};
use tokio::sync::watch;

use crate::plan::{Plan, plan};
use crate::proxies::{run_node_proxy, start_sidecar, stop_child, wait_enrolled};
use crate::spec::BoxSpec;
use crate::state::{BoxState, Paths, PodStatus, alive};
use crate::supervise::{Confine, ContainerState, ports_ready, supervise};
use crate::{Error, admin, net, sandbox};

pub struct UpOptions {
    pub paths: Vec<PathBuf>,
    pub box_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// The `spar` binary (runs the control plane and is on the workloads' PATH).
    pub spar_bin: PathBuf,
    /// Workload certificate lifetime (`spar control --cert-ttl`), e.g. `30s` for rotation tests.
    pub cert_ttl: Option<String>,
    /// Lifetime of the proxies' bearer tokens; each is minted again at half its life.
    pub token_ttl: Duration,
    /// Add Istio's Prometheus addon (`observability.rs`).
    pub observability: bool,
}

/// Everything that can be checked before touching the machine.
pub fn preflight(opts: &UpOptions) -> Result<(Vec<Resource>, Plan), Error> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot);
    }
    let mut tools = vec![("ip", "iproute2"), ("nft", "nftables")];
    if opts.observability {
        tools.push(("prometheus", "prometheus"));
    }
    for (tool, package) in tools {
        if net::run("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            return Err(Error::MissingTool { tool, package });
        }
    }
    let paths = Paths::new(&opts.state_dir);
    if let Ok(s) = BoxState::read(&paths)
        && alive(s.pid)
        && s.pid != std::process::id() as i32
    {
        return Err(Error::AlreadyRunning(s.pid));
    }
    let spec = match &opts.box_file {
        Some(f) => BoxSpec::parse(&f.display().to_string(), &std::fs::read_to_string(f)?)?,
        None => BoxSpec::default(),
    };
    let loaded = spar_model::load_paths(&opts.paths);
    if loaded.has_errors() {
        let p: Vec<String> = loaded.errors().map(|p| p.to_string()).collect();
        return Err(Error::Invalid(p.join("\n")));
    }
    let mut resources: Vec<Resource> = loaded.resources.into_iter().map(|(r, _)| r).collect();
    // Waypoint Gateways become their pods and Service, as Istio deploys them.
    let waypoints = crate::waypoint::expand(&resources)?;
    resources.extend(waypoints);
    let ingresses = crate::ingress::expand(&resources)?;
    resources.extend(ingresses);
    if opts.observability {
        let addon = crate::observability::expand(&resources)?;
        resources.extend(addon);
    }
    let plan = plan(&resources, &spec)?;
    Ok((resources, plan))
}

/// Run the mesh in the foreground until Ctrl-C or SIGTERM.
pub fn run(opts: UpOptions) -> Result<(), Error> {
    let (resources, plan) = preflight(&opts)?;
    let paths = Paths::new(&opts.state_dir);
    // Leftovers of a crashed run would clash with the new namespaces, and a box starts from its
    // own files only: nothing an earlier box applied, minted or logged carries over.
    net::destroy();
    paths.clear_box_state()?;
    let _ = std::fs::remove_dir_all(paths.logs());
    std::fs::create_dir_all(paths.logs())?;
    // Owner-only: the box's keys and tokens live below it (pods also have it hidden).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&paths.root, std::fs::Permissions::from_mode(0o700))?;
    }
    let namespaces: BTreeMap<String, spar_model::Labels> = resources
        .iter()
        .filter(|r| r.kind == Kind::Namespace)
        .map(|r| (r.name().to_string(), r.meta.labels.clone()))
        .collect();
    let mut state = BoxState {
        pid: std::process::id() as i32,
        plan: plan.clone(),
        namespaces,
        pods: Vec::new(),
        ready: false,
    };
    state.write(&paths)?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(run_mesh(&opts, &paths, &resources, &mut state));
    net::destroy();
    if let Err(e) = paths.clear_box_state() {
        tracing::warn!(error = %e, "cannot remove the box's state");
    }
    result
}

async fn run_mesh(
    opts: &UpOptions,
    paths: &Paths,
    resources: &[Resource],
    state: &mut BoxState,
) -> Result<(), Error> {
    net::create(&state.plan)?;
    let mut targets = String::new();
    if opts.observability {
        crate::observability::write(&paths.root, &state.plan, &mut targets)?;
        for pod in state
            .plan
            .pods
            .iter()
            .filter(|p| crate::observability::is_prometheus(p))
        {
            crate::observability::link_to_host(pod)?;
        }
    }
    let mut control = start_control(opts, paths, None).await?;
    let admin_addr = admin::Control::locate(&paths.control())
        .ok_or_else(|| Error::Invalid("the control plane did not start".into()))?;
    let body = control_documents(resources, &state.plan);
    let (code, answer) = admin_addr.post("/apply?source=spar-up", &body)?;
    if code != 200 {
        let _ = control.kill().await;
        return Err(Error::Invalid(format!(
            "the control plane refused the mesh config: {answer}"
        )));
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut proxies = Vec::new();
    for n in &state.plan.nodes {
        proxies.push(tokio::spawn(run_node_proxy(
            opts.spar_bin.clone(),
            paths.root.clone(),
            admin_addr.clone(),
            n.name.clone(),
            opts.token_ttl,
            stop_rx.clone(),
        )));
    }
    // Pods never see the box's state (CA and token keys, tokens, proxy files).
    let confine = Confine {
        spar_bin: opts.spar_bin.clone(),
        hide: vec![paths.root.clone()],
        path_env: sandbox::path_env(sandbox::POD_PATH),
        observability: opts
            .observability
            .then(|| crate::observability::dir(&paths.root)),
    };
    let mut containers: Vec<(usize, Arc<Mutex<ContainerState>>)> = Vec::new();
    let mut tasks = Vec::new();
    for (i, pod) in state.plan.pods.iter().enumerate() {
        let ambient = state.mode(&pod.namespace) == "ambient"
            || pod
                .labels
                .get("istio.io/dataplane-mode")
                .is_some_and(|m| m == "ambient");
        let mut own = Vec::new();
        for c in &pod.containers {
            let cs = Arc::new(Mutex::new(ContainerState::default()));
            containers.push((i, cs.clone()));
            own.push((c.clone(), cs));
        }
        let log = paths.pod_log(&pod.namespace, &pod.name);
        let (pod, confine, stop, root) = (
            pod.clone(),
            confine.clone(),
            stop_rx.clone(),
            paths.root.clone(),
        );
        let (spar, admin_addr) = (opts.spar_bin.clone(), admin_addr.clone());
        let token_ttl = opts.token_ttl;
        if crate::ingress::is_ingress(&pod) {
            let listeners = crate::ingress::listeners(resources, &pod);
            tasks.push(tokio::spawn(crate::ingress::run(
                spar,
                root,
                admin_addr,
                pod,
                listeners,
                resources.to_vec(),
                token_ttl,
                stop,
            )));
            continue;
        }
        if let Some(gateway) = crate::waypoint::gateway_of(&pod).map(str::to_string) {
            tasks.push(tokio::spawn(crate::waypoint::run(
                spar, root, admin_addr, pod, gateway, token_ttl, stop,
            )));
            continue;
        }
        tasks.push(tokio::spawn(async move {
            let uid = format!("Kubernetes//Pod/{}/{}", pod.namespace, pod.name);
            let sidecar = if pod.sidecar {
                // The application starts only once its sidecar captures and routes.
                start_sidecar(&spar, &root, &admin_addr, &pod, token_ttl).await
            } else {
                if ambient {
                    // An ambient pod's traffic must be captured before its command sends any.
                    let endpoints = root.join("proxies").join(format!("{}.json", pod.node));
                    wait_enrolled(&endpoints, &uid).await;
                }
                None
            };
            let runs = own.into_iter().map(|(c, cs)| {
                supervise(
                    pod.clone(),
                    c,
                    log.clone(),
                    confine.clone(),
                    cs,
                    stop.clone(),
                )
            });
            futures::future::join_all(runs).await;
            // Every container finished (a Job) or the mesh is stopping: the sidecar drains
            // and goes, so short-lived jobs complete.
            if let Some(mut child) = sidecar {
                stop_child(&mut child).await;
            }
        }));
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            status = control.wait() => {
                // Proxies keep serving meanwhile; bring it back where they look for it.
                tracing::error!(?status, "the control plane exited; restarting it on the same addresses");
                let grpc = std::fs::read_to_string(paths.control().join("endpoints.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| Some((v["grpc"].as_str()?.to_string(), v["admin"].as_str()?.to_string())));
                tokio::time::sleep(Duration::from_millis(500)).await;
                match start_control(opts, paths, grpc).await {
                    Ok(c) => control = c,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot restart the control plane; stopping the mesh");
                        break;
                    }
                }
            }
            _ = tick.tick() => {
                let ctx = crate::live::Ctx {
                    paths,
                    spar: &opts.spar_bin,
                    control: &admin_addr,
                    token_ttl: opts.token_ttl,
                    stop: &stop_rx,
                };
                tasks.extend(crate::live::take(&ctx, state));
                if opts.observability
                    && let Err(e) = crate::observability::write(&paths.root, &state.plan, &mut targets)
                {
                    tracing::warn!(error = %e, "cannot write Prometheus's targets");
                }
                refresh_status(state, &containers).await;
                if let Err(e) = merge_labels_and_write(state, paths) {
                    tracing::warn!(error = %e, "cannot write the status file");
                }
            }
        }
    }
    tracing::info!("stopping the mesh");
    let _ = stop_tx.send(true);
    for t in tasks.into_iter().chain(proxies) {
        let _ = t.await;
    }
    let _ = control.start_kill();
    let _ = control.wait().await;
    Ok(())
}

/// `spar label` edits namespace labels in the state file while we run: keep its edits.
fn merge_labels_and_write(state: &mut BoxState, paths: &Paths) -> Result<(), Error> {
    let _lock = BoxState::lock(paths)?;
    if let Ok(on_disk) = BoxState::read(paths) {
        state.namespaces = on_disk.namespaces;
    }
    state.write(paths)
}

async fn refresh_status(state: &mut BoxState, containers: &[(usize, Arc<Mutex<ContainerState>>)]) {
    let mut pods = Vec::new();
    for (i, pod) in state.plan.pods.iter().enumerate() {
        let cs: Vec<ContainerState> = containers
            .iter()
            .filter(|(j, _)| *j == i)
            .map(|(_, c)| c.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect();
        let completed = !cs.is_empty() && cs.iter().all(|c| c.completed);
        let running = !cs.is_empty() && cs.iter().all(|c| c.running || c.completed);
        let ports: Vec<u32> = pod
            .containers
            .iter()
            .flat_map(|c| c.ports.clone())
            .collect();
        let (netns, ip) = (pod.netns.clone(), pod.ip);
        // A waypoint pod runs no container: it is ready when its proxy serves HBONE; an
        // ingress pod when its listeners are up.
        let (running, ports) = if crate::waypoint::gateway_of(pod).is_some() {
            (true, vec![15008])
        } else if crate::ingress::is_ingress(pod) {
            let ports: Vec<u32> = state
                .plan
                .services
                .iter()
                .flat_map(|s| &s.ports)
                .flat_map(|p| &p.endpoints)
                .filter(|(ip, _)| *ip == pod.ip)
                .map(|(_, port)| *port)
                .collect();
            (true, ports)
        } else {
            (running, ports)
        };
        let ready = completed
            || running
                && tokio::task::spawn_blocking(move || ports_ready(&netns, ip, &ports))
                    .await
                    .unwrap_or(false);
        pods.push(PodStatus {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            node: pod.node.clone(),
            ip: pod.ip.to_string(),
            ready,
            containers: cs,
        });
    }
    state.ready = pods.iter().all(|p| p.ready);
    state.pods = pods;
}

/// Start `spar control`; `addrs` (grpc, admin) pins it to the addresses of a previous run.
async fn start_control(
    opts: &UpOptions,
    paths: &Paths,
    addrs: Option<(String, String)>,
) -> Result<tokio::process::Child, Error> {
    let (grpc, admin_listen) =
        addrs.unwrap_or_else(|| ("127.0.0.1:0".into(), "127.0.0.1:0".into()));
    let dir = paths.control();
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_file(dir.join("endpoints.json"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.logs().join("control.log"))?;
    let mut child = tokio::process::Command::new(&opts.spar_bin)
        .arg("control")
        .arg("--state-dir")
        .arg(&dir)
        .args(["--listen", &grpc, "--admin", &admin_listen])
        .args(
            opts.cert_ttl
                .iter()
                .flat_map(|t| ["--cert-ttl", t.as_str()]),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin::admin_addr(&dir).is_none() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Invalid(format!(
                "the control plane exited ({status}); see {}",
                paths.logs().join("control.log").display()
            )));
        }
        if Instant::now() > deadline {
            return Err(Error::Invalid(
                "the control plane did not start within 30 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(child)
}

/// Everything the control plane should know: the user's resources (Services with their
/// virtual IPs filled in) and one Pod per planned replica, placed and addressed.
pub fn control_documents(resources: &[Resource], plan: &Plan) -> String {
    let mut docs: Vec<serde_json::Value> = Vec::new();
    // Secrets are for the gateways' processes alone, never the control plane.
    for r in resources.iter().filter(|r| r.kind != Kind::Secret) {
        let mut v = r.to_value();
        if let Spec::Service(_) = &r.spec
            && let Some(s) = plan
                .services
                .iter()
                .find(|s| s.namespace == r.namespace() && s.name == r.name())
        {
            v["spec"]["clusterIP"] = s.vip.to_string().into();
        }
        docs.push(v);
    }
    for p in &plan.pods {
        docs.push(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": p.name, "namespace": p.namespace, "labels": p.labels },
            "spec": {
                "serviceAccountName": p.service_account,
                "nodeName": p.node,
                "containers": p.containers.iter().map(|c| serde_json::json!({ "name": c.name, "command": c.command })).collect::<Vec<_>>(),
            },
            "status": { "podIP": p.ip.to_string(), "phase": "Running" },
        }));
    }
    docs.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n---\n")
}
