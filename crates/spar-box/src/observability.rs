//! Observability in the box, as Istio's addons and injector arrange it:
//!
//! - injection moves a sidecar pod's `prometheus.io/*` annotations to the proxy
//!   (`:15020/stats/prometheus`), and the proxy merges the application's metrics into its own
//!   (Istio's metrics merging);
//! - `spar up --observability` adds Istio's Prometheus addon: a Deployment and Service
//!   `istio-system/prometheus` (Debian's `prometheus` binary in a pod of its own, outside the
//!   mesh), reachable from the host at [`HOST_ADDRESS`]. Its scrape config is Istio's
//!   Kubernetes one (`kubernetes-pods`: keep pods annotated `prometheus.io/scrape`, port and
//!   path from the annotations, pod labels as target labels); without a Kubernetes API the
//!   pods come from a file-SD target file the box rewrites as pods come and go, carrying the
//!   `__meta_kubernetes_pod_*` labels Kubernetes SD would. Node proxies appear there as
//!   `istio-system/ztunnel-<node>` (their `:15020/metrics` on the node's address).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use spar_model::{Annotations, Kind, Labels, Resource};

use crate::Error;
use crate::plan::{Plan, PodPlan};
use crate::sandbox::Bind;
use crate::supervise::Confine;

pub const NAMESPACE: &str = "istio-system";
pub const NAME: &str = "prometheus";
pub const PORT: u16 = 9090;
/// Where the Prometheus pod sees the observability directory.
pub const MOUNT: &str = "/run/spar-observability";
/// The Prometheus pod's address on its link to the host.
pub const HOST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 2);
const HOST_END: &str = "spar-prom0";
const ROLE: &str = "prometheus";

const SCRAPE: &str = "prometheus.io/scrape";
const SCRAPE_PORT: &str = "prometheus.io/port";
const SCRAPE_PATH: &str = "prometheus.io/path";

/// The observability directory of a box.
pub fn dir(root: &Path) -> PathBuf {
    root.join("observability")
}

/// Istio's injector on a sidecar pod's annotations: unless the pod opted out
/// (`prometheus.io/scrape: "false"`), scraping goes to the proxy's merged endpoint, and what
/// the application asked for (scrape true with a port) is returned for the proxy to fetch.
pub fn inject_annotations(annotations: &mut Annotations) -> Option<(u16, String)> {
    if annotations.get(SCRAPE).is_some_and(|v| v == "false") {
        return None;
    }
    let app = (annotations.get(SCRAPE).is_some_and(|v| v == "true"))
        .then(|| annotations.get(SCRAPE_PORT)?.parse::<u16>().ok())
        .flatten()
        .map(|port| {
            let path = annotations
                .get(SCRAPE_PATH)
                .filter(|p| p.starts_with('/'))
                .cloned()
                .unwrap_or_else(|| "/metrics".into());
            (port, path)
        });
    annotations.insert(SCRAPE.into(), "true".into());
    annotations.insert(SCRAPE_PORT.into(), "15020".into());
    annotations.insert(SCRAPE_PATH.into(), "/stats/prometheus".into());
    app
}

/// The resources of Istio's Prometheus addon (those the user already wrote are kept).
pub fn expand(resources: &[Resource]) -> Result<Vec<Resource>, Error> {
    let exists = |kind: Kind, name: &str| {
        resources
            .iter()
            .any(|r| r.kind == kind && r.namespace() == NAMESPACE && r.name() == name)
    };
    let mut docs = Vec::new();
    if !resources
        .iter()
        .any(|r| r.kind == Kind::Namespace && r.name() == NAMESPACE)
    {
        docs.push(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE},
        }));
    }
    let labels = serde_json::json!({
        "app": NAME, "istio.io/dataplane-mode": "none", "sidecar.istio.io/inject": "false",
        crate::ingress::ROLE_LABEL: ROLE,
    });
    if !exists(Kind::Deployment, NAME) {
        docs.push(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {
                "selector": {"matchLabels": {"app": NAME}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"serviceAccountName": NAME, "containers": [{
                        "name": NAME,
                        "command": [
                            "prometheus",
                            format!("--config.file={MOUNT}/prometheus.yml"),
                            "--storage.tsdb.path=/tmp/prometheus",
                            "--storage.tsdb.retention.time=6h",
                            format!("--web.listen-address=0.0.0.0:{PORT}"),
                        ],
                        "ports": [{"containerPort": PORT}],
                    }]},
                },
            },
        }));
    }
    if !exists(Kind::Service, NAME) {
        docs.push(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {"selector": {"app": NAME}, "ports": [{"name": "http-web", "port": PORT}]},
        }));
    }
    docs.iter()
        .map(|d| {
            spar_model::resource::decode(d).map_err(|e| {
                Error::Invalid(format!("the Prometheus addon: {}: {}", e.path, e.message))
            })
        })
        .collect()
}

