//! In-process delta xDS: a real gRPC client over TLS subscribes, gets the initial state, sees
//! updates and removals within 1 s of a config file change, and NACKs.

mod common;

use std::time::Duration;

use prost::Message;
use spar_identity::Subject;
use spar_xds::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use spar_xds::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status as RpcStatus,
};
use spar_xds::security::Authorization;
use spar_xds::workload::{Address, address};
use spar_xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE};
use tokio::sync::mpsc;
use tonic::Streaming;

struct Client {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Client {
    async fn connect(
        running: &spar_control::Running,
        token: &str,
    ) -> Result<Client, tonic::Status> {
        let ch = common::channel(running.grpc_addr, &running.root_pem).await;
        let bearer: tonic::metadata::MetadataValue<_> =
            format!("Bearer {token}").parse().expect("header");
        let mut client = AggregatedDiscoveryServiceClient::with_interceptor(
            ch,
            move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", bearer.clone());
                Ok(req)
            },
        );
        let (tx, rx) = mpsc::channel(8);
        let resp = client
            .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?;
        Ok(Client {
            tx,
            rx: resp.into_inner(),
        })
    }

    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.expect("stream open");
    }

    async fn recv(&mut self, within: Duration) -> DeltaDiscoveryResponse {
        tokio::time::timeout(within, self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("not closed")
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }
}

/// A control plane on `common::TOPOLOGY` (kept while the directories live) and a token of
/// node-1's proxy.
async fn start_with_node_token() -> (
    (tempfile::TempDir, tempfile::TempDir),
    spar_control::Running,
    String,
) {
    let state = tempfile::tempdir().expect("tmp");
    let cfg = tempfile::tempdir().expect("tmp");
    std::fs::write(cfg.path().join("mesh.yaml"), common::TOPOLOGY).expect("write");
    let running = common::start(state.path(), Some(cfg.path())).await;
    let token = running
        .tokens
        .mint(
            Subject::Node {
                name: "node-1".into(),
            },
            Duration::from_secs(300),
        )
        .expect("token");
    ((state, cfg), running, token)
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|x| x.name.clone()).collect()
}

#[tokio::test]
async fn delta_xds_initial_update_removal_and_nack() {
    let ((_state, cfg), running, token) = start_with_node_token().await;

    // Unauthenticated streams are refused.
    let err = Client::connect(&running, "forged")
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let mut c = Client::connect(&running, &token)
        .await
        .expect("authenticated");
    let node = Node {
        id: "ztunnel~10.1.0.1~ztunnel-1.istio-system~istio-system.svc.cluster.local".into(),
        ..Default::default()
    };
    c.send(DeltaDiscoveryRequest {
        node: Some(node),
        type_url: ADDRESS_TYPE.into(),
        ..Default::default()
    })
    .await;
    let first = c.recv(Duration::from_secs(5)).await;
    assert_eq!(first.type_url, ADDRESS_TYPE);
    let mut got = names(&first);
    got.sort();
    assert_eq!(
        got,
        vec![
            "Kubernetes//Pod/shop/db-1",
            "Kubernetes//Pod/shop/web-1",
            "shop/web.shop.svc.cluster.local"
        ]
    );
    let web = first
        .resources
        .iter()
        .find(|r| r.name.ends_with("web-1"))
        .expect("web");
    let addr =
        Address::decode(web.resource.as_ref().expect("body").value.as_slice()).expect("decodes");
    let Some(address::Type::Workload(w)) = addr.r#type else {
        panic!("workload expected")
    };
    assert_eq!(w.addresses, vec![vec![10, 1, 1, 5]]);
    assert_eq!(w.service_account, "web");
    assert_eq!(w.tunnel_protocol, 1, "ambient namespace -> HBONE");
    assert_eq!(w.authorization_policies, vec!["shop/web-allow".to_string()]);
    assert_eq!(
        w.services["shop/web.shop.svc.cluster.local"].ports[0].target_port,
        8080
    );
    c.ack(&first).await;

    // Authorization: node-1 runs web-1 only, so it gets web-allow and not db-allow.
    c.send(DeltaDiscoveryRequest {
        type_url: AUTHORIZATION_TYPE.into(),
        ..Default::default()
    })
    .await;
    let auth = c.recv(Duration::from_secs(5)).await;
    assert_eq!(names(&auth), vec!["shop/web-allow"]);
    let pol = Authorization::decode(
        auth.resources[0]
            .resource
            .as_ref()
            .expect("body")
            .value
            .as_slice(),
    )
    .expect("decodes");
    assert_eq!(pol.scope, 2, "WORKLOAD_SELECTOR");
    c.ack(&auth).await;

    // A config file change reaches the proxy within 1 s.
    let extra = "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: shop}\nspec:\n  selector: {app: web}\n  clusterIP: 10.96.0.11\n  ports: [{port: 9090}]\n";
    std::fs::write(cfg.path().join("api.yaml"), extra).expect("write");
    let upd = c.recv(Duration::from_secs(1)).await;
    assert_eq!(upd.type_url, ADDRESS_TYPE);
    let got = names(&upd);
    assert!(
        got.contains(&"shop/api.shop.svc.cluster.local".to_string()),
        "{got:?}"
    );
    // web-1 now backs a second service, so its workload changed too; db-1 did not.
    assert!(
        got.contains(&"Kubernetes//Pod/shop/web-1".to_string()),
        "{got:?}"
    );
    assert!(
        !got.contains(&"Kubernetes//Pod/shop/db-1".to_string()),
        "{got:?}"
    );
    c.ack(&upd).await;

    // An invalid change is rejected; nothing is pushed and the last good config stays.
    std::fs::write(
        cfg.path().join("broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 0}]}\n",
    )
    .expect("write");
    assert!(
        tokio::time::timeout(Duration::from_millis(800), c.rx.message())
            .await
            .is_err(),
        "no push for a bad change"
    );
    let (code, body) = common::http(&running, "GET", "/debug/status", "").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("broken.yaml:4: Service/x: spec.ports[0].port"),
        "{body}"
    );
    std::fs::remove_file(cfg.path().join("broken.yaml")).expect("rm");

    // Removal: deleting the file removes the service.
    std::fs::remove_file(cfg.path().join("api.yaml")).expect("rm");
    let rem = loop {
        let r = c.recv(Duration::from_secs(1)).await;
        if !r.removed_resources.is_empty() {
            break r;
        }
        c.ack(&r).await;
    };
    assert_eq!(
        rem.removed_resources,
        vec!["shop/api.shop.svc.cluster.local".to_string()]
    );

    // NACK: recorded by nonce and shown in status.
    c.send(DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE.into(),
        response_nonce: rem.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "cannot parse workload".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, body) = common::http(&running, "GET", "/debug/status", "").await;
    assert!(
        body.contains("cannot parse workload") && body.contains(&rem.nonce),
        "{body}"
    );
    let (_, dump) = common::http(&running, "GET", "/debug/proxies", "").await;
    assert!(
        dump.contains("10.1.1.5") && dump.contains("ztunnel~10.1.0.1"),
        "{dump}"
    );
}

