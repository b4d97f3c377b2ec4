//! The delta ADS client: subscribe to addresses and authorizations, apply updates and
//! removals, ACK or NACK each response, and publish a new `State`. When the control plane is
//! unreachable the last state stays in force; on reconnect it sends the versions it holds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prost::Message;
use spar_xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use spar_xds::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status as RpcStatus,
};
use spar_xds::l7::ServiceRoutes;
use spar_xds::security::Authorization;
use spar_xds::workload::{Address, Service, Workload, address};
use spar_xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE, L7_TYPE, POLICY_TYPE, TELEMETRY_TYPE};
use tokio::sync::{mpsc, watch};

use crate::control::ControlPlane;
use crate::snapshot::Snapshot;

#[derive(Default)]
struct Held {
    workloads: BTreeMap<String, Workload>,
    services: BTreeMap<String, Service>,
    policies: BTreeMap<String, Authorization>,
    l7: BTreeMap<String, Arc<crate::l7::config::Service>>,
    telemetry: Option<spar_xds::l7::Telemetry>,
    security: BTreeMap<String, Arc<crate::security::Compiled>>,
    versions: HashMap<String, HashMap<String, String>>,
    /// Types that have had their first response (kept across reconnects).
    seen: std::collections::HashSet<String>,
}

/// Keep `state` in sync with the control plane, forever. `changed` ticks after each update.
/// Sidecars (`l7`) also subscribe to Spar's L7 routing.
pub async fn run(
    control: ControlPlane,
    node_id: String,
    l7: bool,
    state: Arc<ArcSwap<Snapshot>>,
    changed: watch::Sender<u64>,
) {
    let mut held = Held::default();
    let mut backoff = Duration::from_millis(200);
    let mut generation = 0u64;
    loop {
        match session(
            &control,
            &node_id,
            l7,
            &mut held,
            &state,
            &changed,
            &mut generation,
        )
        .await
        {
            Ok(()) => tracing::warn!("control plane closed the xDS stream; reconnecting"),
            Err(e) => {
                tracing::warn!(error = %e, "xDS stream failed; keeping the last config and retrying")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn session(
    control: &ControlPlane,
    node_id: &str,
    l7: bool,
    held: &mut Held,
    state: &ArcSwap<Snapshot>,
    changed: &watch::Sender<u64>,
    generation: &mut u64,
) -> Result<(), String> {
    let bearer = control.bearer().map_err(|e| e.to_string())?;
    let channel = control.channel().map_err(|e| e.to_string())?;
    let mut client = AggregatedDiscoveryServiceClient::with_interceptor(
        channel,
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        },
    )
    .max_decoding_message_size(spar_xds::MAX_MESSAGE);
    let (tx, rx) = mpsc::channel(16);
    let types: &[&str] = if l7 {
        &[
            ADDRESS_TYPE,
            AUTHORIZATION_TYPE,
            L7_TYPE,
            TELEMETRY_TYPE,
            POLICY_TYPE,
        ]
    } else {
        &[ADDRESS_TYPE, AUTHORIZATION_TYPE]
    };
    for &type_url in types {
        let initial_resource_versions = held
            .versions
            .get(type_url)
            .map(|v| v.clone().into_iter().collect())
            .unwrap_or_default();
        let req = DeltaDiscoveryRequest {
            node: Some(Node {
                id: node_id.to_string(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            initial_resource_versions,
            ..Default::default()
        };
        tx.send(req).await.map_err(|e| e.to_string())?;
    }
    let mut stream = client
        .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    tracing::info!(addr = %control.addr, "xDS stream open");
    // Parts of a split delta, by type, kept until the last one: the delta is applied whole
    // or not at all, as one response would be.
    let mut parts: HashMap<String, DeltaDiscoveryResponse> = HashMap::new();
    while let Some(resp) = stream
        .message()
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
    {
        if resp.system_version_info.ends_with(spar_xds::MORE_FOLLOWS) {
            let ack = DeltaDiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            };
            let whole = parts.entry(resp.type_url.clone()).or_default();
            whole.resources.extend(resp.resources);
            whole.removed_resources.extend(resp.removed_resources);
            tx.send(ack).await.map_err(|e| e.to_string())?;
            continue;
        }
        let resp = match parts.remove(&resp.type_url) {
            Some(mut whole) => {
                whole.resources.extend(resp.resources);
                whole.removed_resources.extend(resp.removed_resources);
                DeltaDiscoveryResponse {
                    system_version_info: resp.system_version_info,
                    type_url: resp.type_url,
                    nonce: resp.nonce,
                    ..whole
                }
            }
            None => resp,
        };
        let ack = match apply(held, &resp) {
            Ok(problems) => {
                held.seen.insert(resp.type_url.clone());
                // Nothing is served before every subscribed type has arrived: a pod must
                // never be served in a window without its policies.
                if types.iter().all(|t| held.seen.contains(*t)) {
                    *generation += 1;
                    let next = Snapshot::build(
                        held.workloads.clone(),
                        held.services.clone(),
                        held.policies.clone(),
                        held.l7.clone(),
                        held.telemetry.clone().unwrap_or_default(),
                        crate::security::Config::build(held.security.values().map(|c| &**c)),
                    );
                    state.store(Arc::new(next));
                    let _ = changed.send(*generation);
                }
                if problems.is_empty() {
                    DeltaDiscoveryRequest {
                        type_url: resp.type_url.clone(),
                        response_nonce: resp.nonce.clone(),
                        ..Default::default()
                    }
                } else {
                    let e = problems.join("; ");
                    tracing::warn!(type_url = %resp.type_url, error = %e, "policies this proxy cannot compile deny everything until fixed (NACK)");
                    nack(&resp, e)
                }
            }
            Err(e) => {
                tracing::warn!(type_url = %resp.type_url, error = %e, "rejecting config (NACK); keeping the last good one");
                nack(&resp, e)
            }
        };
        tx.send(ack).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn nack(resp: &DeltaDiscoveryResponse, message: String) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: resp.type_url.clone(),
        response_nonce: resp.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message,
            details: vec![],
        }),
        ..Default::default()
    }
}

/// Apply one response, all or nothing: a resource that does not decode rejects the response.
/// Security policies are the exception: keeping the last good version of a policy that no
/// longer compiles could leave a new DENY unenforced, so such a policy is applied as
/// deny-everything and reported (`Ok` with problems: applied, but NACKed).
fn apply(held: &mut Held, resp: &DeltaDiscoveryResponse) -> Result<Vec<String>, String> {
    let mut problems = Vec::new();
    let mut workloads = Vec::new();
    let mut services = Vec::new();
    let mut policies = Vec::new();
    let mut l7 = Vec::new();
    let mut telemetry = None;
    let mut security = Vec::new();
    for r in &resp.resources {
        let body = r
            .resource
            .as_ref()
            .ok_or_else(|| format!("resource {} has no body", r.name))?;
        match resp.type_url.as_str() {
            ADDRESS_TYPE => match Address::decode(body.value.as_slice())
                .map_err(|e| format!("{}: {e}", r.name))?
                .r#type
            {
                Some(address::Type::Workload(w)) => workloads.push((r.name.clone(), w)),
                Some(address::Type::Service(s)) => services.push((r.name.clone(), s)),
                None => return Err(format!("{}: empty address", r.name)),
            },
            AUTHORIZATION_TYPE => policies.push((
                r.name.clone(),
                Authorization::decode(body.value.as_slice())
                    .map_err(|e| format!("{}: {e}", r.name))?,
            )),
            L7_TYPE => {
                let sr = ServiceRoutes::decode(body.value.as_slice())
                    .map_err(|e| format!("{}: {e}", r.name))?;
                let compiled = crate::l7::config::compile(&sr).map_err(|e| e.to_string())?;
                l7.push((r.name.clone(), Arc::new(compiled)));
            }
            POLICY_TYPE => {
                let p = spar_xds::l7::Policy::decode(body.value.as_slice())
                    .map_err(|e| format!("{}: {e}", r.name))?;
                let compiled = crate::security::compile(&p).unwrap_or_else(|e| {
                    problems.push(e.to_string());
                    crate::security::invalid(&p, &e)
                });
                security.push((r.name.clone(), Arc::new(compiled)));
            }
            TELEMETRY_TYPE => {
                telemetry = Some(
                    spar_xds::l7::Telemetry::decode(body.value.as_slice())
                        .map_err(|e| format!("{}: {e}", r.name))?,
                );
            }
            other => return Err(format!("unexpected type {other}")),
        }
    }
    let versions = held.versions.entry(resp.type_url.clone()).or_default();
    for r in &resp.resources {
        versions.insert(r.name.clone(), r.version.clone());
    }
    for n in &resp.removed_resources {
        versions.remove(n);
        // Names are per type: an L7 resource is named like its service's address.
        if resp.type_url == ADDRESS_TYPE {
            held.workloads.remove(n);
            held.services.remove(n);
        }
        if resp.type_url == AUTHORIZATION_TYPE {
            held.policies.remove(n);
        }
        if resp.type_url == L7_TYPE {
            held.l7.remove(n);
        }
        if resp.type_url == TELEMETRY_TYPE {
            held.telemetry = None;
        }
        if resp.type_url == POLICY_TYPE {
            held.security.remove(n);
        }
    }
    held.security.extend(security);
    held.workloads.extend(workloads);
    held.services.extend(services);
    held.policies.extend(policies);
    held.l7.extend(l7);
    if telemetry.is_some() {
        held.telemetry = telemetry;
    }
    Ok(problems)
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use spar_xds::discovery::Resource;

    fn l7_response(name: &str, vs: serde_json::Value) -> DeltaDiscoveryResponse {
        let sr = ServiceRoutes {
            namespace: "ns".into(),
            hostname: "web.ns.svc.cluster.local".into(),
            virtual_service: vs.to_string(),
            virtual_service_name: "ns/web".into(),
            ..Default::default()
        };
        DeltaDiscoveryResponse {
            type_url: L7_TYPE.into(),
            nonce: "1".into(),
            resources: vec![Resource {
                version: "v".into(),
                name: name.into(),
                resource: Some(spar_xds::to_any(L7_TYPE, &sr)),
                aliases: vec![],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn l7_config_the_engine_cannot_apply_is_refused_and_the_last_good_stays() {
        let mut held = Held::default();
        let good = serde_json::json!({"hosts": ["web.ns.svc.cluster.local"],
            "http": [{"name": "good", "route": [{"destination": {"host": "web.ns.svc.cluster.local"}}]}]});
        apply(&mut held, &l7_response("ns/web.ns.svc.cluster.local", good)).expect("applies");
        let bad = serde_json::json!({"hosts": ["web.ns.svc.cluster.local"],
            "http": [{"match": [{"uri": {"regex": "("}}], "route": [{"destination": {"host": "web"}}]}]});
        let e =
            apply(&mut held, &l7_response("ns/web.ns.svc.cluster.local", bad)).expect_err("NACK");
        assert!(e.contains("regex") || e.contains("("), "{e}");
        let svc = &held.l7["ns/web.ns.svc.cluster.local"];
        assert_eq!(
            svc.http[0].name, "good",
            "the last good config stays in force"
        );
        assert_eq!(held.versions[L7_TYPE]["ns/web.ns.svc.cluster.local"], "v");
    }

    #[test]
    fn telemetry_is_held_until_removed_and_a_bad_one_is_refused() {
        let mut held = Held::default();
        let t = spar_xds::l7::Telemetry {
            access_log_client: true,
            ..Default::default()
        };
        let mut resp = DeltaDiscoveryResponse {
            type_url: TELEMETRY_TYPE.into(),
            resources: vec![Resource {
                version: "v".into(),
                name: spar_xds::TELEMETRY_NAME.into(),
                resource: Some(spar_xds::to_any(TELEMETRY_TYPE, &t)),
                aliases: vec![],
            }],
            ..Default::default()
        };
        apply(&mut held, &resp).expect("ACK");
        assert_eq!(held.telemetry.as_ref(), Some(&t));
        // Bytes that do not decode: NACK, and the last good settings stay.
        resp.resources[0].resource = Some(prost_types::Any {
            type_url: TELEMETRY_TYPE.into(),
            value: vec![0xff, 0xff],
        });
        apply(&mut held, &resp).expect_err("NACK");
        assert_eq!(held.telemetry.as_ref(), Some(&t));
        let removed = DeltaDiscoveryResponse {
            type_url: TELEMETRY_TYPE.into(),
            removed_resources: vec![spar_xds::TELEMETRY_NAME.into()],
            ..Default::default()
        };
        apply(&mut held, &removed).expect("ACK");
        assert_eq!(held.telemetry, None, "removed: back to no access logs");
    }

    #[test]
    fn a_policy_that_does_not_compile_denies_everything_and_is_reported() {
        let mut held = Held::default();
        let policy = |spec: &str| spar_xds::l7::Policy {
            namespace: "ns".into(),
            name: "deny-admin".into(),
            kind: "AuthorizationPolicy".into(),
            spec: spec.into(),
            ..Default::default()
        };
        let resp = |p: &spar_xds::l7::Policy| DeltaDiscoveryResponse {
            type_url: POLICY_TYPE.into(),
            nonce: "1".into(),
            resources: vec![Resource {
                version: "v".into(),
                name: "AuthorizationPolicy/ns/deny-admin".into(),
                resource: Some(spar_xds::to_any(POLICY_TYPE, p)),
                aliases: vec![],
            }],
            ..Default::default()
        };
        // A path template the engine cannot read.
        let bad =
            policy(r#"{"action":"DENY","rules":[{"to":[{"operation":{"paths":["/a/{**}/b"]}}]}]}"#);
        let problems = apply(&mut held, &resp(&bad)).expect("applied");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("deny-admin"), "{problems:?}");
        let config = crate::security::Config::build(held.security.values().map(|c| &**c));
        let facts = crate::security::authz::Facts {
            source_ip: [10, 0, 0, 1].into(),
            remote_ip: [10, 0, 0, 1].into(),
            principal: Some("cluster.local/ns/ns/sa/client"),
            namespace: Some("ns"),
            dest_ip: [10, 0, 0, 2].into(),
            dest_port: 9080,
            sni: crate::security::authz::Sni::Unknowable,
            http: None,
        };
        let v = crate::security::authz::evaluate(config.authz.iter(), &facts);
        assert!(
            matches!(v.decision, crate::security::authz::Decision::Deny { .. }),
            "a policy that does not compile fails closed: {v:?}"
        );
        // A good version replaces it.
        let good =
            policy(r#"{"action":"DENY","rules":[{"from":[{"source":{"namespaces":["other"]}}]}]}"#);
        assert!(apply(&mut held, &resp(&good)).expect("applied").is_empty());
        let config = crate::security::Config::build(held.security.values().map(|c| &**c));
        let v = crate::security::authz::evaluate(config.authz.iter(), &facts);
        assert_eq!(v.decision, crate::security::authz::Decision::Allow);
    }
}
