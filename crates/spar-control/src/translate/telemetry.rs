//! Istio's Telemetry API -> what one sidecar records beyond metrics: access logging and
//! tracing (spans to a MeshConfig `opentelemetry` or `zipkin` extension provider).
//!
//! Istio's hierarchy: a Telemetry in the root namespace without a selector is the mesh's
//! default, one in the pod's namespace without a selector overrides it for that namespace, and
//! one whose selector matches the pod overrides both. Each level decides only the modes (client,
//! server) its `accessLogging` entries name; the rest is inherited. With no Telemetry at all,
//! nothing is logged, as in Istio's default profile. Where several resources sit at one level,
//! Istio takes the oldest; the registry has no creation times, so the first by name decides.

use spar_model::istio::mesh::MeshConfig;
use spar_model::istio::telemetry::{AccessLogging, Telemetry, Tracing};
use spar_model::{Spec, labels_match};
use spar_xds::l7 as xl7;

use crate::registry::{Pod, Registry};

/// The providers that write to the proxy's standard output. Istio's built-in one is named
/// `envoy`; an empty provider list means the mesh's default provider, which is that one here.
const STDOUT_PROVIDERS: &[&str] = &["envoy", "stdout", "file"];

/// The telemetry settings of the sidecar serving `pod`.
pub fn for_pod(reg: &Registry, pod: &Pod<'_>) -> xl7::Telemetry {
    let root = reg.mesh.root_namespace.as_str();
    let all: Vec<(String, String, &Telemetry)> = reg
        .of_kind(spar_model::Kind::Telemetry)
        .filter_map(|r| match &r.spec {
            Spec::Telemetry(t) => Some((r.namespace().to_string(), r.name().to_string(), &**t)),
            _ => None,
        })
        .collect();
    // targetRef(s) bind a Telemetry to a waypoint or gateway, never to a sidecar.
    let unbound = |t: &Telemetry| t.target_ref.is_none() && t.target_refs.is_empty();
    let root_level = all
        .iter()
        .find(|(ns, _, t)| ns == root && t.selector.is_none() && unbound(t));
    let ns_level = all
        .iter()
        .find(|(ns, _, t)| ns == pod.namespace && ns != root && t.selector.is_none() && unbound(t));
    let workload_level = all.iter().find(|(ns, _, t)| {
        (ns == pod.namespace || ns == root)
            && t.selector
                .as_ref()
                .is_some_and(|s| labels_match(&s.match_labels, pod.labels))
    });
    let mut out = xl7::Telemetry::default();
    let mut tracing: Option<&Tracing> = None;
    for (ns, name, t) in [root_level, ns_level, workload_level].into_iter().flatten() {
        if t.access_logging.is_empty() && t.tracing.is_empty() {
            continue;
        }
        out.sources.push(format!("{ns}/{name}"));
        for entry in &t.access_logging {
            apply(&mut out, entry);
        }
        // The most specific level that says anything about tracing decides it whole.
        if let Some(first) = t.tracing.first() {
            tracing = Some(first);
        }
    }
    if let Some(t) = tracing {
        out.tracing = tracing_for(&crate::translate::security::mesh_config(reg), t);
    }
    out
}

