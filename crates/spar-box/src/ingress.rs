//! Ingress gateways in the box. A Gateway of class `istio` becomes a ServiceAccount, a
//! Deployment and a Service named `<gateway>-istio` (as Istio names them); an Istio
//! `Gateway` whose selector is `istio: ingressgateway` gets Istio's default
//! `istio-ingressgateway` in `istio-system` unless a Deployment already carries those labels.
//! Their pods run `spar proxy gateway` (restarted when it exits) with one listener per port,
//! HTTPS ones with the credential of the listener's Secret (written owner-only for that
//! process alone; Secrets never reach the control plane). Each gateway pod gets a link to the
//! host (`10.255.<n>.2`, shown by `spar status`), so `curl` on the host reaches it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use spar_model::gateway_api::GATEWAY_NAME_LABEL;
use spar_model::{Kind, Labels, Resource, Spec, labels_match};
use tokio::sync::watch;

use crate::Error;
use crate::admin::Control;
use crate::plan::PodPlan;
use crate::state::Paths;

/// The label the box puts on the pods it runs a gateway process in.
pub const ROLE_LABEL: &str = "spar.io/gateway-role";
/// The Gateway API class of ingress gateways.
pub const CLASS: &str = "istio";

/// A listener of an ingress pod: its port and, for HTTPS, the credentials served on it (one
/// per listener or server on the port, each with the host names it is for: the client's SNI
/// picks one); or a port that passes TLS through by SNI.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub port: u32,
    pub credentials: Vec<Credential>,
    pub passthrough: bool,
}

/// A Secret (namespace, name) and the host names it is served for (empty: any).
#[derive(Debug, Clone, PartialEq)]
pub struct Credential {
    pub secret: (String, String),
    pub hosts: Vec<String>,
}

fn decode(doc: serde_json::Value, what: &str) -> Result<Resource, Error> {
    spar_model::resource::decode(&doc)
        .map_err(|e| Error::Invalid(format!("{what}: {}: {}", e.path, e.message)))
}

fn exists(resources: &[Resource], kind: Kind, ns: &str, name: &str) -> bool {
    resources
        .iter()
        .any(|r| r.kind == kind && r.namespace() == ns && r.name() == name)
}

/// The ServiceAccount, Deployment and Service an ingress gateway stands for.
fn unit(
    resources: &[Resource],
    ns: &str,
    name: &str,
    labels: serde_json::Value,
    ports: &[u32],
) -> Result<Vec<Resource>, Error> {
    let mut out = Vec::new();
    if !exists(resources, Kind::ServiceAccount, ns, name) {
        out.push(decode(
            serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": ns}}),
            name,
        )?);
    }
    if !exists(resources, Kind::Deployment, ns, name) {
        out.push(decode(
            serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"selector": {"matchLabels": labels.clone()},
                    "template": {"metadata": {"labels": labels},
                        "spec": {"serviceAccountName": name, "containers": []}}}}),
            name,
        )?);
    }
    if !exists(resources, Kind::Service, ns, name) {
        let ports: Vec<serde_json::Value> = ports
            .iter()
            .map(|p| serde_json::json!({"name": format!("tcp-{p}"), "port": p}))
            .collect();
        out.push(decode(
            serde_json::json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"selector": {ROLE_LABEL: "ingress", "spar.io/gateway": name}, "ports": ports}}),
            name,
        )?);
    }
    Ok(out)
}

