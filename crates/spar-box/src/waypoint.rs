//! Waypoints in the box, as Istio deploys them: a Gateway of class `istio-waypoint` becomes a
//! ServiceAccount, a Deployment and a Service all named after the Gateway. Its pods carry the
//! Gateway API label and `istio.io/dataplane-mode: none` (their traffic is not captured),
//! run no container of their own, and run `spar proxy waypoint` instead, restarted when it
//! exits. The Service exposes 15008 (HBONE) and 15021 (readiness). Replicas: the Gateway's
//! `spar.io/replicas` annotation (1 by default).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use spar_model::gateway_api::{GATEWAY_NAME_LABEL, WAYPOINT_CLASS};
use spar_model::{Kind, Resource, Spec};
use tokio::sync::watch;

use crate::Error;
use crate::admin::Control;
use crate::plan::PodPlan;
use crate::state::Paths;

/// The Gateway annotation that sets how many waypoint pods run.
pub const REPLICAS: &str = "spar.io/replicas";

/// The ServiceAccounts, Deployments and Services the waypoint Gateways among `resources`
/// stand for (those the user already wrote are left as written).
pub fn expand(resources: &[Resource]) -> Result<Vec<Resource>, Error> {
    let exists = |kind: Kind, ns: &str, name: &str| {
        resources
            .iter()
            .any(|r| r.kind == kind && r.namespace() == ns && r.name() == name)
    };
    let mut out = Vec::new();
    for r in resources {
        let Spec::K8sGateway(g) = &r.spec else {
            continue;
        };
        if g.gateway_class_name != WAYPOINT_CLASS {
            continue;
        }
        let (ns, name) = (r.namespace(), r.name());
        let replicas: u32 = match r.meta.annotations.get(REPLICAS) {
            None => 1,
            Some(v) => v.parse().map_err(|_| {
                Error::Invalid(format!(
                    "Gateway {ns}/{name}: annotation {REPLICAS}: {v:?} is not a number of replicas"
                ))
            })?,
        };
        let labels = serde_json::json!({
            GATEWAY_NAME_LABEL: name,
            "istio.io/dataplane-mode": "none", "sidecar.istio.io/inject": "false",
            crate::ingress::ROLE_LABEL: "waypoint",
        });
        let mut docs = Vec::new();
        if !exists(Kind::ServiceAccount, ns, name) {
            docs.push(serde_json::json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": ns},
            }));
        }
        if !exists(Kind::Deployment, ns, name) {
            docs.push(serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {GATEWAY_NAME_LABEL: name}},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"serviceAccountName": name, "containers": []},
                    },
                },
            }));
        }
        if !exists(Kind::Service, ns, name) {
            docs.push(serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "selector": {GATEWAY_NAME_LABEL: name},
                    "ports": [
                        {"name": "mesh", "port": 15008, "appProtocol": "all"},
                        {"name": "status-port", "port": 15021},
                    ],
                },
            }));
        }
        for d in docs {
            out.push(spar_model::resource::decode(&d).map_err(|e| {
                Error::Invalid(format!(
                    "the waypoint {ns}/{name}: {}: {}",
                    e.path, e.message
                ))
            })?);
        }
    }
    Ok(out)
}

/// The waypoint Gateway a planned pod runs for.
pub fn gateway_of(pod: &PodPlan) -> Option<&str> {
    let waypoint = pod.containers.is_empty()
        && pod
            .labels
            .get(crate::ingress::ROLE_LABEL)
            .map(|v| v.as_str())
            == Some("waypoint");
    waypoint
        .then(|| pod.labels.get(GATEWAY_NAME_LABEL).map(|v| v.as_str()))
        .flatten()
}

/// Run one waypoint pod's `spar proxy waypoint` until `stop`, restarting it when it exits,
/// with the pod's own token (the Gateway's service account).
pub async fn run(
    spar: PathBuf,
    root: PathBuf,
    control: Control,
    pod: PodPlan,
    gateway: String,
    token_ttl: Duration,
    stop: watch::Receiver<bool>,
) {
    let paths = Paths::new(&root);
    let key = format!("{}-{}", pod.namespace, pod.name);
    let token_file = root.join("tokens").join(format!("{key}.token"));
    let subject = serde_json::json!({
        "kind": "pod", "namespace": pod.namespace, "name": pod.name,
        "service_account": pod.service_account,
    });
    if let Err(e) = crate::proxies::mint_token(&control, subject, &token_file, token_ttl) {
        return tracing::error!(pod = %key, error = %e, "cannot start the waypoint");
    }
    let endpoints = root.join("proxies").join(format!("waypoint-{key}.json"));
    let _ = std::fs::create_dir_all(root.join("proxies"));
    let cmd = || command(&spar, &paths, &pod, &gateway, &token_file, &endpoints);
    crate::supervise::keep_running("waypoint", &key, cmd, stop).await
}

fn command(
    spar: &Path,
    paths: &Paths,
    pod: &PodPlan,
    gateway: &str,
    token_file: &Path,
    endpoints: &Path,
) -> tokio::process::Command {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(
        paths
            .logs()
            .join(format!("waypoint-{}-{}.log", pod.namespace, pod.name)),
    );
    let mut cmd = tokio::process::Command::new(spar);
    cmd.args(["proxy", "waypoint", "--namespace", &pod.namespace])
        .args(["--pod", &pod.name, "--gateway", gateway])
        .args([
            "--xds",
            &crate::proxies::control_grpc(paths),
            "--admin",
            "127.0.0.1:0",
        ])
        .arg("--root-cert")
        .arg(paths.control().join("ca").join("root-cert.pem"))
        .arg("--token-file")
        .arg(token_file)
        .arg("--endpoints-file")
        .arg(endpoints)
        .stdout(Stdio::null())
        .stderr(log.map(Stdio::from).unwrap_or(Stdio::null()));
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waypoint_gateway_becomes_its_account_deployment_and_service() {
        let l = spar_model::load_str(
            "t.yaml",
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: mesh, annotations: {spar.io/replicas: '2'}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
",
        );
        let resources: Vec<Resource> = l.resources.into_iter().map(|(r, _)| r).collect();
        let made = expand(&resources).expect("expands");
        let kinds: Vec<(Kind, &str)> = made.iter().map(|r| (r.kind, r.name())).collect();
        assert_eq!(
            kinds,
            vec![
                (Kind::ServiceAccount, "waypoint"),
                (Kind::Deployment, "waypoint"),
                (Kind::Service, "waypoint")
            ]
        );
        let Spec::Deployment(d) = &made[1].spec else {
            panic!("deployment")
        };
        assert_eq!(d.replicas, Some(2));
        assert_eq!(d.template.spec.service_account(), "waypoint");
        assert!(d.template.spec.containers.is_empty());
        assert_eq!(
            d.template
                .metadata
                .labels
                .get("istio.io/dataplane-mode")
                .map(|v| v.as_str()),
            Some("none")
        );
    }
}
