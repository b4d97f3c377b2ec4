//! The plan: which pods run on which node with which address, and which virtual IP each
//! Service gets. Pure: resources and a box spec in, a plan out; nothing is created here.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use spar_model::k8s::IntOrString;
use spar_model::{Annotations, Kind, Labels, Resource, Spec, labels_match};

use crate::Error;
use crate::spec::BoxSpec;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub nodes: Vec<NodePlan>,
    pub pods: Vec<PodPlan>,
    pub services: Vec<ServicePlan>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub netns: String,
    pub pod_cidr: String,
    /// The node bridge's address: the pods' default gateway.
    pub gateway: Ipv4Addr,
    /// The node's address on the link between nodes.
    pub fabric_ip: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    pub deployment: String,
    pub node: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    /// The node-side end of the pod's veth (`v<index>`).
    pub host_veth: String,
    pub labels: Labels,
    pub service_account: String,
    pub containers: Vec<ContainerPlan>,
    #[serde(default)]
    pub annotations: Annotations,
    /// Always (Deployment), Never or OnFailure (Job).
    #[serde(default = "always")]
    pub restart_policy: String,
    /// Injected: a sidecar runs beside the containers.
    #[serde(default)]
    pub sidecar: bool,
    /// Where the application serves its metrics (port, path), for its sidecar to merge
    /// into `:15020/stats/prometheus`: the `prometheus.io/*` annotations injection moved.
    #[serde(default)]
    pub app_metrics: Option<(u16, String)>,
}

fn always() -> String {
    "Always".into()
}