/// The resources ingress gateways among `resources` stand for.
pub fn expand(resources: &[Resource]) -> Result<Vec<Resource>, Error> {
    let mut out = Vec::new();
    for r in resources {
        match &r.spec {
            Spec::K8sGateway(g) if g.gateway_class_name == CLASS => {
                let name = format!("{}-istio", r.name());
                let labels = serde_json::json!({
                    GATEWAY_NAME_LABEL: r.name(), "istio.io/dataplane-mode": "none", "sidecar.istio.io/inject": "false",
                    ROLE_LABEL: "ingress", "spar.io/gateway": name,
                });
                // Listeners may share a port (HTTPS for several hosts): one Service port each.
                let ports: Vec<u32> = g
                    .listeners
                    .iter()
                    .map(|l| l.port)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                out.extend(unit(resources, r.namespace(), &name, labels, &ports)?);
            }
            Spec::Gateway(g)
                if g.selector.get("istio").map(|v| v.as_str()) == Some("ingressgateway")
                    && !resources.iter().chain(&out).any(|d| matches!(&d.spec,
                        Spec::Deployment(dep) if labels_match(&g.selector, &dep.template.metadata.labels))) =>
            {
                let name = "istio-ingressgateway";
                let labels = serde_json::json!({
                    "istio": "ingressgateway", "app": name, "istio.io/dataplane-mode": "none", "sidecar.istio.io/inject": "false",
                    ROLE_LABEL: "ingress", "spar.io/gateway": name,
                });
                let ports: Vec<u32> = resources
                    .iter()
                    .filter_map(|x| match &x.spec {
                        Spec::Gateway(g) => Some(g.servers.iter().map(|s| s.port.number)),
                        _ => None,
                    })
                    .flatten()
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                out.extend(unit(resources, "istio-system", name, labels, &ports)?);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Whether a planned pod is an ingress gateway's.
pub fn is_ingress(pod: &PodPlan) -> bool {
    pod.containers.is_empty() && pod.labels.get(ROLE_LABEL).map(|v| v.as_str()) == Some("ingress")
}

/// The listeners of an ingress pod: each port of the gateways that select it, HTTPS ones
/// with their Secret (namespace, name).
pub fn listeners(resources: &[Resource], pod: &PodPlan) -> Vec<Listener> {
    let mut out: BTreeMap<u32, PortMode> = BTreeMap::new();
    for r in resources {
        match &r.spec {
            Spec::K8sGateway(g)
                if g.gateway_class_name == CLASS
                    && r.namespace() == pod.namespace
                    && pod.labels.get(GATEWAY_NAME_LABEL).map(|v| v.as_str()) == Some(r.name()) =>
            {
                for l in &g.listeners {
                    let secret = (l.protocol == "HTTPS")
                        .then(|| {
                            let name = l
                                .tls
                                .as_ref()?
                                .get("certificateRefs")?
                                .get(0)?
                                .get("name")?;
                            Some(Credential {
                                secret: (r.namespace().to_string(), name.as_str()?.to_string()),
                                hosts: l.hostname.iter().cloned().collect(),
                            })
                        })
                        .flatten();
                    let passthrough =
                        l.protocol == "TLS" && tls_mode(&l.tls) == Some("Passthrough");
                    add(&mut out, l.port, secret, passthrough);
                }
            }
            Spec::Gateway(g) if !g.selector.is_empty() && selects(&g.selector, &pod.labels) => {
                for s in &g.servers {
                    let secret = s
                        .tls
                        .as_ref()
                        .and_then(|t| t.get("credentialName"))
                        .and_then(|c| c.as_str())
                        .map(|c| Credential {
                            secret: (pod.namespace.clone(), c.to_string()),
                            hosts: s.hosts.iter().filter(|h| *h != "*").cloned().collect(),
                        });
                    let passthrough = tls_mode(&s.tls) == Some("PASSTHROUGH");
                    add(&mut out, s.port.number, secret, passthrough);
                }
            }
            _ => {}
        }
    }
    out.into_iter()
        .map(|(port, (credentials, passthrough))| Listener {
            port,
            credentials: if passthrough { Vec::new() } else { credentials },
            passthrough,
        })
        .collect()
}

/// A port's HTTPS credentials, and whether it passes TLS through.
type PortMode = (Vec<Credential>, bool);

/// A pod's listener on `port`: the first gateway to name the port decides its mode; another
/// that wants the other mode on it is reported by name (one port cannot be both). Each
/// HTTPS listener or server on the port adds its credential.
fn add(out: &mut BTreeMap<u32, PortMode>, port: u32, cred: Option<Credential>, passthrough: bool) {
    let (creds, first) = out.entry(port).or_insert((Vec::new(), passthrough));
    if *first != passthrough {
        return tracing::error!(
            port,
            "gateways on one pod disagree whether port {port} passes TLS through; the first one's mode is kept"
        );
    }
    if let Some(c) = cred {
        match creds.iter_mut().find(|x| x.secret == c.secret) {
            // One Secret on several listeners: served for all their names (or any).
            Some(x) if x.hosts.is_empty() || c.hosts.is_empty() => x.hosts.clear(),
            Some(x) => x.hosts.extend(c.hosts),
            None => creds.push(c),
        }
    }
}

/// `tls.mode` of a listener or server.
fn tls_mode(tls: &Option<serde_json::Value>) -> Option<&str> {
    tls.as_ref()?.get("mode")?.as_str()
}

fn selects(selector: &Labels, labels: &Labels) -> bool {
    labels_match(selector, labels)
}

/// Write a listener's credential where only this gateway's process reads it.
fn credential(
    resources: &[Resource],
    dir: &Path,
    (ns, name): &(String, String),
) -> Result<(PathBuf, PathBuf), String> {
    let secret = resources
        .iter()
        .find_map(|r| match &r.spec {
            Spec::Secret(s) if r.namespace() == ns && r.name() == name => Some(s),
            _ => None,
        })
        .ok_or_else(|| format!("Secret {ns}/{name} is not among the box's files"))?;
    let part = |k: &str| {
        secret
            .data
            .get(k)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .ok_or_else(|| format!("Secret {ns}/{name} has no {k}"))
    };
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    crate::proxies::write_private(&cert, &part("tls.crt")?).map_err(|e| e.to_string())?;
    crate::proxies::write_private(&key, &part("tls.key")?).map_err(|e| e.to_string())?;
    Ok((cert, key))
}

/// Run one ingress pod's `spar proxy gateway` until `stop`, restarting it when it exits.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    spar: PathBuf,
    root: PathBuf,
    control: Control,
    pod: PodPlan,
    listeners: Vec<Listener>,
    resources: Vec<Resource>,
    token_ttl: Duration,
    stop: watch::Receiver<bool>,
) {
    let paths = Paths::new(&root);
    let key = format!("{}-{}", pod.namespace, pod.name);
    let mut args = Vec::new();
    let creds = root.join("gateways").join(&key);
    for l in &listeners {
        if l.passthrough {
            args.push(format!("{}:passthrough", l.port));
            continue;
        }
        if l.credentials.is_empty() {
            args.push(l.port.to_string());
            continue;
        }
        for cred in &l.credentials {
            match credential(&resources, &creds, &cred.secret) {
                Ok((c, k)) => args.push(format!(
                    "{}:{}:{}:{}",
                    l.port,
                    c.display(),
                    k.display(),
                    cred.hosts.join(",")
                )),
                Err(e) => {
                    tracing::error!(pod = %key, port = l.port, error = %e, "HTTPS credential left out")
                }
            }
        }
    }
    let token_file = root.join("tokens").join(format!("{key}.token"));
    let subject = serde_json::json!({
        "kind": "pod", "namespace": pod.namespace, "name": pod.name,
        "service_account": pod.service_account,
    });
    if let Err(e) = crate::proxies::mint_token(&control, subject, &token_file, token_ttl) {
        return tracing::error!(pod = %key, error = %e, "cannot start the gateway");
    }
    let endpoints = root.join("proxies").join(format!("gateway-{key}.json"));
    let _ = std::fs::create_dir_all(root.join("proxies"));
    let command = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.logs().join(format!("gateway-{key}.log")));
        let mut cmd = tokio::process::Command::new(&spar);
        cmd.args([
            "proxy",
            "gateway",
            "--namespace",
            &pod.namespace,
            "--pod",
            &pod.name,
        ])
        .args(args.iter().flat_map(|a| ["--listen", a.as_str()]))
        .args([
            "--xds",
            &crate::proxies::control_grpc(&paths),
            "--admin",
            "127.0.0.1:0",
        ])
        .arg("--root-cert")
        .arg(paths.control().join("ca").join("root-cert.pem"))
        .arg("--token-file")
        .arg(&token_file)
        .arg("--endpoints-file")
        .arg(&endpoints)
        .stdout(Stdio::null())
        .stderr(log.map(Stdio::from).unwrap_or(Stdio::null()));
        cmd
    };
    crate::supervise::keep_running("gateway", &key, command, stop).await
}

/// The host's address of the ingress pod number `n` (its link to the host).
pub fn host_address(n: usize) -> String {
    format!("10.255.{}.2", n % 250)
}

/// Link ingress pod number `n` to the host: a veth pair, `10.255.<n>.1/30` on the host,
/// `10.255.<n>.2/30` in the pod. Deleting the pod's namespace deletes both ends.
pub fn link_to_host(pod: &PodPlan, n: usize) -> Result<(), Error> {
    let host_end = format!("spar-in{n}");
    let net = format!("10.255.{}", n % 250);
    crate::net::ip(&[
        "link", "add", &host_end, "type", "veth", "peer", "name", "host0", "netns", &pod.netns,
    ])?;
    crate::net::ip(&["addr", "add", &format!("{net}.1/30"), "dev", &host_end])?;
    crate::net::ip(&["link", "set", &host_end, "up"])?;
    crate::net::ip(&[
        "-n",
        &pod.netns,
        "addr",
        "add",
        &format!("{net}.2/30"),
        "dev",
        "host0",
    ])?;
    crate::net::ip(&["-n", &pod.netns, "link", "set", "host0", "up"])?;
    Ok(())
}
