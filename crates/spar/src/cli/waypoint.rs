//! `spar waypoint apply|generate`, like `istioctl waypoint`: a Gateway of class
//! `istio-waypoint` for a namespace. `apply` deploys it into the running box (new pods, no
//! restart of anything else) or, without a box, applies the Gateway to the control plane;
//! `--enroll-namespace` then labels the namespace to use it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use spar_box::state::{BoxState, DEFAULT_STATE_DIR, Paths, alive};

#[derive(Subcommand)]
pub enum WaypointCommand {
    /// Deploy a waypoint for a namespace (into the running box, or to the control plane).
    Apply(WaypointArgs),
    /// Print the waypoint's Gateway.
    Generate(WaypointArgs),
}

#[derive(Args)]
pub struct WaypointArgs {
    /// The namespace the waypoint serves and runs in.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The waypoint's (the Gateway's) name.
    #[arg(long, default_value = "waypoint")]
    name: String,
    /// Which traffic it takes: service, workload, all or none.
    #[arg(long = "for", default_value = "service", value_parser = ["service", "workload", "all", "none"])]
    traffic: String,
    /// Label the namespace to use the waypoint (`istio.io/use-waypoint`).
    #[arg(long)]
    enroll_namespace: bool,
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

fn gateway(a: &WaypointArgs) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {}
  namespace: {}
  labels: {{istio.io/waypoint-for: {}}}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
",
        a.name, a.namespace, a.traffic
    )
}

pub fn run(cmd: WaypointCommand) -> anyhow::Result<()> {
    match cmd {
        WaypointCommand::Generate(a) => {
            print!("{}", gateway(&a));
            Ok(())
        }
        WaypointCommand::Apply(a) => apply(&a),
    }
}

fn apply(a: &WaypointArgs) -> anyhow::Result<()> {
    let paths = Paths::new(&a.state_dir);
    let boxed = BoxState::read(&paths).is_ok_and(|s| alive(s.pid));
    if boxed {
        deploy_in_box(a, &paths)?;
    } else {
        let control = spar_box::admin::Control::locate(&a.state_dir)
            .context("no running box or control plane state here; pass --state-dir")?;
        let (code, body) = control.post("/apply?source=spar-waypoint", &gateway(a))?;
        anyhow::ensure!(
            code == 200,
            "the control plane refused the waypoint: {body}"
        );
    }
    println!("waypoint {}/{} applied", a.namespace, a.name);
    if a.enroll_namespace {
        let said = spar_box::commands::label_namespace(
            &a.state_dir,
            &a.namespace,
            &[format!("istio.io/use-waypoint={}", a.name)],
        )?;
        print!("{said}");
    }
    Ok(())
}

/// Hand the Gateway to the running box and wait for its pods to be ready.
fn deploy_in_box(a: &WaypointArgs, paths: &Paths) -> anyhow::Result<()> {
    let dir = spar_box::live::dir(paths);
    std::fs::create_dir_all(&dir)?;
    let stem = format!("{}-{}-{}", a.namespace, a.name, std::process::id());
    let request = dir.join(format!("{stem}.tmp"));
    std::fs::write(&request, gateway(a))?;
    std::fs::rename(&request, dir.join(format!("{stem}.yaml")))?;
    let done = dir.join(format!("{stem}.done"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        if let Ok(t) = std::fs::read_to_string(&done) {
            let _ = std::fs::remove_file(&done);
            break t;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the box did not take the waypoint within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    anyhow::ensure!(answer == "ok", "the box refused the waypoint: {answer}");
    loop {
        let s = BoxState::read(paths)?;
        let ready = s
            .pods
            .iter()
            .filter(|p| p.namespace == a.namespace && p.name.starts_with(&format!("{}-", a.name)))
            .any(|p| p.ready);
        if ready {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the waypoint's pods were not ready within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
