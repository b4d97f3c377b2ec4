//! Random changes against full translation: after every change, each simulated proxy (node
//! proxies and sidecars, some of which skip generations) holds, per type, exactly what the
//! full translation (`translate` + `proxy_config`) says it should, although streams only look
//! at what changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use spar_model::{Resource, ResourceKey};
use spar_xds::discovery::DeltaDiscoveryRequest;
use spar_xds::{
    ADDRESS_TYPE, AUTHORIZATION_TYPE, L7_TYPE, POLICY_TYPE, TELEMETRY_NAME, TELEMETRY_TYPE,
};

use crate::delta::{TypeState, TypeStream};
use crate::encoded::{Xds, encode};
use crate::registry::MeshSettings;
use crate::snapshot::Snapshot;
use crate::translate::{ProxyView, proxy_config, translate};

const TYPES: [&str; 5] = [
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    L7_TYPE,
    POLICY_TYPE,
    TELEMETRY_TYPE,
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[(self.next() % of.len() as u64) as usize]
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One random version of entity `i` of a random kind, as YAML.
fn random_resource(rng: &mut Rng) -> String {
    let i = rng.below(6);
    let ns = rng.pick(&["a", "b"]);
    let app = rng.pick(&["ax", "ay", "az"]);
    match rng.below(13) {
        0..=3 => format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: {ns}, labels: {{app: {app}, version: {}{}}}}}\n\
             spec: {{serviceAccountName: sa-{app}, nodeName: {}, containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\n\
             status: {}\n",
            rng.pick(&["v1", "v2"]),
            rng.pick(&["", "", ", istio.io/use-waypoint: wp", ", istio.io/use-waypoint: none"]),
            rng.pick(&["n1", "n2", "n3"]),
            match rng.below(6) {
                0 => "{}".to_string(),
                n => format!("{{podIP: 10.0.0.{n}}}"),
            }
        ),
        4 => format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s{}, namespace: {ns}{}}}\n\
             spec: {{selector: {{app: {app}}}, clusterIP: 10.96.0.{i}, ports: [{{name: http, port: {}, targetPort: {}}}]}}\n",
            i % 3,
            rng.pick(&["", "", ", labels: {istio.io/use-waypoint: wp}"]),
            rng.pick(&["80", "81"]),
            rng.pick(&["http", "9090"])
        ),
        12 => format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se, namespace: {ns}}}\n\
             spec: {{hosts: [s{}.{ns}.svc.cluster.local], ports: [{{number: 80, name: http}}], resolution: STATIC, endpoints: [{{address: 10.1.0.{i}}}]}}\n",
            i % 3
        ),
        5 => {
            let sel = rng.pick(&[
                "",
                "selector: {matchLabels: {app: ax}}, ",
                "selector: {matchLabels: {version: v2}}, ",
                "selector: {}, ",
            ]);
            let action = rng.pick(&["ALLOW", "DENY", "AUDIT"]);
            let pns = rng.pick(&["a", "b", "istio-system"]);
            format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: ap{}, namespace: {pns}}}\n\
                 spec: {{{sel}action: {action}, rules: [{{from: [{{source: {{namespaces: [{ns}]}}}}]}}]}}\n",
                i % 4
            )
        }
        6 => {
            let (pns, sel) = match rng.below(3) {
                0 => ("istio-system", ""),
                1 => (ns, ""),
                _ => (
                    ns,
                    "selector: {matchLabels: {app: ay}}, portLevelMtls: {8080: {mode: STRICT}}, ",
                ),
            };
            format!(
                "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: pa{}, namespace: {pns}}}\n\
                 spec: {{{sel}mtls: {{mode: {}}}}}\n",
                i % 2,
                rng.pick(&["STRICT", "PERMISSIVE"])
            )
        }
        7 => format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: dr{}, namespace: {ns}}}\n\
             spec: {{host: s{}, subsets: [{{name: one, labels: {{version: v1}}}}]}}\n",
            i % 2,
            i % 3
        ),
        8 => format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs{}, namespace: {ns}}}\n\
             spec: {{hosts: [s{}], http: [{{match: [{{sourceLabels: {{app: {app}}}}}], route: [{{destination: {{host: s{}}}}}]}}, {{route: [{{destination: {{host: s{}}}}}]}}]}}\n",
            i % 2,
            i % 3,
            i % 3,
            (i + 1) % 3
        ),
        9 => format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{{}}}}}\n",
            rng.pick(&[
                "istio.io/dataplane-mode: ambient",
                "istio-injection: enabled",
                "other: x",
                "istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp, spar.io/waypoint-only: 'true'",
            ])
        ),
        10 => format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: wp, namespace: {ns}, labels: {{istio.io/waypoint-for: {}}}}}\n\
             spec: {{gatewayClassName: istio-waypoint, listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]}}\n",
            rng.pick(&["service", "workload", "all"])
        ),
        _ => format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: sc, namespace: {ns}}}\n\
             spec: {{workloadSelector: {{labels: {{app: {app}}}}}, egress: [{{hosts: ['./*']}}]}}\n"
        ),
    }
}