/// Whether `pod` is the box's Prometheus.
pub fn is_prometheus(pod: &PodPlan) -> bool {
    pod.labels
        .get(crate::ingress::ROLE_LABEL)
        .map(|v| v.as_str())
        == Some(ROLE)
}

/// The read-only volume of `pod`: the observability directory for Prometheus, none else.
pub fn volume(pod: &PodPlan, confine: &Confine) -> Option<Bind> {
    match (&confine.observability, is_prometheus(pod)) {
        (Some(dir), true) => Some(Bind {
            source: dir.clone(),
            target: MOUNT.into(),
        }),
        _ => None,
    }
}

/// Istio's `kubernetes-pods` scrape job over the box's target file.
pub fn prometheus_config() -> String {
    format!(
        r#"# Written by `spar up --observability`: Istio's kubernetes-pods job, pods from file SD.
global:
  scrape_interval: 5s
  scrape_timeout: 4s
  evaluation_interval: 15s
scrape_configs:
- job_name: kubernetes-pods
  honor_labels: true
  file_sd_configs:
  - files: ['{MOUNT}/targets/*.json']
    refresh_interval: 2s
  relabel_configs:
  - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
    action: keep
    regex: true
  - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]
    action: replace
    target_label: __metrics_path__
    regex: (.+)
  - source_labels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port]
    action: replace
    regex: ([^:]+)(?::\d+)?;(\d+)
    replacement: $1:$2
    target_label: __address__
  - action: labelmap
    regex: __meta_kubernetes_pod_label_(.+)
  - source_labels: [__meta_kubernetes_namespace]
    action: replace
    target_label: namespace
  - source_labels: [__meta_kubernetes_pod_name]
    action: replace
    target_label: pod
"#
    )
}

/// A Kubernetes label or annotation name as Kubernetes SD spells it in a meta label.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn target(
    ip: Ipv4Addr,
    namespace: &str,
    name: &str,
    node: &str,
    labels: &Labels,
    annotations: &Annotations,
) -> serde_json::Value {
    let mut meta: BTreeMap<String, String> = BTreeMap::new();
    meta.insert("__meta_kubernetes_namespace".into(), namespace.into());
    meta.insert("__meta_kubernetes_pod_name".into(), name.into());
    meta.insert("__meta_kubernetes_pod_ip".into(), ip.to_string());
    meta.insert("__meta_kubernetes_pod_node_name".into(), node.into());
    for (k, v) in labels {
        meta.insert(
            format!("__meta_kubernetes_pod_label_{}", sanitize(k)),
            v.to_string(),
        );
    }
    for (k, v) in annotations {
        meta.insert(
            format!("__meta_kubernetes_pod_annotation_{}", sanitize(k)),
            v.clone(),
        );
    }
    serde_json::json!({ "targets": [ip.to_string()], "labels": meta })
}

/// The file-SD targets of a plan: every pod, and each node proxy as Istio's ztunnel pod.
pub fn targets(plan: &Plan) -> String {
    let mut out: Vec<serde_json::Value> = plan
        .pods
        .iter()
        .map(|p| {
            target(
                p.ip,
                &p.namespace,
                &p.name,
                &p.node,
                &p.labels,
                &p.annotations,
            )
        })
        .collect();
    for n in &plan.nodes {
        let labels: Labels = [("app", "ztunnel"), ("spar.io/proxy", "node")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let annotations: Annotations = [
            (SCRAPE, "true"),
            (SCRAPE_PORT, "15020"),
            (SCRAPE_PATH, "/metrics"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        out.push(target(
            n.gateway,
            NAMESPACE,
            &format!("ztunnel-{}", n.name),
            &n.name,
            &labels,
            &annotations,
        ));
    }
    serde_json::to_string_pretty(&out).unwrap_or_default()
}

/// Write the config (once) and the targets (when they changed), whole files by rename:
/// Prometheus never reads half a file. World-readable: the Prometheus pod runs as nobody,
/// and nothing here is secret (addresses and labels).
pub fn write(root: &Path, plan: &Plan, last: &mut String) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = dir(root);
    let targets_dir = dir.join("targets");
    if !targets_dir.exists() {
        std::fs::create_dir_all(&targets_dir)?;
        for d in [&dir, &targets_dir] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        }
        write_file(&dir.join("prometheus.yml"), &prometheus_config())?;
    }
    let t = targets(plan);
    if t != *last {
        write_file(&targets_dir.join("pods.json"), &t)?;
        *last = t;
    }
    Ok(())
}

fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path)
}