/// Istio's injection rule: `sidecar.istio.io/inject=true` on the pod, or
/// `istio-injection=enabled` on its namespace unless the pod says `false`.
pub fn injected(ns_labels: Option<&Labels>, pod_labels: &Labels) -> bool {
    let pod = pod_labels
        .get("sidecar.istio.io/inject")
        .map(|v| v.as_str());
    pod == Some("true")
        || (ns_labels
            .and_then(|l| l.get("istio-injection"))
            .is_some_and(|v| v == "enabled")
            && pod != Some("false"))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerPlan {
    pub name: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub ports: Vec<u32>,
    /// `securityContext.runAsUser`/`runAsGroup` (container over pod); the box runs
    /// containers as `nobody` (65534) unless these ask otherwise.
    #[serde(default)]
    pub run_as_user: Option<u32>,
    #[serde(default)]
    pub run_as_group: Option<u32>,
}

/// `runAsUser` / `runAsGroup` of a `securityContext` (kept as JSON in the model).
fn run_as(ctx: &Option<serde_json::Value>, key: &str) -> Option<u32> {
    ctx.as_ref()?
        .get(key)?
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub namespace: String,
    pub name: String,
    pub vip: Ipv4Addr,
    pub ports: Vec<ServicePortPlan>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePortPlan {
    pub port: u32,
    /// Ready endpoints: (pod IP, target port).
    pub endpoints: Vec<(Ipv4Addr, u32)>,
}

/// Network namespace names: short, and prefixed so `spar down` can find them all.
pub fn node_netns(node: &str) -> String {
    format!("spar-{node}")
}

pub fn pod_netns(ns: &str, pod: &str) -> String {
    format!("spar-{ns}-{pod}")
}

pub fn plan(resources: &[Resource], spec: &BoxSpec) -> Result<Plan, Error> {
    let mut problems = Vec::new();
    let nodes: Vec<NodePlan> = spec
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| NodePlan {
            name: n.name.clone(),
            netns: node_netns(&n.name),
            pod_cidr: n.pod_cidr.to_string(),
            gateway: nth(n.pod_cidr.network(), 1),
            fabric_ip: nth(spec.fabric_cidr.network(), i as u32 + 1),
        })
        .collect();
    let mut next_host: Vec<u32> = vec![2; nodes.len()];
    let mut pods = Vec::new();
    let mut spread = 0usize;
    let ns_labels: BTreeMap<&str, &Labels> = resources
        .iter()
        .filter(|r| r.kind == Kind::Namespace)
        .map(|r| (r.name(), &r.meta.labels))
        .collect();
    for r in resources {
        let (template, replicas) = match &r.spec {
            Spec::Deployment(d) => (&d.template, d.replicas.unwrap_or(1)),
            Spec::Job(j) => (&j.template, 1),
            _ => continue,
        };
        let ns = r.namespace();
        for i in 0..replicas {
            let node_idx = spread % nodes.len();
            spread += 1;
            let cidr = spec.nodes[node_idx].pod_cidr;
            let host = next_host[node_idx];
            next_host[node_idx] += 1;
            if host >= (1u32 << (32 - cidr.prefix_len())) - 1 {
                problems.push(format!(
                    "node {} has no addresses left in {cidr}",
                    nodes[node_idx].name
                ));
                continue;
            }
            let name = format!("{}-{i}", r.name());
            let mut labels = template.metadata.labels.clone();
            labels.insert("spar.io/deployment".into(), r.meta.name.clone());
            let version = labels
                .get("version")
                .map(|v| v.to_string())
                .unwrap_or_default();
            let containers = template
                .spec
                .containers
                .iter()
                .map(|c| {
                    let mut env: Vec<(String, String)> = vec![
                        ("POD_NAME".into(), name.clone()),
                        ("POD_NAMESPACE".into(), ns.to_string()),
                        ("HOSTNAME".into(), name.clone()),
                        ("VERSION".into(), version.clone()),
                    ];
                    env.extend(
                        c.env
                            .iter()
                            .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v))),
                    );
                    let pod_ctx = &template.spec.security_context;
                    ContainerPlan {
                        name: c.name.clone(),
                        command: c.command.iter().chain(&c.args).cloned().collect(),
                        env,
                        ports: c.ports.iter().map(|p| p.container_port).collect(),
                        run_as_user: run_as(&c.security_context, "runAsUser")
                            .or(run_as(pod_ctx, "runAsUser")),
                        run_as_group: run_as(&c.security_context, "runAsGroup")
                            .or(run_as(pod_ctx, "runAsGroup")),
                    }
                })
                .collect();
            let sidecar = injected(ns_labels.get(ns).copied(), &labels);
            let mut annotations = template.metadata.annotations.clone();
            let app_metrics = if sidecar {
                crate::observability::inject_annotations(&mut annotations)
            } else {
                None
            };
            pods.push(PodPlan {
                namespace: ns.to_string(),
                netns: pod_netns(ns, &name),
                host_veth: format!("v{}", pods.len()),
                name,
                deployment: r.name().to_string(),
                node: nodes[node_idx].name.clone(),
                ip: nth(cidr.network(), host),
                prefix: cidr.prefix_len(),
                service_account: template.spec.service_account().to_string(),
                sidecar,
                annotations,
                app_metrics,
                restart_policy: template.spec.restart_policy.clone().unwrap_or_else(always),
                labels,
                containers,
            });
        }
    }
    let mut services = Vec::new();
    let mut next_vip = 10u32;
    for r in resources.iter().filter(|r| r.kind == Kind::Service) {
        let Spec::Service(s) = &r.spec else { continue };
        let vip = match s.cluster_ip.as_deref() {
            Some(ip) if ip != "None" => match ip.parse::<Ipv4Addr>() {
                Ok(ip) if spec.service_cidr.contains(&ip) => ip,
                _ => {
                    problems.push(format!(
                        "Service {}/{}: clusterIP {ip} is not in the service CIDR {}",
                        r.namespace(),
                        r.name(),
                        spec.service_cidr
                    ));
                    continue;
                }
            },
            _ => {
                next_vip += 1;
                nth(spec.service_cidr.network(), next_vip - 1)
            }
        };
        let selected: Vec<&PodPlan> = pods
            .iter()
            .filter(|p| {
                p.namespace == r.namespace()
                    && !s.selector.is_empty()
                    && labels_match(&s.selector, &p.labels)
            })
            .collect();
        let ports = s
            .ports
            .iter()
            .map(|sp| ServicePortPlan {
                port: sp.port,
                endpoints: selected
                    .iter()
                    .map(|p| {
                        (
                            p.ip,
                            target_port(p, sp.target_port.as_ref(), sp.port, resources),
                        )
                    })
                    .collect(),
            })
            .collect();
        services.push(ServicePlan {
            namespace: r.namespace().to_string(),
            name: r.name().to_string(),
            vip,
            ports,
        });
    }
    let mut seen = BTreeMap::new();
    for s in &services {
        if let Some(other) = seen.insert(s.vip, format!("{}/{}", s.namespace, s.name)) {
            problems.push(format!(
                "Services {other} and {}/{} share the virtual IP {}",
                s.namespace, s.name, s.vip
            ));
        }
    }
    if !problems.is_empty() {
        return Err(Error::Invalid(problems.join("\n")));
    }
    Ok(Plan {
        nodes,
        pods,
        services,
    })
}

