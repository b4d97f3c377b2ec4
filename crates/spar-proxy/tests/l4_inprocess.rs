//! In process, no root: node proxies (ambient) and sidecars carrying TCP over HBONE between
//! nodes, L4 policy and PeerAuthentication at the destination, the DNS proxy, and sidecars
//! talking to ambient pods.

mod harness;

use std::time::Duration;

use harness::{Builder, Mesh};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `client` on node-1 and `server` (TCP echo on 9000, HTTP echo on 8080) on node-2, both
/// ambient, in namespace `amb`; `outsider` in namespace `plain`, outside the mesh.
async fn ambient(extra: &str) -> Mesh {
    let mut b = Builder::new()
        .namespace("amb", &[("istio.io/dataplane-mode", "ambient")])
        .namespace("plain", &[])
        .service(
            "amb",
            "server",
            &[(9000, "tcp-echo"), (8080, "http")],
            &[("app", "server")],
        )
        .pod_on(
            "amb",
            "client",
            "node-1",
            &[("app", "client"), ("sa", "client")],
        )
        .pod_on(
            "amb",
            "server",
            "node-2",
            &[("app", "server"), ("sa", "server")],
        )
        .pod_on("plain", "outsider", "node-1", &[("app", "outsider")]);
    if !extra.is_empty() {
        b = b.yaml(extra);
    }
    let mut mesh = b.start().await;
    mesh.tcp_echo("server", 9000).await;
    mesh.echo("server", &[8080]).await;
    mesh.node_proxy("node-1").await;
    mesh.node_proxy("node-2").await;
    let (client, server) = (mesh.pod("client").clone(), mesh.pod("server").clone());
    let n1 = mesh.nodes["node-1"].proxy.clone();
    let n2 = mesh.nodes["node-2"].proxy.clone();
    mesh.wait_enrolled(&n1, &client).await;
    mesh.wait_enrolled(&n2, &server).await;
    mesh
}

/// Write `msg`, half-close, read everything back.
async fn echo_once(mut s: tokio::net::TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut back))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    Ok(back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_crosses_two_node_proxies_over_hbone_with_both_identities() {
    let mesh = ambient("").await;
    let s = mesh.connect("client", "server", 9000).await;
    let back = echo_once(s, b"hello over hbone").await.expect("echo");
    assert_eq!(back, b"hello over hbone");
    let n2 = mesh.nodes["node-2"].proxy.clone();
    let mut r = prometheus_client::registry::Registry::default();
    n2.metrics.register(&mut r);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &r).expect("encode");
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
        })
        .unwrap_or_else(|| panic!("no destination series: {text}"));
    assert!(
        line.contains("source_principal=\"spiffe://cluster.local/ns/amb/sa/client\""),
        "{line}"
    );
    assert!(
        line.contains("destination_principal=\"spiffe://cluster.local/ns/amb/sa/server\""),
        "{line}"
    );
    assert!(
        line.contains("connection_security_policy=\"mutual_tls\""),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_through_ambient_sees_the_client_address() {
    let mesh = ambient("").await;
    let r = mesh.get("client", "server", 8080, "/", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let source = r.json()["source"].as_str().unwrap_or("").to_string();
    let ip = mesh.pod("client").ip.to_string();
    assert!(
        source.starts_with(&format!("{ip}:")),
        "the server sees the client pod: {source}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l4_deny_by_principal_resets_the_connection() {
    let mesh = ambient(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: amb}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/amb/sa/client]}}]}]
",
    )
    .await;
    let s = mesh.connect("client", "server", 9000).await;
    let back = echo_once(s, b"let me in").await;
    assert!(
        !matches!(&back, Ok(b) if !b.is_empty()),
        "denied: nothing comes back ({back:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_refuses_plaintext_and_permissive_admits_it() {
    let strict = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: amb}