#[tokio::test]
async fn reconnect_with_initial_versions_gets_only_changes() {
    let state = tempfile::tempdir().expect("tmp");
    let cfg = tempfile::tempdir().expect("tmp");
    std::fs::write(cfg.path().join("mesh.yaml"), common::TOPOLOGY).expect("write");
    let running = common::start(state.path(), Some(cfg.path())).await;
    let token = running
        .tokens
        .mint(
            Subject::Node {
                name: "node-2".into(),
            },
            Duration::from_secs(300),
        )
        .expect("token");
    let mut c = Client::connect(&running, &token).await.expect("connects");
    c.send(DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE.into(),
        ..Default::default()
    })
    .await;
    let first = c.recv(Duration::from_secs(5)).await;
    let versions = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(c);
    let mut c = Client::connect(&running, &token).await.expect("reconnects");
    c.send(DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE.into(),
        initial_resource_versions: versions,
        ..Default::default()
    })
    .await;
    let again = c.recv(Duration::from_secs(5)).await;
    assert!(
        again.resources.is_empty() && again.removed_resources.is_empty(),
        "{again:?}"
    );
}

/// A pod and the policy that selects it arrive in one change: the policy is pushed first,
/// so the proxy never holds the pod without its policy.
#[tokio::test]
async fn policies_are_pushed_before_the_pods_they_protect() {
    let ((_state, cfg), running, token) = start_with_node_token().await;
    let mut c = Client::connect(&running, &token).await.expect("connect");
    for (i, t) in [ADDRESS_TYPE, AUTHORIZATION_TYPE].into_iter().enumerate() {
        c.send(DeltaDiscoveryRequest {
            node: (i == 0).then(|| Node {
                id: "ztunnel~10.1.0.1~ztunnel-1.istio-system~istio-system.svc.cluster.local".into(),
                ..Default::default()
            }),
            type_url: t.into(),
            ..Default::default()
        })
        .await;
    }
    for _ in 0..2 {
        let r = c.recv(Duration::from_secs(5)).await;
        c.ack(&r).await;
    }
    let change = "apiVersion: v1\nkind: Pod\nmetadata: {name: api-1, namespace: shop, labels: {app: api}}\nspec: {serviceAccountName: api, nodeName: node-1, containers: [{name: api, command: [x]}]}\nstatus: {podIP: 10.1.1.6}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: api-deny, namespace: shop}\nspec: {selector: {matchLabels: {app: api}}, action: DENY, rules: [{from: [{source: {namespaces: [other]}}]}]}\n";
    std::fs::write(cfg.path().join("api.yaml"), change).expect("write");
    let first = c.recv(Duration::from_secs(2)).await;
    assert_eq!(
        (first.type_url.as_str(), names(&first)),
        (AUTHORIZATION_TYPE, vec!["shop/api-deny".to_string()]),
        "the policy first"
    );
    c.ack(&first).await;
    let second = c.recv(Duration::from_secs(2)).await;
    assert_eq!(second.type_url, ADDRESS_TYPE);
    assert!(names(&second).contains(&"Kubernetes//Pod/shop/api-1".to_string()));
}

