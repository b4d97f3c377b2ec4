use super::*;

fn provider(json: serde_json::Value) -> Provider {
    compile(&json.to_string()).expect("compiles")
}

fn http_provider() -> Provider {
    provider(
        serde_json::json!({"name": "sample-ext-authz-http", "envoyExtAuthzHttp": {
        "service": "ext-authz.foo.svc.cluster.local", "port": "8000", "pathPrefix": "/check",
        "includeRequestHeadersInCheck": ["x-ext-authz", "x-b3-*"],
        "includeAdditionalHeadersInCheck": {"x-from": "spar"},
        "headersToUpstreamOnAllow": ["x-ext-authz-check-result"],
        "headersToDownstreamOnDeny": ["x-ext-authz-check-result", "content-type"]}}),
    )
}

#[test]
fn providers_compile_with_istio_defaults() {
    let p = http_provider();
    assert_eq!((p.kind, p.port, p.status_on_error), (Kind::Http, 8000, 403));
    assert_eq!(p.timeout, Duration::from_secs(600));
    let g = provider(serde_json::json!({"name": "g", "envoyExtAuthzGrpc": {
        "service": "ext-authz.foo.svc.cluster.local", "port": 9000, "timeout": "2s",
        "statusOnError": "503", "failOpen": true}}));
    assert_eq!(
        (g.kind, g.port, g.status_on_error, g.fail_open),
        (Kind::Grpc, 9000, 503, true)
    );
    assert_eq!(g.timeout, Duration::from_secs(2));
    for (bad, why) in [
        (serde_json::json!({"name": "x"}), "envoyExtAuthzHttp"),
        (
            serde_json::json!({"name": "x", "envoyExtAuthzHttp": {"service": "s"}}),
            "port",
        ),
        (
            serde_json::json!({"name": "x", "envoyExtAuthzHttp": {"service": "s", "port": 1, "statusOnError": "teapot"}}),
            "statusOnError",
        ),
        (
            serde_json::json!({"name": "x", "envoyExtAuthzHttp": {"port": 1}}),
            "service",
        ),
    ] {
        let e = compile(&bad.to_string()).expect_err("refused").to_string();
        assert!(e.contains(why), "{e}");
    }
}

#[test]
fn the_http_check_carries_path_host_and_listed_headers_only() {
    let p = http_provider();
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("x-ext-authz", "allow"),
        ("x-b3-traceid", "1"),
        ("cookie", "secret"),
        ("authorization", "Bearer t"),
    ] {
        h.insert(k, v.parse().expect("v"));
    }
    let r = http_request(&p, &Method::POST, "/headers?a=1", "httpbin:8000", &h).expect("request");
    assert_eq!(r.method(), Method::POST);
    assert_eq!(r.uri(), "/check/headers?a=1");
    let got: Vec<&str> = {
        let mut v: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        v.sort();
        v
    };
    assert_eq!(
        got,
        vec![
            "content-length",
            "host",
            "x-b3-traceid",
            "x-ext-authz",
            "x-from"
        ]
    );
}

#[test]
fn http_answers() {
    let p = http_provider();
    let mut h = HeaderMap::new();
    h.insert("x-ext-authz-check-result", "allowed".parse().expect("v"));
    h.insert("x-other", "1".parse().expect("v"));
    match http_answer(&p, 200, &h, String::new()) {
        Checked::Allow { upstream, .. } => {
            assert_eq!(upstream.len(), 1);
            assert_eq!(upstream[0].0, "x-ext-authz-check-result");
        }
        d => panic!("{d:?}"),
    }
    match http_answer(&p, 401, &h, "denied by ext_authz".into()) {
        Checked::Deny {
            status,
            headers,
            body,
        } => {
            assert_eq!((status, body.as_str()), (401, "denied by ext_authz"));
            assert_eq!(headers.len(), 1, "only the listed headers go to the client");
        }
        a => panic!("{a:?}"),
    }
    assert_eq!(
        http_answer(&p, 503, &h, String::new()),
        Checked::Deny {
            status: 403,
            headers: vec![],
            body: String::new()
        },
        "a 5xx is statusOnError"
    );
    let open = Provider {
        fail_open: true,
        ..p
    };
    assert!(matches!(
        http_answer(&open, 500, &h, String::new()),
        Checked::Allow { .. }
    ));
}

