//! The echo server and client over real sockets, in each mode.

use std::time::{Duration, Instant};

use spar_echo::{PodInfo, client, server, tcp};

fn info(version: &str) -> PodInfo {
    PodInfo {
        hostname: "h".into(),
        pod: format!("echo-{version}"),
        namespace: "test".into(),
        version: version.into(),
        ..Default::default()
    }
}

fn opts(url: String, http2: bool) -> client::Options {
    client::Options {
        url,
        count: 20,
        qps: 0.0,
        concurrency: 4,
        headers: vec![("end-user".into(), "jason".into())],
        http2,
        timeout: Duration::from_secs(5),
        no_keepalive: false,
        method: http::Method::GET,
    }
}

#[tokio::test]
async fn http1_and_h2c_report_what_they_saw() {
    let (addr, _t) = server::bind_http(0, info("v1")).await.expect("binds");
    for http2 in [false, true] {
        let s = client::run(opts(
            format!("http://127.0.0.1:{}/hello", addr.port()),
            http2,
        ))
        .await
        .expect("runs");
        assert_eq!(s.requests, 20);
        assert_eq!(s.by_status.get(&200), Some(&20), "{s}");
        assert_eq!(s.by_version.get("v1"), Some(&20));
        assert_eq!(s.by_pod.get("echo-v1"), Some(&20));
    }
    // One request, read raw, to check the reported fields.
    let body = tcp::tcp_exchange(
        &format!("127.0.0.1:{}", addr.port()),
        "GET /x?format=text HTTP/1.1\r\nHost: a\r\nX-Forwarded-Client-Cert: By=spiffe://td/ns/a/sa/b;URI=spiffe://cluster.local/ns/test/sa/client\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("exchange");
    assert!(
        body.contains("method=GET path=/x protocol=HTTP/1.1"),
        "{body}"
    );
    assert!(body.contains("source=127.0.0.1:"), "{body}");
    assert!(
        body.contains("peer_identity=spiffe://cluster.local/ns/test/sa/client"),
        "{body}"
    );
}

#[tokio::test]
async fn status_delay_and_size() {
    let (addr, _t) = server::bind_http(0, info("v2")).await.expect("binds");
    let mut o = opts(
        format!("http://127.0.0.1:{}/?status=503&delay=300ms", addr.port()),
        false,
    );
    o.count = 4;
    let t0 = Instant::now();
    let s = client::run(o).await.expect("runs");
    assert_eq!(s.by_status.get(&503), Some(&4), "{s}");
    assert!(
        s.p50_ms >= 300.0 && t0.elapsed() >= Duration::from_millis(300),
        "{s}"
    );
    let body = tcp::tcp_exchange(
        &format!("127.0.0.1:{}", addr.port()),
        "GET /?size=4096 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("exchange");
    let (head, payload) = body.split_once("\r\n\r\n").expect("http");
    assert!(head.contains("content-length: 4096"), "{head}");
    assert_eq!(payload.len(), 4096);
    assert!(
        serde_json::from_str::<serde_json::Value>(payload).is_ok(),
        "padded JSON stays JSON"
    );
}

#[tokio::test]
async fn client_counts_transport_errors_and_paces() {
    // Nothing listens on this port (bound then dropped).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut o = opts(format!("http://127.0.0.1:{port}/"), false);
    o.count = 3;
    let s = client::run(o).await.expect("runs");
    assert_eq!((s.requests, s.errors), (3, 3));
    assert!(s.first_error.is_some());
    // --qps paces the requests: 10 at 50/s take at least 180 ms.
    let (addr, _t) = server::bind_http(0, info("v1")).await.expect("binds");
    let mut o = opts(format!("http://127.0.0.1:{}/", addr.port()), false);
    (o.count, o.qps) = (10, 50.0);
    let t0 = Instant::now();
    client::run(o).await.expect("runs");
    assert!(t0.elapsed() >= Duration::from_millis(180));
}

#[tokio::test]
async fn tcp_echo_and_server_first() {
    let (addr, _t) = tcp::bind_tcp_echo(0, None).await.expect("binds");
    assert_eq!(
        tcp::tcp_exchange(&addr.to_string(), "ping\n")
            .await
            .expect("echo"),
        "ping\n"
    );
    let (addr, _t) = tcp::bind_server_first(0, info("v1")).await.expect("binds");
    let (banner, answer) = tcp::server_first_exchange(&addr.to_string())
        .await
        .expect("exchange");
    assert_eq!(banner, "220 echo-v1 spar-echo server-first ready");
    assert_eq!(answer, "echo: hello");
}

#[tokio::test]
async fn grpc_unary_and_bidirectional_stream() {
    let (addr, _t) = spar_echo::grpc::bind_grpc(0, info("v7"))
        .await
        .expect("bind");
    let url = format!("http://127.0.0.1:{}", addr.port());
    let s = spar_echo::grpc::call(&url, "hi", 0).await;
    assert_eq!(s.error, None);
    assert_eq!(s.replies, vec!["hi"]);
    assert_eq!(s.pods, vec!["echo-v7"]);
    let s = spar_echo::grpc::call(&url, "m", 3).await;
    assert_eq!(s.error, None);
    assert_eq!(s.replies, vec!["m-0", "m-1", "m-2"]);
}

#[tokio::test]
async fn websocket_echo() {
    let (addr, _t) = server::bind_http(0, info("v1")).await.expect("bind");
    let got = spar_echo::ws::exchange(&format!("127.0.0.1:{}", addr.port()), "/ws", "hello ws")
        .await
        .expect("exchange");
    assert_eq!(got, "hello ws");
}

#[tokio::test]
async fn tcp_banner_prefixes_each_answer_like_istios_tcp_echo() {
    let banner = info("v2").expand("hello {version} from {pod}");
    let (addr, _t) = tcp::bind_tcp_echo(0, Some(banner)).await.expect("binds");
    assert_eq!(
        tcp::tcp_exchange(&addr.to_string(), "one\ntwo\n")
            .await
            .expect("echo"),
        "hello v2 from echo-v2 one\nhello v2 from echo-v2 two\n"
    );
}

#[tokio::test]
async fn metrics_count_requests_and_the_log_line_names_what_was_asked() {
    let mut i = info("v1");
    i.metrics = true;
    let (addr, _t) = server::bind_http(0, i).await.expect("binds");
    let target = format!("127.0.0.1:{}", addr.port());
    for _ in 0..3 {
        tcp::tcp_exchange(
            &target,
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("request");
    }
    let body = tcp::tcp_exchange(
        &target,
        "GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("metrics");
    assert!(
        body.contains("spar_echo_requests_total{pod=\"echo-v1\",version=\"v1\"} 4"),
        "three requests and the scrape itself: {body}"
    );

    let req = http::Request::get("/reviews/1?u=jason")
        .header("host", "reviews:9080")
        .header("x-request-id", "abc")
        .body(())
        .expect("request");
    let peer: std::net::SocketAddr = "10.244.1.7:40000".parse().expect("addr");
    assert_eq!(
        server::log_line(&req, peer, &["x-request-id".into(), "end-user".into()]),
        "echo: GET /reviews/1?u=jason host=reviews:9080 source=10.244.1.7:40000 x-request-id=abc end-user=-"
    );
}
