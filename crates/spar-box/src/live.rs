//! Changes to a running box that need new pods (today: `spar waypoint apply`). A command
//! drops a request (`<state>/requests/NAME.yaml`, a waypoint Gateway); the box's main loop
//! takes it: applies the Gateway, plans the waypoint's pods after the existing ones, creates
//! their namespaces and links, tells the control plane, starts their proxies, and answers in
//! `NAME.done` (`ok`, or what went wrong).

use std::path::{Path, PathBuf};
use std::time::Duration;

use spar_model::{Kind, Resource, Spec};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Error;
use crate::admin::Control;
use crate::plan::{Plan, add_deployment};
use crate::state::{BoxState, Paths};

/// Where requests wait.
pub fn dir(paths: &Paths) -> PathBuf {
    paths.root.join("requests")
}

/// What one running box needs to start pods.
pub struct Ctx<'a> {
    pub paths: &'a Paths,
    pub spar: &'a Path,
    pub control: &'a Control,
    pub token_ttl: Duration,
    pub stop: &'a watch::Receiver<bool>,
}

/// Take every waiting request; new pods' tasks are returned to run with the box.
pub fn take(ctx: &Ctx<'_>, state: &mut BoxState) -> Vec<JoinHandle<()>> {
    let Ok(entries) = std::fs::read_dir(dir(ctx.paths)) else {
        return Vec::new();
    };
    let mut tasks = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("yaml") {
            continue;
        }
        let answer = match std::fs::read_to_string(&path)
            .map_err(Error::from)
            .and_then(|text| add_waypoint(ctx, state, &text))
        {
            Ok(t) => {
                tasks.extend(t);
                "ok".to_string()
            }
            Err(e) => e.to_string(),
        };
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::write(path.with_extension("done"), answer);
    }
    tasks
}

fn add_waypoint(
    ctx: &Ctx<'_>,
    state: &mut BoxState,
    text: &str,
) -> Result<Vec<JoinHandle<()>>, Error> {
    let loaded = spar_model::load_str("waypoint", text);
    if loaded.has_errors() {
        let p: Vec<String> = loaded.errors().map(|p| p.to_string()).collect();
        return Err(Error::Invalid(p.join("\n")));
    }
    let gateway: Vec<Resource> = loaded.resources.into_iter().map(|(r, _)| r).collect();
    let gw = gateway
        .iter()
        .find(|r| r.kind == Kind::K8sGateway)
        .ok_or_else(|| Error::Invalid("the request holds no Gateway".into()))?;
    let (ns, name) = (gw.namespace().to_string(), gw.name().to_string());
    if state
        .plan
        .pods
        .iter()
        .any(|p| p.namespace == ns && crate::waypoint::gateway_of(p) == Some(name.as_str()))
    {
        // Already running: the Gateway itself may have changed; apply it only.
        return apply(ctx.control, &gateway, &Plan::default()).map(|()| Vec::new());
    }
    let made = crate::waypoint::expand(&gateway)?;
    let dep = made
        .iter()
        .find(|r| matches!(r.spec, Spec::Deployment(_)))
        .ok_or_else(|| Error::Invalid(format!("{ns}/{name} is not a waypoint Gateway")))?;
    let ns_labels = state.namespaces.get(&ns).cloned().unwrap_or_default();
    let pods = add_deployment(&mut state.plan, Some(&ns_labels), dep)?;
    for p in &pods {
        crate::net::create_pod(&state.plan, p)?;
    }
    let mut docs = gateway.clone();
    docs.extend(made.iter().filter(|r| r.kind != Kind::Deployment).cloned());
    let only_new = Plan {
        pods: pods.clone(),
        ..Plan::default()
    };
    apply(ctx.control, &docs, &only_new)?;
    Ok(pods
        .into_iter()
        .map(|pod| {
            tokio::spawn(crate::waypoint::run(
                ctx.spar.to_path_buf(),
                ctx.paths.root.clone(),
                ctx.control.clone(),
                pod,
                name.clone(),
                ctx.token_ttl,
                ctx.stop.clone(),
            ))
        })
        .collect())
}

fn apply(control: &Control, docs: &[Resource], plan: &Plan) -> Result<(), Error> {
    let body = crate::up::control_documents(docs, plan);
    let (code, answer) = control.post("/apply?source=spar-waypoint", &body)?;
    if code != 200 {
        return Err(Error::Invalid(format!(
            "the control plane refused the waypoint: {answer}"
        )));
    }
    Ok(())
}
