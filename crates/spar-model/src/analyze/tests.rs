use super::*;

fn run(text: &str) -> Vec<String> {
    let loaded = crate::load_str("broken.yaml", text);
    assert!(!loaded.has_errors(), "{:?}", loaded.problems);
    let resources: Vec<(Resource, Option<Origin>)> = loaded
        .resources
        .into_iter()
        .map(|(r, o)| (r, Some(o)))
        .collect();
    analyze(&resources).iter().map(|m| m.to_string()).collect()
}

const BROKEN: &str = include_str!("../../../spar/tests/fixtures/analyze-broken.yaml");

#[test]
fn each_finding_of_the_broken_set_with_its_code_resource_and_line() {
    let got = run(BROKEN);
    let want = [
        "Error [IST0101] (VirtualService shop/reviews broken.yaml:38) Referenced host not found: \"reviewz\"",
        "Error [IST0101] (VirtualService shop/reviews broken.yaml:38) Referenced host+subset in destinationrule not found: \"reviews+v3\"",
        "Error [SPAR0002] (PeerAuthentication shop/permissive broken.yaml:62) Conflicting PeerAuthentications for the same workloads (namespace-wide): strict, permissive; only one applies (Istio takes the oldest), merge them into one",
        "Error [SPAR0002] (PeerAuthentication shop/strict broken.yaml:56) Conflicting PeerAuthentications for the same workloads (namespace-wide): strict, permissive; only one applies (Istio takes the oldest), merge them into one",
        "Warning [IST0127] (AuthorizationPolicy shop/ratings-viewer broken.yaml:48) No matching workloads for this resource with the following labels: app=ratings",
        "Warning [SPAR0001] (DestinationRule shop/reviews broken.yaml:29) Subset \"v2\" (version=v2) matches no pod of reviews.shop.svc.cluster.local: requests routed to it fail with 503 no healthy upstream",
        "Warning [SPAR0003] (Namespace shop broken.yaml:3) Namespace is labelled for both sidecar injection and ambient mode: its pods get sidecars and the node proxy leaves them alone; remove one of the labels",
    ];
    for w in want {
        assert!(
            got.iter().any(|g| g == w),
            "missing:\n{w}\ngot:\n{}",
            got.join("\n")
        );
    }
    assert!(
        got.iter().any(|g| g.starts_with(
            "Info [IST0118] (Service shop/reviews broken.yaml:9) Port name \"web\" (port: 8080)"
        )),
        "{}",
        got.join("\n")
    );
    assert_eq!(got.len(), want.len() + 1, "{}", got.join("\n"));
}

#[test]
fn a_sound_config_has_nothing_to_say() {
    let fixed = "
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}, {name: tcp-db, port: 5432}, {name: x, port: 1, appProtocol: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v1, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  template:
    metadata: {labels: {app: reviews, version: v1}}
    spec: {containers: [{name: r, command: [x]}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: shop}
spec: {hosts: ['*.example.com'], ports: [{number: 443, name: tls, protocol: TLS}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec: {host: reviews.shop.svc.cluster.local, subsets: [{name: v1, labels: {version: v1}}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: api.example.com}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec: {selector: {matchLabels: {app: reviews}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: PERMISSIVE}}
";
    assert_eq!(run(fixed), Vec::<String>::new());
}