/// A proxy's client: what it holds of each type, by name -> version.
struct Client {
    view: ProxyView,
    streams: BTreeMap<&'static str, TypeStream>,
    held: BTreeMap<&'static str, BTreeMap<String, String>>,
    /// Takes only every `every`-th snapshot (streams lag behind).
    every: u64,
}

impl Client {
    fn new(view: ProxyView, every: u64) -> Client {
        Client {
            view,
            streams: BTreeMap::new(),
            held: BTreeMap::new(),
            every,
        }
    }

    fn sync(&mut self, snap: &Arc<Snapshot>) {
        for t in TYPES {
            let st = self.streams.entry(t).or_insert_with(|| {
                TypeStream::new(TypeState::first(&DeltaDiscoveryRequest::default()))
            });
            let d = st.delta(&self.view, t, snap);
            let held = self.held.entry(t).or_default();
            for n in &d.removed {
                assert!(held.remove(n).is_some(), "{t}: removed {n}, never held");
            }
            for r in d.resources {
                held.insert(r.name, r.version);
            }
            assert_eq!(st.count, held.len(), "{t}: count");
        }
    }

    /// What a full translation says this proxy should hold.
    fn want(&self, snap: &Snapshot) -> BTreeMap<&'static str, BTreeMap<String, String>> {
        let mut all = translate(&snap.registry);
        all.jwks = (*snap.xds.jwks).clone();
        let cfg = proxy_config(&snap.registry, &all, &self.view);
        let v = |m: BTreeMap<String, String>| m;
        let mut out = BTreeMap::new();
        out.insert(
            ADDRESS_TYPE,
            v(cfg
                .addresses
                .iter()
                .map(|(n, a)| (n.clone(), encode(ADDRESS_TYPE, a).version.clone()))
                .collect()),
        );
        out.insert(
            AUTHORIZATION_TYPE,
            v(cfg
                .authorizations
                .iter()
                .map(|(n, a)| (n.clone(), encode(AUTHORIZATION_TYPE, a).version.clone()))
                .collect()),
        );
        out.insert(
            L7_TYPE,
            v(cfg
                .l7
                .iter()
                .map(|(n, a)| (n.clone(), encode(L7_TYPE, a).version.clone()))
                .collect()),
        );
        out.insert(
            POLICY_TYPE,
            v(cfg
                .policies
                .iter()
                .map(|(n, a)| (n.clone(), encode(POLICY_TYPE, a).version.clone()))
                .collect()),
        );
        out.insert(
            TELEMETRY_TYPE,
            v(cfg
                .telemetry
                .iter()
                .map(|t| {
                    (
                        TELEMETRY_NAME.to_string(),
                        encode(TELEMETRY_TYPE, t).version.clone(),
                    )
                })
                .collect()),
        );
        out
    }
}

