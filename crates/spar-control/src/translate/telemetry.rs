//! Istio's Telemetry API -> what one sidecar records beyond metrics: access logging.
//!
//! Istio's hierarchy: a Telemetry in the root namespace without a selector is the mesh's
//! default, one in the pod's namespace without a selector overrides it for that namespace, and
//! one whose selector matches the pod overrides both. Each level decides only the modes (client,
//! server) its `accessLogging` entries name; the rest is inherited. With no Telemetry at all,
//! nothing is logged, as in Istio's default profile. Where several resources sit at one level,
//! Istio takes the oldest; the registry has no creation times, so the first by name decides.

use spar_model::istio::telemetry::{AccessLogging, Telemetry};
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
            Spec::Telemetry(t) => Some((r.namespace().to_string(), r.name().to_string(), t)),
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
    for (ns, name, t) in [root_level, ns_level, workload_level].into_iter().flatten() {
        if t.access_logging.is_empty() {
            continue;
        }
        out.sources.push(format!("{ns}/{name}"));
        for entry in &t.access_logging {
            apply(&mut out, entry);
        }
    }
    out
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
}