/// A Telemetry `tracing` entry with its provider resolved; `None` when it turns reporting
/// off or names no provider the mesh config defines (then no spans, as in Istio).
pub fn tracing_for(mesh: &MeshConfig, t: &Tracing) -> Option<xl7::Tracing> {
    if t.disable_span_reporting == Some(true) {
        return None;
    }
    let names: Vec<String> = if t.providers.is_empty() {
        mesh.default_tracing_providers()
    } else {
        t.providers.iter().map(|p| p.name.clone()).collect()
    };
    // Istio reports to one provider: the first it can use.
    let (name, kind, spec) = names.iter().find_map(|n| {
        let p = mesh.extension_providers.iter().find(|p| &p.name == n)?;
        p.kinds
            .iter()
            .find(|(k, _)| spar_model::istio::mesh::TRACING_KINDS.contains(&k.as_str()))
            .map(|(k, v)| (n.clone(), k.clone(), v.clone()))
    })?;
    let service = spec.get("service")?.as_str()?.to_string();
    let port = match spec.get("port")? {
        serde_json::Value::Number(n) => n.as_u64()?,
        serde_json::Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    let http = spec.get("http");
    let (protocol, path) = match (kind.as_str(), http) {
        ("zipkin", _) => (
            "zipkin",
            spec.get("path")
                .and_then(|p| p.as_str())
                .unwrap_or("/api/v2/spans"),
        ),
        (_, Some(h)) => (
            "otlp_http",
            h.get("path")
                .and_then(|p| p.as_str())
                .unwrap_or("/v1/traces"),
        ),
        _ => ("otlp_grpc", ""),
    };
    let (client, server) = match t.matches.as_ref().and_then(|m| m.mode.as_deref()) {
        Some("CLIENT") => (true, false),
        Some("SERVER") => (false, true),
        _ => (true, true),
    };
    let custom_tags = t
        .custom_tags
        .iter()
        .map(|(tag, c)| {
            let mut out = xl7::CustomTag {
                tag: tag.clone(),
                ..Default::default()
            };
            if let Some(l) = &c.literal {
                out.literal = l.value.clone();
            } else if let Some(h) = &c.header {
                out.header = h.name.clone();
                out.default_value = h.default_value.clone().unwrap_or_default();
            } else if let Some(e) = &c.environment {
                out.environment = e.name.clone();
                out.default_value = e.default_value.clone().unwrap_or_default();
            }
            out
        })
        .collect();
    Some(xl7::Tracing {
        provider: name,
        protocol: protocol.into(),
        service,
        port: u32::try_from(port).ok()?,
        path: path.into(),
        sampling_percent: t
            .random_sampling_percentage
            .unwrap_or_else(|| mesh.default_sampling())
            .clamp(0.0, 100.0),
        client,
        server,
        custom_tags,
    })
}

fn apply(out: &mut xl7::Telemetry, entry: &AccessLogging) {
    let (client, server) = match entry.matches.as_ref().and_then(|m| m.mode.as_deref()) {
        Some("CLIENT") => (true, false),
        Some("SERVER") => (false, true),
        _ => (true, true), // CLIENT_AND_SERVER, the default
    };
    let disabled = entry.disabled.unwrap_or(false);
    let stdout = entry.providers.is_empty()
        || entry
            .providers
            .iter()
            .any(|p| STDOUT_PROVIDERS.contains(&p.name.as_str()));
    // A list of only unknown providers (an OpenTelemetry collector, say) changes nothing here:
    // Spar cannot export to it, and logging to stdout instead would surprise.
    if !disabled && !stdout {
        return;
    }
    let on = !disabled;
    if client {
        out.access_log_client = on;
    }
    if server {
        out.access_log_server = on;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MeshSettings;

    /// The pods every case looks at: a/web-1, a/db-1, b/web-1.
    const PODS: [(&str, &str, &str); 3] = [
        ("a", "web-1", "web"),
        ("a", "db-1", "db"),
        ("b", "web-1", "web"),
    ];

    fn pods() -> String {
        PODS.iter()
            .enumerate()
            .map(|(i, (ns, name, app))| {
                format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\n\
                     spec: {{serviceAccountName: {app}, nodeName: n1}}\nstatus: {{podIP: 10.0.1.{}}}\n---\n",
                    i + 1
                )
            })
            .collect()
    }

    fn tel(ns: &str, name: &str, spec: &str) -> String {
        format!(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n---\n"
        )
    }

    /// (client, server) access logging.
    type Modes = (bool, bool);

    /// The modes of each of `PODS`.
    fn modes(telemetries: &str) -> Vec<Modes> {
        let l = spar_model::load_str("t", &format!("{telemetries}{}", pods()));
        assert!(!l.has_errors(), "{:?}", l.problems);
        let reg = Registry::new(
            MeshSettings::default(),
            l.resources.into_iter().map(|(r, _)| r),
        );
        PODS.iter()
            .map(|(ns, name, _)| {
                let pod = reg
                    .pods()
                    .find(|p| p.namespace == *ns && p.name == *name)
                    .expect("pod");
                let t = for_pod(&reg, &pod);
                (t.access_log_client, t.access_log_server)
            })
            .collect()
    }

    #[test]
    fn access_logging_follows_istio_telemetry_hierarchy() {
        let on = (true, true);
        let off = (false, false);
        let cases: Vec<(&str, String, Vec<Modes>)> = vec![
            (
                "nothing configured logs nothing",
                String::new(),
                vec![off, off, off],
            ),
            (
                "mesh-wide default from the root namespace",
                tel(
                    "istio-system",
                    "mesh-default",
                    "{accessLogging: [{providers: [{name: envoy}]}]}",
                ),
                vec![on, on, on],
            ),
            (
                "empty providers mean the default provider",
                tel("istio-system", "mesh-default", "{accessLogging: [{}]}"),
                vec![on, on, on],
            ),
            (
                "a namespace turns it off for itself only",
                tel(
                    "istio-system",
                    "mesh-default",
                    "{accessLogging: [{providers: [{name: envoy}]}]}",
                ) + &tel("a", "quiet", "{accessLogging: [{disabled: true}]}"),
                vec![off, off, on],
            ),
            (
                "a selector overrides its namespace, for matching pods only",
                tel("a", "ns", "{accessLogging: [{disabled: true}]}")
                    + &tel(
                        "a",
                        "web",
                        "{selector: {matchLabels: {app: web}}, accessLogging: [{providers: [{name: envoy}]}]}",
                    ),
                vec![on, off, off],
            ),
            (
                "a mode decides one side and inherits the other",
                tel("istio-system", "mesh-default", "{accessLogging: [{}]}")
                    + &tel(
                        "a",
                        "server-only",
                        "{accessLogging: [{match: {mode: CLIENT}, disabled: true}]}",
                    ),
                vec![(false, true), (false, true), on],
            ),
            (
                "a Telemetry without accessLogging inherits",
                tel("istio-system", "mesh-default", "{accessLogging: [{}]}")
                    + &tel(
                        "a",
                        "tracing-only",
                        "{tracing: [{randomSamplingPercentage: 1.0}]}",
                    ),
                vec![on, on, on],
            ),
            (
                "only an unknown provider changes nothing",
                tel(
                    "a",
                    "otel",
                    "{accessLogging: [{providers: [{name: otel-collector}]}]}",
                ),
                vec![off, off, off],
            ),
            (
                "a Telemetry bound to a waypoint is not a sidecar's",
                tel(
                    "a",
                    "wp",
                    "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], accessLogging: [{}]}",
                ),
                vec![off, off, off],
            ),
        ];
        for (name, yaml, want) in cases {
            assert_eq!(modes(&yaml), want, "{name}");
        }
    }

    fn tracing(mesh: &str, tracing: &str) -> Option<xl7::Tracing> {
        let m = MeshConfig::parse(mesh).expect("mesh config");
        let l = spar_model::load_str(
            "t",
            &tel(
                "istio-system",
                "mesh-default",
                &format!("{{tracing: [{tracing}]}}"),
            ),
        );
        assert!(!l.has_errors(), "{:?}", l.problems);
        let Spec::Telemetry(t) = &l.resources[0].0.spec else {
            panic!("a Telemetry")
        };
        tracing_for(&m, &t.tracing[0])
    }

    #[test]
    fn tracing_resolves_providers_sampling_modes_and_tags() {
        let mesh = "extensionProviders:
- {name: otel, opentelemetry: {service: otel.istio-system.svc.cluster.local, port: 4317}}
- {name: otel-http, opentelemetry: {service: c.ns.svc.cluster.local, port: 4318, http: {path: /v1/t}}}
- {name: zip, zipkin: {service: zipkin.ns, port: \"9411\"}}
- {name: authz, envoyExtAuthzHttp: {service: a, port: 1}}
defaultProviders: {tracing: [zip]}
defaultConfig: {tracing: {sampling: 5}}
";
        let t = tracing(
            mesh,
            "{providers: [{name: otel}], randomSamplingPercentage: 25}",
        )
        .expect("tracing");
        assert_eq!(
            (
                t.protocol.as_str(),
                t.service.as_str(),
                t.port,
                t.sampling_percent
            ),
            (
                "otlp_grpc",
                "otel.istio-system.svc.cluster.local",
                4317,
                25.0
            )
        );
        assert!(t.client && t.server);
        let t = tracing(
            mesh,
            "{providers: [{name: otel-http}], match: {mode: SERVER}}",
        )
        .expect("tracing");
        assert_eq!(
            (t.protocol.as_str(), t.path.as_str()),
            ("otlp_http", "/v1/t")
        );
        assert_eq!(t.sampling_percent, 5.0, "defaultConfig.tracing.sampling");
        assert!(!t.client && t.server);
        // No providers: MeshConfig's defaultProviders.
        let t = tracing(mesh, "{customTags: {team: {literal: {value: a}}, user: {header: {name: end-user, defaultValue: anon}}}}")
            .expect("tracing");
        assert_eq!(
            (t.protocol.as_str(), t.port, t.path.as_str()),
            ("zipkin", 9411, "/api/v2/spans")
        );
        assert_eq!(t.custom_tags.len(), 2);
        assert_eq!(t.custom_tags[1].header, "end-user");
        assert_eq!(t.custom_tags[1].default_value, "anon");
        // Off, unknown, or not a tracing provider: no spans.
        assert_eq!(
            tracing(
                mesh,
                "{providers: [{name: otel}], disableSpanReporting: true}"
            ),
            None
        );
        assert_eq!(tracing(mesh, "{providers: [{name: nope}]}"), None);
        assert_eq!(tracing(mesh, "{providers: [{name: authz}]}"), None);
        assert_eq!(tracing("", "{}"), None, "no default provider, no spans");
        // Istio's default sampling without MeshConfig's is 1%.
        let t = tracing(
            "extensionProviders: [{name: o, opentelemetry: {service: x, port: 1}}]",
            "{providers: [{name: o}]}",
        )
        .expect("tracing");
        assert_eq!(t.sampling_percent, 1.0);
    }
}