/// Link the Prometheus pod to the host (a veth pair), so its UI and API are reachable from
/// the host at [`HOST_ADDRESS`]. Deleting the pod's namespace deletes the pair.
pub fn link_to_host(pod: &PodPlan) -> Result<(), Error> {
    let ip = crate::net::ip;
    ip(&[
        "link", "add", HOST_END, "type", "veth", "peer", "name", "host0", "netns", &pod.netns,
    ])?;
    ip(&["addr", "add", "10.254.0.1/30", "dev", HOST_END])?;
    ip(&["link", "set", HOST_END, "up"])?;
    let own = format!("{HOST_ADDRESS}/30");
    ip(&["-n", &pod.netns, "addr", "add", &own, "dev", "host0"])?;
    ip(&["-n", &pod.netns, "link", "set", "host0", "up"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Labels or annotations (`Name` or `String` maps), from pairs.
    fn labels<T: for<'a> From<&'a str> + Ord>(kv: &[(&str, &str)]) -> BTreeMap<T, T> {
        kv.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn injection_moves_scraping_to_the_proxy_as_istio_does() {
        // (annotations before, the app endpoint the proxy merges, scrape after)
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            Option<(u16, &'a str)>,
            Option<&'a str>,
        );
        let cases: &[Case] = &[
            (&[], None, Some("true")),
            (
                &[(SCRAPE, "true"), (SCRAPE_PORT, "9100")],
                Some((9100, "/metrics")),
                Some("true"),
            ),
            (
                &[(SCRAPE, "true"), (SCRAPE_PORT, "9100"), (SCRAPE_PATH, "/m")],
                Some((9100, "/m")),
                Some("true"),
            ),
            (&[(SCRAPE, "true")], None, Some("true")),
            (&[(SCRAPE, "true"), (SCRAPE_PORT, "x")], None, Some("true")),
            (
                &[(SCRAPE, "false"), (SCRAPE_PORT, "9100")],
                None,
                Some("false"),
            ),
        ];
        for (before, app, scrape) in cases {
            let mut a = labels(before);
            let got = inject_annotations(&mut a);
            assert_eq!(got, app.map(|(p, s)| (p, s.to_string())), "{before:?}");
            assert_eq!(a.get(SCRAPE).map(|v| v.as_str()), *scrape, "{before:?}");
            if *scrape == Some("true") {
                assert_eq!(a[SCRAPE_PORT], "15020");
                assert_eq!(a[SCRAPE_PATH], "/stats/prometheus");
            } else {
                assert_eq!(a[SCRAPE_PORT], "9100", "an opted-out pod keeps its own");
            }
        }
    }

    #[test]
    fn targets_carry_kubernetes_sd_meta_labels() {
        let mut a = labels(&[]);
        inject_annotations(&mut a);
        let t = target(
            Ipv4Addr::new(10, 244, 1, 3),
            "mesh",
            "reviews-v1-0",
            "node-1",
            &labels(&[("app", "reviews"), ("app.kubernetes.io/name", "r")]),
            &a,
        );
        assert_eq!(t["targets"][0], "10.244.1.3");
        let l = &t["labels"];
        assert_eq!(l["__meta_kubernetes_namespace"], "mesh");
        assert_eq!(l["__meta_kubernetes_pod_name"], "reviews-v1-0");
        assert_eq!(l["__meta_kubernetes_pod_label_app"], "reviews");
        assert_eq!(l["__meta_kubernetes_pod_label_app_kubernetes_io_name"], "r");
        assert_eq!(
            l["__meta_kubernetes_pod_annotation_prometheus_io_port"],
            "15020"
        );
        assert_eq!(
            l["__meta_kubernetes_pod_annotation_prometheus_io_path"],
            "/stats/prometheus"
        );
    }

    #[test]
    fn the_addon_is_a_pod_outside_the_mesh_with_a_service() {
        let r = expand(&[]).expect("expand");
        let kinds: Vec<Kind> = r.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [Kind::Namespace, Kind::Deployment, Kind::Service]);
        let dep = serde_json::to_string(&r[1].to_value()).expect("json");
        assert!(
            dep.contains("\"istio.io/dataplane-mode\":\"none\""),
            "{dep}"
        );
        assert!(
            dep.contains("\"sidecar.istio.io/inject\":\"false\""),
            "{dep}"
        );
        assert!(dep.contains("--config.file=/run/spar-observability/prometheus.yml"));
    }
}
