//! In process, no root: what a client can make a node proxy hold. Connections to a pod's
//! HBONE port that never handshake are dropped after the handshake timeout, a source over
//! its cap is closed at accept, both are counted, and the pod keeps serving its real peers.

mod harness;

use std::time::{Duration, Instant};

use harness::{Builder, Mesh};
use spar_proxy::limits::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn ambient(limits: Limits) -> Mesh {
    let mut mesh = Builder::new()
        .namespace("amb", &[("istio.io/dataplane-mode", "ambient")])
        .service("amb", "server", &[(9000, "tcp-echo")], &[("app", "server")])
        .pod_on("amb", "client", "node-1", &[("app", "client")])
        .pod_on("amb", "server", "node-2", &[("app", "server")])
        .limits(limits)
        .start()
        .await;
    mesh.tcp_echo("server", 9000).await;
    mesh.node_proxy("node-1").await;
    mesh.node_proxy("node-2").await;
    let (client, server) = (mesh.pod("client").clone(), mesh.pod("server").clone());
    let n1 = mesh.nodes["node-1"].proxy.clone();
    let n2 = mesh.nodes["node-2"].proxy.clone();
    mesh.wait_enrolled(&n1, &client).await;
    mesh.wait_enrolled(&n2, &server).await;
    mesh
}

/// Whether the proxy closed `s` within `within` (EOF or reset).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn echoes(mesh: &Mesh) -> bool {
    let Ok(mut s) = mesh.try_connect("client", "server", 9000).await else {
        return false;
    };
    if s.write_all(b"ping").await.is_err() || s.shutdown().await.is_err() {
        return false;
    }
    let mut back = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut back)).await;
    matches!(read, Ok(Ok(_))) && back == b"ping"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_excess_hbone_connections_are_dropped_and_counted() {
    let handshake = Duration::from_millis(400);
    let mesh = ambient(Limits {
        per_source: 4,
        handshake,
        ..Limits::default()
    })
    .await;
    let server = mesh.pod("server").clone();
    let hbone = mesh.net.listening(server.ip, 15008).expect("15008 is up");
    // The proxy's handshake clock starts at each accept, which is after this instant: both
    // the "before any timeout" and the "held until the timeout" checks count from here.
    let start = Instant::now();
    // Ten connections that never start TLS, from one source.
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(TcpStream::connect(hbone).await.expect("tcp connect"));
    }
    // Well inside the handshake timeout: only the connections over the cap are closed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut open = Vec::new();
    let mut over_cap = 0;
    for mut s in idle {
        if closed_within(&mut s, Duration::from_millis(20)).await {
            over_cap += 1;
        } else {
            open.push(s);
        }
    }
    assert!(start.elapsed() < handshake, "checked before any timeout");
    let mut timed_out = 0;
    for s in &mut open {
        if closed_within(s, handshake * 4).await {
            timed_out += 1;
        }
    }
    assert!(
        start.elapsed() >= handshake,
        "held until the handshake timeout"
    );
    assert_eq!(
        (over_cap, timed_out),
        (6, 4),
        "6 over the per-source cap at once, the 4 admitted after the handshake timeout"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(echoes(&mesh).await, "the pod's real peers are served");

    let mut r = prometheus_client::registry::Registry::default();
    mesh.nodes["node-2"].proxy.limit_metrics.register(&mut r);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &r).expect("encode");
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
    };
    assert_eq!(
        value("spar_connections_refused_total{reason=\"source\"}"),
        6.0
    );
    assert_eq!(value("spar_handshake_timeouts_total"), 4.0);
}

/// One endpoint of a service accepts on its HBONE port and never answers (a hung host):
/// each connection to the service fails over to the other endpoint within the handshake
/// timeout, instead of waiting on the hung one for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_endpoint_is_failed_over_within_the_handshake_timeout() {
    let handshake = Duration::from_millis(500);
    let mut mesh = Builder::new()
        .namespace("amb", &[("istio.io/dataplane-mode", "ambient")])
        .service("amb", "server", &[(9000, "tcp-echo")], &[("app", "server")])
        .pod_on("amb", "client", "node-1", &[("app", "client")])
        .pod_on("amb", "server", "node-2", &[("app", "server")])
        .pod_on("amb", "hung", "node-3", &[("app", "server")])
        .limits(Limits {
            handshake,
            ..Limits::default()
        })
        .start()
        .await;
    mesh.tcp_echo("server", 9000).await;
    // node-3 runs no proxy: its pod's 15008 accepts and then says nothing.
    let hung = mesh.pod("hung").clone();
    let sink = tokio::net::TcpListener::bind((hung.ip, 0))
        .await
        .expect("bind");
    mesh.net
        .serve(hung.ip, 15008, sink.local_addr().expect("addr"));
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = sink.accept().await {
            conns.push(s);
        }
    });
    mesh.node_proxy("node-1").await;
    mesh.node_proxy("node-2").await;
    let (client, server) = (mesh.pod("client").clone(), mesh.pod("server").clone());
    let n1 = mesh.nodes["node-1"].proxy.clone();
    let n2 = mesh.nodes["node-2"].proxy.clone();
    mesh.wait_enrolled(&n1, &client).await;
    mesh.wait_enrolled(&n2, &server).await;
    let mut slowest = Duration::ZERO;
    // Endpoints are tried in random order: 16 connections meet the hung one first at least
    // once (all but 1 in 65,536 runs).
    for _ in 0..16 {
        let start = Instant::now();
        assert!(
            echoes(&mesh).await,
            "every connection reaches the live endpoint"
        );
        slowest = slowest.max(start.elapsed());
    }
    assert!(
        slowest >= handshake && slowest < handshake * 3,
        "the hung endpoint was tried, and failed over within the handshake timeout: slowest {slowest:?}"
    );
    held.abort();
}

/// A client that never finishes its request head (slowloris) is dropped after the header
/// timeout, instead of holding a connection (and a task) for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_never_ends_is_dropped() {
    let header_read = Duration::from_millis(400);
    let mut mesh = Builder::new()
        .namespace("mesh", &[("istio-injection", "enabled")])
        .service("mesh", "reviews", &[(9080, "http")], &[("app", "reviews")])
        .pod("mesh", "client", &[("app", "client"), ("sa", "client")])
        .pod(
            "mesh",
            "reviews-v1",
            &[("app", "reviews"), ("sa", "reviews")],
        )
        .limits(Limits {
            header_read,
            ..Limits::default()
        })
        .start()
        .await;
    mesh.echo("reviews-v1", &[9080]).await;
    mesh.sidecars(&["reviews-v1", "client"]).await;
    let mut s = mesh.connect("client", "reviews", 9080).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\n")
        .await
        .expect("part of a head");
    let start = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "the half-sent request is dropped"
    );
    assert!(
        start.elapsed() >= header_read && start.elapsed() < header_read * 5,
        "after the header timeout: {:?}",
        start.elapsed()
    );
    // A whole request on a new connection is served.
    assert_eq!(
        mesh.get("client", "reviews", 9080, "/", &[]).await.status,
        200
    );
}