spec: {mtls: {mode: STRICT}}
";
    let mesh = ambient(strict).await;
    // Outside the mesh there is no VIP translation in this harness: the pod's own address.
    let server = mesh.pod("server").ip.to_string();
    if let Ok(s) = mesh.try_connect("outsider", &server, 9000).await {
        let back = echo_once(s, b"plain").await;
        assert!(!matches!(&back, Ok(b) if !b.is_empty()), "STRICT: {back:?}");
    }
    let s = mesh.connect("client", "server", 9000).await;
    assert_eq!(echo_once(s, b"mesh").await.expect("mesh client"), b"mesh");
    mesh.apply(&strict.replace("STRICT", "PERMISSIVE")).await;
    let s = mesh.connect("outsider", &server, 9000).await;
    assert_eq!(echo_once(s, b"plain").await.expect("PERMISSIVE"), b"plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dns_proxy_answers_mesh_names() {
    let mesh = ambient("").await;
    let client = mesh.pod("client").ip;
    let dns = mesh.net.listening_udp(client, 15053).expect("DNS listener");
    let sock = tokio::net::UdpSocket::bind((client, 0)).await.expect("udp");
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in "server.amb.svc.cluster.local".split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    sock.send_to(&q, dns).await.expect("send");
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("an answer")
        .expect("recv");
    let vip = match mesh.vip("amb", "server") {
        std::net::IpAddr::V4(v) => v.octets(),
        std::net::IpAddr::V6(_) => panic!("v4"),
    };
    assert_eq!(&buf[n - 4..n], &vip, "the service VIP");
    assert_eq!(u16::from_be_bytes([buf[6], buf[7]]), 1, "one answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_talks_to_an_ambient_pod_and_tcp_routes_split_by_weight() {
    let mut mesh = Builder::new()
        .namespace("amb", &[("istio.io/dataplane-mode", "ambient")])
        .namespace("sc", &[("istio-injection", "enabled")])
        .service(
            "amb",
            "server",
            &[(9000, "tcp-echo"), (8080, "http")],
            &[("app", "server")],
        )
        .service("amb", "other", &[(9000, "tcp-echo")], &[("app", "other")])
        .pod_on(
            "amb",
            "server",
            "node-2",
            &[("app", "server"), ("sa", "server")],
        )
        .pod_on(
            "amb",
            "other",
            "node-2",
            &[("app", "other"), ("sa", "other")],
        )
        .pod_on(
            "sc",
            "client",
            "node-1",
            &[("app", "client"), ("sa", "client")],
        )
        .yaml(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: server, namespace: amb}
spec:
  hosts: [server]
  tcp:
  - match: [{port: 9000}]
    route:
    - {destination: {host: server}, weight: 50}
    - {destination: {host: other}, weight: 50}
",
        )
        .start()
        .await;
    mesh.tcp_echo("server", 9000).await;
    mesh.echo("server", &[8080]).await;
    mesh.tcp_echo("other", 9000).await;
    mesh.node_proxy("node-2").await;
    let n2 = mesh.nodes["node-2"].proxy.clone();
    let server = mesh.pod("server").clone();
    mesh.wait_enrolled(&n2, &server).await;
    let other = mesh.pod("other").clone();
    mesh.wait_enrolled(&n2, &other).await;
    mesh.sidecar("client").await;
    let r = mesh.get("client", "server.amb", 8080, "/", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["peer_identity"].as_str(),
        None,
        "an ambient pod's app gets no XFCC"
    );
    for _ in 0..20 {
        let s = mesh.connect("client", "server.amb", 9000).await;
        assert_eq!(echo_once(s, b"tcp").await.expect("echo"), b"tcp");
    }
    let mut by_pod = std::collections::BTreeMap::new();
    let text = {
        let mut r = prometheus_client::registry::Registry::default();
        n2.metrics.register(&mut r);
        let mut t = String::new();
        prometheus_client::encoding::text::encode(&mut t, &r).expect("encode");
        t
    };
    for l in text
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
    {
        for w in ["server", "other"] {
            if l.contains(&format!("destination_workload=\"{w}\"")) {
                let n: f64 = l
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                *by_pod.entry(w).or_insert(0.0) += n;
            }
        }
    }
    assert!(
        by_pod.get("other").copied().unwrap_or(0.0) >= 1.0,
        "the tcp route sends some connections to other: {by_pod:?}"
    );
}

/// A client that stops reading its echo holds its tunnel's window unreleased in the node
/// proxy; the other tunnels pooled on the same HBONE connection keep flowing (the connection
/// window is several streams wide).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_does_not_stall_the_other_tunnels_of_its_pooled_connection() {
    let mesh = ambient("").await;
    // Open the pooled connection with a first exchange, then stall a second tunnel on it.
    let s = mesh.connect("client", "server", 9000).await;
    assert_eq!(echo_once(s, b"warm").await.expect("first echo"), b"warm");
    let mut stalled = mesh.connect("client", "server", 9000).await;
    let chunk = vec![0x5au8; 64 * 1024];
    let (mut written, mut pauses) = (0usize, 0);
    // Write until back-pressure stops us (never reading the echo): at least the stream's
    // window (4 MiB) plus the sockets' buffers must be in flight. A pause before that is a
    // busy machine, not back-pressure: keep writing.
    while written < 64 << 20 && pauses < 20 {
        match tokio::time::timeout(Duration::from_millis(500), stalled.write_all(&chunk)).await {
            Ok(Ok(())) => written += chunk.len(),
            Ok(Err(e)) => panic!("stalled writer failed: {e}"),
            Err(_) if written >= 4 << 20 => break,
            Err(_) => pauses += 1,
        }
    }
    assert!(
        written >= 4 << 20,
        "the stalled tunnel carried at least a window before back-pressure ({written} bytes)"
    );
    // A new tunnel between the same pods rides the same pooled connection and still flows.
    let s = mesh.connect("client", "server", 9000).await;
    assert_eq!(
        echo_once(s, b"still flowing")
            .await
            .expect("an echo beside the stalled tunnel"),
        b"still flowing"
    );
    drop(stalled);
}

/// A mesh larger than one xDS response: the control plane sends the addresses in parts
/// (`MORE_FOLLOWS` on all but the last); the node proxy takes every part in and carries
/// traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_sent_in_parts_reaches_the_proxy_whole() {
    let filler = spar_control::xds_server::CHUNK * 2 + 5;
    let yaml: String = (0..filler)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: filler-{i}, namespace: plain}}\nspec: {{nodeName: node-9}}\nstatus: {{podIP: 10.250.{}.{}}}\n---\n",
                i / 250,
                i % 250 + 1
            )
        })
        .collect();
    let mesh = ambient(&yaml).await;
    let n1 = mesh.nodes["node-1"].proxy.clone();
    let held = n1
        .snapshot
        .load()
        .workloads
        .keys()
        .filter(|k| k.contains("/filler-"))
        .count();
    assert_eq!(held, filler, "every part of the initial state was applied");
    let s = mesh.connect("client", "server", 9000).await;
    let back = echo_once(s, b"after a split push").await.expect("echo");
    assert_eq!(back, b"after a split push");
}