/// Proxies connecting together take turns for their initial state (`INITIAL_SYNCS` at once):
/// a proxy's turn ends when it ACKs, and one that never answers holds its turn for a bounded
/// time, so every proxy gets its state.
#[tokio::test]
async fn initial_states_take_turns_and_a_silent_proxy_cannot_starve_the_others() {
    let (_dirs, running, token) = start_with_node_token().await;
    async fn first(c: &Client) {
        c.send(DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE.into(),
            ..Default::default()
        })
        .await
    }
    // Proxies that ACK: three rounds' worth all get their state promptly.
    let mut acking = Vec::new();
    for _ in 0..spar_control::xds_server::INITIAL_SYNCS * 3 {
        let c = Client::connect(&running, &token).await.expect("connect");
        first(&c).await;
        acking.push(c);
    }
    for c in acking.iter_mut() {
        let r = c.recv(Duration::from_secs(5)).await;
        assert_eq!(names(&r).len(), 3);
        c.ack(&r).await;
    }
    // Every turn taken by a proxy that never ACKs: the next one still gets its state once
    // the silent ones' turns run out (10 s), not never.
    let mut silent = Vec::new();
    for _ in 0..spar_control::xds_server::INITIAL_SYNCS {
        let mut c = Client::connect(&running, &token).await.expect("connect");
        first(&c).await;
        let r = c.recv(Duration::from_secs(5)).await;
        assert_eq!(names(&r).len(), 3);
        silent.push(c);
    }
    let mut late = Client::connect(&running, &token).await.expect("connect");
    first(&late).await;
    let waited = std::time::Instant::now();
    let r = late.recv(Duration::from_secs(20)).await;
    assert_eq!(names(&r).len(), 3);
    assert!(
        waited.elapsed() > Duration::from_secs(5),
        "it waited for a turn: {:?}",
        waited.elapsed()
    );
}

/// A view larger than `CHUNK` resources goes out as several responses, all but the last
/// marked `MORE_FOLLOWS`, together holding the whole view once.
#[tokio::test]
async fn a_large_initial_state_is_split_and_marked_until_its_last_part() {
    let (dirs, running, token) = start_with_node_token().await;
    let pods = spar_control::xds_server::CHUNK * 2 + 7;
    let yaml: String = (0..pods)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: bulk-{i}, namespace: shop}}\nspec: {{nodeName: node-1}}\nstatus: {{podIP: 10.9.{}.{}}}\n---\n",
                i / 250,
                i % 250 + 1
            )
        })
        .collect();
    std::fs::write(dirs.1.path().join("bulk.yaml"), yaml).expect("write");
    // The directory watcher takes it in.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running.config.current().registry.pod_count() < pods {
        assert!(
            std::time::Instant::now() < deadline,
            "the bulk file was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = Client::connect(&running, &token).await.expect("connect");
    c.send(DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE.into(),
        ..Default::default()
    })
    .await;
    let mut parts = Vec::new();
    loop {
        let r = c.recv(Duration::from_secs(5)).await;
        c.ack(&r).await;
        let more = r.system_version_info.ends_with(spar_xds::MORE_FOLLOWS);
        parts.push(names(&r));
        if !more {
            break;
        }
    }
    assert_eq!(
        parts.len(),
        3,
        "sizes: {:?}",
        parts.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(
        parts
            .iter()
            .all(|p| p.len() <= spar_control::xds_server::CHUNK)
    );
    let mut all: Vec<String> = parts.concat();
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), total, "each resource once");
    assert_eq!(
        all.len(),
        pods + 3,
        "the bulk pods and the topology's three addresses"
    );

    // Removals are split the same way.
    std::fs::remove_file(dirs.1.path().join("bulk.yaml")).expect("rm");
    let mut removed = Vec::new();
    let mut parts = 0;
    loop {
        let r = c.recv(Duration::from_secs(5)).await;
        c.ack(&r).await;
        assert!(r.resources.len() + r.removed_resources.len() <= spar_control::xds_server::CHUNK);
        parts += 1;
        removed.extend(r.removed_resources.clone());
        if !r.system_version_info.ends_with(spar_xds::MORE_FOLLOWS) {
            break;
        }
    }
    assert_eq!((parts, removed.len()), (3, pods));
}