#[test]
fn streams_hold_what_full_translation_says_after_random_changes() {
    let mesh = MeshSettings::default();
    for seed in 1..=12u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut merged: BTreeMap<ResourceKey, Arc<Resource>> = BTreeMap::new();
        let mut snap = Arc::new(Snapshot::default());
        let mut clients: Vec<Client> = ["n1", "n2", "n3"]
            .iter()
            .enumerate()
            .map(|(i, n)| Client::new(ProxyView::Node(n.to_string()), 1 + i as u64))
            .collect();
        for (i, ns) in ["a", "b", "a", "b"].iter().enumerate() {
            clients.push(Client::new(
                ProxyView::Workload {
                    namespace: ns.to_string(),
                    name: format!("p{i}"),
                },
                1 + (i as u64 % 2),
            ));
        }
        for step in 1..=60u64 {
            // A burst of one to three changes per snapshot (as the debounce makes them).
            for _ in 0..=rng.below(3) {
                let l = spar_model::load_str("t", &random_resource(&mut rng));
                assert!(!l.has_errors(), "{:?}", l.problems);
                for (r, _) in l.resources {
                    if rng.below(5) == 0 {
                        merged.remove(&r.key());
                    } else {
                        merged.insert(r.key(), Arc::new(r));
                    }
                }
            }
            snap = Snapshot::advance(&snap, step, &mesh, &merged, |_| BTreeMap::new());
            snap.registry.check_indexes().expect("indexes");
            // Pod-only steps were translated incrementally: the same as from scratch.
            let full = Xds::build(&snap.registry, &translate(&snap.registry), BTreeMap::new());
            assert_eq!(
                encoded(&snap.xds),
                encoded(&full),
                "seed {seed} step {step}"
            );
            for c in clients.iter_mut() {
                if step % c.every == 0 || step == 60 {
                    c.sync(&snap);
                    assert_eq!(
                        c.held,
                        c.want(&snap),
                        "seed {seed} step {step} {:?}",
                        c.view
                    );
                }
            }
        }
    }
}

/// Everything an `Xds` holds, comparable: versions by name, the selection indexes, L7 hosts.
type Encoded = (
    Vec<(String, String)>,
    Vec<(String, String, i32, String, bool)>,
    Vec<(String, crate::translate::l7::Host)>,
    Vec<(String, Vec<String>)>,
    Vec<String>,
    Vec<(String, Vec<String>)>,
    Vec<(String, usize)>,
);

fn encoded(x: &Xds) -> Encoded {
    let mut addresses: Vec<_> = x
        .addresses
        .iter()
        .map(|(k, v)| (k.to_string(), v.version.clone()))
        .collect();
    addresses.sort();
    let mut auth: Vec<_> = x
        .authorizations
        .iter()
        .map(|(k, a)| {
            let v = (
                a.res.version.clone(),
                a.scope,
                a.namespace.clone(),
                a.peer_authn,
            );
            (k.to_string(), v.0, v.1, v.2, v.3)
        })
        .collect();
    auth.sort();
    let mut l7: Vec<_> =
        x.l7.iter()
            .map(|(k, h)| (k.to_string(), (*h.host).clone()))
            .collect();
    l7.sort_by(|a, b| a.0.cmp(&b.0));
    let strs = |v: &[Arc<str>]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut listed: Vec<_> = x
        .listed
        .iter()
        .map(|(k, v)| (k.to_string(), strs(v)))
        .collect();
    listed.sort();
    let global = x.global.iter().map(|s| s.to_string()).collect();
    let by_ns = x
        .by_namespace
        .iter()
        .map(|(k, v)| (k.clone(), v.iter().map(|s| s.to_string()).collect()))
        .collect();
    let mut listers: Vec<_> = x.listers.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    listers.sort();
    (addresses, auth, l7, listed, global, by_ns, listers)
}
