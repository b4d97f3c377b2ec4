//! Who is calling, and which certificate they may have. `authorize_identity` is the whole
//! policy: pure, table-tested, failing closed.

use spar_identity::{Claims, Identity, Subject, TokenIssuer};
use spar_model::validate::{is_dns_label, is_dns_subdomain};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::registry::Registry;

/// Verify the `authorization: Bearer <token>` of a call.
pub fn caller(md: &MetadataMap, tokens: &TokenIssuer) -> Result<Claims, Status> {
    let header = md.get("authorization").ok_or_else(|| {
        Status::unauthenticated("missing bearer token: send `authorization: Bearer <token>`")
    })?;
    let value = header
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization header is not text"))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| Status::unauthenticated("authorization header must be `Bearer <token>`"))?;
    tokens
        .verify(token.trim())
        .map_err(|e| Status::unauthenticated(e.to_string()))
}

/// The identity `subject` may get, given the identity it asked to impersonate (if any).
pub fn authorize_identity(
    reg: &Registry,
    subject: &Subject,
    impersonate: Option<&str>,
) -> Result<Identity, Status> {
    let td = &reg.mesh.trust_domain;
    match subject {
        Subject::Pod {
            namespace,
            name,
            service_account,
        } => {
            let pod = reg.pod(namespace, name).ok_or_else(|| {
                Status::permission_denied(format!("pod {namespace}/{name} is not in the registry"))
            })?;
            if pod.service_account() != service_account {
                return Err(Status::permission_denied(format!(
                    "pod {namespace}/{name} now runs as service account {}, not {service_account}",
                    pod.service_account()
                )));
            }
            let own = Identity::new(td, namespace, service_account);
            // Only Kubernetes names are signed (namespace a DNS label, pod and service
            // account DNS subdomains), and only names that read back as exactly this
            // identity: a service account like `x/ns/victim/sa/admin` would otherwise pose
            // as another's path.
            let names_ok = is_dns_label(namespace)
                && is_dns_subdomain(name)
                && is_dns_subdomain(service_account);
            if !names_ok || own.to_string().parse::<Identity>().ok().as_ref() != Some(&own) {
                return Err(Status::invalid_argument(format!(
                    "{namespace}/{service_account} is not a valid namespace and service account name; no certificate is issued"
                )));
            }
            match impersonate {
                Some(want) if want != own.to_string() => Err(Status::permission_denied(format!(
                    "a workload token may only get its own identity {own}, not {want}"
                ))),
                _ => Ok(own),
            }
        }
        Subject::Node { name: node } => {
            let want = impersonate.ok_or_else(|| {
                Status::invalid_argument("node proxies must name the identity they want in metadata.ImpersonatedIdentity")
            })?;
            let id: Identity = want
                .parse()
                .map_err(|e: spar_identity::Error| Status::invalid_argument(e.to_string()))?;
            if !is_dns_label(&id.namespace) || !is_dns_subdomain(&id.service_account) {
                return Err(Status::invalid_argument(format!(
                    "{id}: namespace and service account must be Kubernetes names; no certificate is issued"
                )));
            }
            if &id.trust_domain != td {
                return Err(Status::permission_denied(format!(
                    "{id} is not in trust domain {td}"
                )));
            }
            let placed = reg
                .pods_on_node(node)
                .any(|p| p.namespace == id.namespace && p.service_account() == id.service_account);
            if !placed {
                return Err(Status::permission_denied(format!(
                    "node {node} runs no pod with service account {}/{}; it may not hold {id}",
                    id.namespace, id.service_account
                )));
            }
            Ok(id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MeshSettings;

    fn reg() -> Registry {
        let text = "
apiVersion: v1
kind: Pod
metadata: {name: sleep-1, namespace: default}
spec: {serviceAccountName: sleep, nodeName: node-1}
status: {podIP: 10.0.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop}
spec: {serviceAccountName: web, nodeName: node-2}
status: {podIP: 10.0.2.5}
";
        let l = spar_model::load_str("t", text);
        assert!(!l.has_errors(), "{:?}", l.problems);
        Registry::new(
            MeshSettings::default(),
            l.resources.into_iter().map(|(r, _)| r),
        )
    }

    fn pod(ns: &str, name: &str, sa: &str) -> Subject {
        Subject::Pod {
            namespace: ns.into(),
            name: name.into(),
            service_account: sa.into(),
        }
    }

    #[test]
    fn table() {
        let r = reg();
        let node1 = Subject::Node {
            name: "node-1".into(),
        };
        let sleep = "spiffe://cluster.local/ns/default/sa/sleep";
        let web = "spiffe://cluster.local/ns/shop/sa/web";
        let cases: Vec<(Subject, Option<&str>, Result<&str, tonic::Code>)> = vec![
            (pod("default", "sleep-1", "sleep"), None, Ok(sleep)),
            (pod("default", "sleep-1", "sleep"), Some(sleep), Ok(sleep)),
            (
                pod("default", "sleep-1", "sleep"),
                Some(web),
                Err(tonic::Code::PermissionDenied),
            ),
            (
                pod("default", "sleep-1", "admin"),
                None,
                Err(tonic::Code::PermissionDenied),
            ),
            (
                pod("default", "ghost", "sleep"),
                None,
                Err(tonic::Code::PermissionDenied),
            ),
            (node1.clone(), Some(sleep), Ok(sleep)),
            (node1.clone(), Some(web), Err(tonic::Code::PermissionDenied)),
            (node1.clone(), None, Err(tonic::Code::InvalidArgument)),
            (
                node1.clone(),
                Some("spiffe://evil.org/ns/default/sa/sleep"),
                Err(tonic::Code::PermissionDenied),
            ),
            (node1, Some("not-spiffe"), Err(tonic::Code::InvalidArgument)),
        ];
        for (subject, imp, want) in cases {
            let got = authorize_identity(&r, &subject, imp)
                .map(|i| i.to_string())
                .map_err(|s| s.code());
            assert_eq!(
                got,
                want.map(str::to_string),
                "{subject} asking for {imp:?}"
            );
        }
    }

    #[test]
    fn a_service_account_that_poses_as_a_path_gets_no_certificate() {
        // Validation refuses such a pod; the CA refuses it again if one got into a registry.
        let bad = "x/ns/victim/sa/admin";
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: default}}\nspec: {{serviceAccountName: '{bad}', nodeName: node-1}}\nstatus: {{podIP: 10.0.1.9}}\n"
        );
        let l = spar_model::load_str("t", &text);
        assert!(l.has_errors(), "validation names the bad service account");
        let doc = spar_model::yaml::parse_documents(&text).expect("yaml");
        let r = spar_model::resource::decode(&doc[0].value).expect("decodes");
        let reg = Registry::new(MeshSettings::default(), [r]);
        let e = authorize_identity(&reg, &pod("default", "p", bad), None).expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    }

    #[test]
    fn only_kubernetes_names_get_certificates() {
        // Each pod is in the registry as the token says, so only the name check can refuse.
        for (ns, sa, ok) in [
            ("default", "reviews", true),
            ("default", "bookinfo.reviews", true),
            ("default", "Reviews", false),
            ("default", "-reviews", false),
            ("default", "rev_iews", false),
            ("default", &"a".repeat(254), false),
            ("Default", "reviews", false),
            (&"n".repeat(64), "reviews", false),
            ("de.fault", "reviews", false),
        ] {
            let r = spar_model::resource::decode(&serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "namespace": ns},
                "spec": {"serviceAccountName": sa, "nodeName": "node-1"},
                "status": {"podIP": "10.0.1.9"}}))
            .expect("decodes");
            let reg = Registry::new(MeshSettings::default(), [r]);
            let got = authorize_identity(&reg, &pod(ns, "p", sa), None);
            assert_eq!(got.is_ok(), ok, "{ns}/{sa}: {got:?}");
        }
    }
}