fn frame(m: &impl prost::Message) -> Vec<u8> {
    let b = m.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(&b);
    out
}

#[test]
fn grpc_requests_and_answers() {
    let p = provider(
        serde_json::json!({"name": "g", "envoyExtAuthzGrpc": {"service": "s", "port": 9000}}),
    );
    let mut h = HeaderMap::new();
    h.insert("x-ext-authz", "allow".parse().expect("v"));
    let wire = grpc_request(
        Peer {
            addr: "10.0.0.1:5000".parse().expect("a"),
            principal: "spiffe://cluster.local/ns/foo/sa/sleep",
        },
        Peer {
            addr: "10.0.0.2:8000".parse().expect("a"),
            principal: "spiffe://cluster.local/ns/foo/sa/httpbin",
        },
        "req-1",
        &Method::GET,
        "/headers?x=1",
        "httpbin:8000",
        &h,
        "HTTP/1.1",
    );
    let len = u32::from_be_bytes([wire[1], wire[2], wire[3], wire[4]]) as usize;
    assert_eq!((wire[0], wire.len()), (0, len + 5));
    let req = xa::CheckRequest::decode(&wire[5..]).expect("decodes");
    let a = req.attributes.expect("attributes");
    let http = a.request.and_then(|r| r.http).expect("http");
    assert_eq!(
        (
            http.method.as_str(),
            http.path.as_str(),
            http.query.as_str()
        ),
        ("GET", "/headers?x=1", "x=1")
    );
    assert_eq!(http.headers["x-ext-authz"], "allow");
    assert_eq!(
        a.source.expect("source").principal,
        "spiffe://cluster.local/ns/foo/sa/sleep"
    );
    let hv = |k: &str, v: &str| xa::HeaderValueOption {
        header: Some(xa::HeaderValue {
            key: k.into(),
            value: v.into(),
            raw_value: vec![],
        }),
        append_action: 0,
    };
    let ok = xa::CheckResponse {
        status: Some(xa::RpcStatus {
            code: 0,
            message: String::new(),
        }),
        http_response: Some(xa::check_response::HttpResponse::OkResponse(
            xa::OkHttpResponse {
                headers: vec![hv("x-ext-authz-check-result", "allowed")],
                headers_to_remove: vec!["x-drop".into()],
                response_headers_to_add: vec![],
            },
        )),
    };
    match grpc_answer(&p, &frame(&ok)) {
        Checked::Allow {
            upstream, remove, ..
        } => {
            assert_eq!(upstream[0].1, "allowed");
            assert_eq!(remove[0], "x-drop");
        }
        d => panic!("{d:?}"),
    }
    let denied = xa::CheckResponse {
        status: Some(xa::RpcStatus {
            code: 7,
            message: "denied".into(),
        }),
        http_response: Some(xa::check_response::HttpResponse::DeniedResponse(
            xa::DeniedHttpResponse {
                status: Some(xa::HttpStatus { code: 401 }),
                headers: vec![hv("x-ext-authz-check-result", "denied")],
                body: "no".into(),
            },
        )),
    };
    assert_eq!(
        grpc_answer(&p, &frame(&denied)),
        Checked::Deny {
            status: 401,
            headers: vec![(
                HeaderName::from_static("x-ext-authz-check-result"),
                HeaderValue::from_static("denied")
            )],
            body: "no".into()
        }
    );
    assert_eq!(
        grpc_answer(&p, &[0, 0, 0, 0, 9, 0xff]),
        on_error(&p),
        "garbage is an error"
    );
}
