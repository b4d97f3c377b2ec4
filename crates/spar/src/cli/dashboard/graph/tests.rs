use super::*;

fn series(reporter: &str, src: &str, dst: &str, code: &str, n: f64, mtls: bool) -> String {
    format!(
        "istio_requests_total{{reporter=\"{reporter}\",source_workload=\"{src}\",source_workload_namespace=\"mesh\",destination_workload=\"{dst}\",destination_workload_namespace=\"mesh\",request_protocol=\"http\",response_code=\"{code}\",connection_security_policy=\"{}\"}} {n}\n",
        if mtls { "mutual_tls" } else { "none" }
    )
}

fn buckets(src: &str, dst: &str, counts: &[(&str, f64)]) -> String {
    counts
        .iter()
        .map(|(le, c)| format!("istio_request_duration_milliseconds_bucket{{reporter=\"destination\",source_workload=\"{src}\",source_workload_namespace=\"mesh\",destination_workload=\"{dst}\",destination_workload_namespace=\"mesh\",le=\"{le}\"}} {c}\n"))
        .collect()
}

#[test]
fn parse_reads_labels_escapes_and_plain_samples() {
    let s = parse("# HELP x\nup 1\nm{a=\"x\\\"y\",b=\"\\\\\",c=\"é\"} 2.5\nbad{a=} 1\n# EOF\n");
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(s[0].name, "up");
    assert_eq!(s[1].labels["a"], "x\"y");
    assert_eq!(s[1].labels["b"], "\\");
    assert_eq!(s[1].labels["c"], "é");
    assert_eq!(s[1].value, 2.5);
}

#[test]
fn edges_count_each_request_once_with_rates_errors_latency_and_mtls() {
    let before = parse(&format!(
        "{}{}{}",
        series("destination", "client", "reviews-v1", "200", 100.0, true),
        series("source", "client", "reviews-v1", "200", 100.0, true),
        buckets(
            "client",
            "reviews-v1",
            &[("5", 90.0), ("10", 100.0), ("25", 100.0), ("+Inf", 100.0)]
        ),
    ));
    let now = parse(&format!(
        "{}{}{}{}{}",
        series("destination", "client", "reviews-v1", "200", 118.0, true),
        series("destination", "client", "reviews-v1", "503", 2.0, true),
        series("source", "client", "reviews-v1", "200", 120.0, true),
        // Only the source reports a call to a pod outside the mesh: that report counts.
        series("source", "client", "legacy", "200", 5.0, false),
        buckets(
            "client",
            "reviews-v1",
            &[("5", 91.0), ("10", 101.0), ("25", 119.0), ("+Inf", 120.0)]
        ),
    ));
    let g = build(Vec::new(), &before, &now, 10.0);
    let e = g
        .edges
        .iter()
        .find(|e| e.target == "mesh/reviews-v1")
        .expect("edge");
    assert_eq!(e.source, "mesh/client");
    assert!(
        (e.rate - 2.0).abs() < 1e-9,
        "20 requests in 10 s, counted once: {e:?}"
    );
    assert!((e.error_rate - 0.1).abs() < 1e-9, "2 of the 20: {e:?}");
    assert_eq!(
        e.p50_ms,
        Some(25.0),
        "the window's latency, not the lifetime's"
    );
    assert_eq!(
        e.p99_ms,
        Some(25.0),
        "above the last finite bound: that bound"
    );
    assert!(e.mtls);
    let legacy = g
        .edges
        .iter()
        .find(|e| e.target == "mesh/legacy")
        .expect("edge");
    assert!(!legacy.mtls);
    assert!(
        g.nodes
            .iter()
            .any(|n| n.id == "mesh/legacy" && n.mode == "unknown"),
        "peers the box does not list still appear"
    );
}

#[test]
fn tcp_edges_from_node_proxies_unless_http_says_more() {
    let now = parse(
        "istio_tcp_connections_opened_total{reporter=\"destination\",source_workload=\"tcp-client\",source_workload_namespace=\"tcp\",destination_workload=\"echo\",destination_workload_namespace=\"tcp\",request_protocol=\"tcp\",connection_security_policy=\"mutual_tls\"} 7\n\
         istio_tcp_connections_opened_total{reporter=\"destination\",source_workload=\"client\",source_workload_namespace=\"mesh\",destination_workload=\"reviews-v1\",destination_workload_namespace=\"mesh\",request_protocol=\"tcp\",connection_security_policy=\"mutual_tls\"} 3\n",
    );
    let mut both = now.clone();
    both.extend(parse(&series(
        "destination",
        "client",
        "reviews-v1",
        "200",
        9.0,
        true,
    )));
    let g = build(Vec::new(), &[], &both, 5.0);
    let tcp = g
        .edges
        .iter()
        .find(|e| e.target == "tcp/echo")
        .expect("tcp edge");
    assert_eq!(tcp.protocol, "tcp");
    assert_eq!(tcp.p99_ms, None);
    assert!((tcp.rate - 7.0 / 5.0).abs() < 1e-9);
    let http: Vec<&Edge> = g
        .edges
        .iter()
        .filter(|e| e.target == "mesh/reviews-v1")
        .collect();
    assert_eq!(http.len(), 1, "one edge: {http:?}");
    assert_eq!(http[0].protocol, "http");
}