fn nth(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(n))
}

fn target_port(
    p: &PodPlan,
    target: Option<&IntOrString>,
    port: u32,
    resources: &[Resource],
) -> u32 {
    match target {
        None => port,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(name)) => resources
            .iter()
            .filter(|r| r.name() == p.deployment && r.namespace() == p.namespace)
            .filter_map(|r| match &r.spec {
                Spec::Deployment(d) => Some(&d.template),
                Spec::Job(j) => Some(&j.template),
                _ => None,
            })
            .find_map(|template| template.spec.port_named(name))
            .unwrap_or(port),
    }
}

/// Pods for a Deployment added to a running box: planned as `plan` would, then placed after
/// the pods already there (the next node in turn, each node's next free address).
pub fn add_deployment(
    current: &mut Plan,
    namespace_labels: Option<&Labels>,
    dep: &Resource,
) -> Result<Vec<PodPlan>, Error> {
    let nodes: Vec<crate::spec::NodeSpec> = current
        .nodes
        .iter()
        .map(|n| {
            n.pod_cidr
                .parse()
                .map(|pod_cidr| crate::spec::NodeSpec {
                    name: n.name.clone(),
                    pod_cidr,
                })
                .map_err(|_| {
                    Error::Invalid(format!("node {}: bad pod CIDR {}", n.name, n.pod_cidr))
                })
        })
        .collect::<Result<_, _>>()?;
    let spec = BoxSpec {
        nodes: nodes.clone(),
        ..BoxSpec::default()
    };
    let mut docs = Vec::new();
    if let Some(l) = namespace_labels {
        docs.push(
            crate::spec::namespace(dep.namespace(), l)
                .map_err(|e| Error::Invalid(e.to_string()))?,
        );
    }
    docs.push(dep.clone());
    let mut fresh = plan(&docs, &spec)?.pods;
    for pod in &mut fresh {
        let n = current.pods.len() % nodes.len();
        let cidr = nodes[n].pod_cidr;
        let used = current
            .pods
            .iter()
            .filter(|p| p.node == nodes[n].name)
            .map(|p| u32::from(p.ip) - u32::from(cidr.network()))
            .max()
            .unwrap_or(1);
        let host = used + 1;
        if host >= (1u32 << (32 - cidr.prefix_len())) - 1 {
            return Err(Error::Invalid(format!(
                "node {} has no addresses left in {cidr}",
                nodes[n].name
            )));
        }
        pod.node = nodes[n].name.clone();
        pod.ip = nth(cidr.network(), host);
        pod.prefix = cidr.prefix_len();
        pod.host_veth = format!("v{}", current.pods.len());
        current.pods.push(pod.clone());
    }
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(text: &str) -> Vec<Resource> {
        let l = spar_model::load_str("t", text);
        assert!(!l.has_errors(), "{:?}", l.problems);
        l.resources.into_iter().map(|(r, _)| r).collect()
    }

    const MESH: &str = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, version: v1}}
    spec:
      serviceAccountName: web
      containers: [{name: web, command: [spar, echo, serve], args: [--port, '8080'], ports: [{containerPort: 8080, name: http}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
";

    #[test]
    fn injection_follows_istio() {
        let l = |kv: &[(&str, &str)]| -> Labels {
            kv.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
        };
        let enabled = l(&[("istio-injection", "enabled")]);
        for (ns, pod, want) in [
            (Some(&enabled), l(&[]), true),
            (
                Some(&enabled),
                l(&[("sidecar.istio.io/inject", "false")]),
                false,
            ),
            (None, l(&[("sidecar.istio.io/inject", "true")]), true),
            (Some(&l(&[("istio-injection", "disabled")])), l(&[]), false),
            (None, l(&[]), false),
        ] {
            assert_eq!(injected(ns, &pod), want, "{ns:?} {pod:?}");
        }
    }

    #[test]
    fn jobs_run_once_with_their_restart_policy() {
        let r = resources(
            "apiVersion: batch/v1
kind: Job
metadata: {name: once, namespace: a}
spec:
  template:
    metadata: {labels: {app: once}, annotations: {traffic.sidecar.istio.io/excludeOutboundPorts: '25'}}
    spec:
      restartPolicy: OnFailure
      containers: [{name: c, command: ['true']}]
",
        );
        let p = plan(&r, &BoxSpec::default()).expect("plan");
        assert_eq!(p.pods.len(), 1);
        assert_eq!(p.pods[0].name, "once-0");
        assert_eq!(p.pods[0].restart_policy, "OnFailure");
        assert_eq!(
            p.pods[0]
                .annotations
                .get("traffic.sidecar.istio.io/excludeOutboundPorts")
                .map(String::as_str),
            Some("25")
        );
    }

    #[test]
    fn spreads_pods_and_assigns_addresses() {
        let p = plan(&resources(MESH), &BoxSpec::default()).expect("plans");
        let placed: Vec<(&str, &str, String)> = p
            .pods
            .iter()
            .map(|p| (p.name.as_str(), p.node.as_str(), p.ip.to_string()))
            .collect();
        assert_eq!(
            placed,
            vec![
                ("web-0", "node-1", "10.244.1.2".to_string()),
                ("web-1", "node-2", "10.244.2.2".to_string()),
                ("web-2", "node-1", "10.244.1.3".to_string()),
            ]
        );
        assert_eq!(p.nodes[1].gateway.to_string(), "10.244.2.1");
        assert_eq!(
            p.pods[0].containers[0].command,
            vec!["spar", "echo", "serve", "--port", "8080"]
        );
        assert!(
            p.pods[0].containers[0]
                .env
                .contains(&("VERSION".into(), "v1".into()))
        );
        let svc = &p.services[0];
        assert_eq!(svc.vip.to_string(), "10.96.0.10");
        assert_eq!(svc.ports[0].endpoints.len(), 3);
        assert_eq!(
            svc.ports[0].endpoints[0].1, 8080,
            "named targetPort resolves to the container port"
        );
    }

    #[test]
    fn rejects_clashing_and_foreign_vips() {
        let text = format!(
            "{MESH}---\napiVersion: v1\nkind: Service\nmetadata: {{name: a, namespace: shop}}\nspec: {{clusterIP: 10.96.0.10, ports: [{{port: 1}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: b, namespace: shop}}\nspec: {{clusterIP: 192.168.0.1, ports: [{{port: 1}}]}}\n"
        );
        let err = plan(&resources(&text), &BoxSpec::default())
            .expect_err("invalid")
            .to_string();
        assert!(err.contains("share the virtual IP 10.96.0.10"), "{err}");
        assert!(
            err.contains("192.168.0.1 is not in the service CIDR"),
            "{err}"
        );
    }
}
