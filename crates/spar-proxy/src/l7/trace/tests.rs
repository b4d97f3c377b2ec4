use super::*;

fn headers(list: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in list {
        h.insert(
            http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const S: &str = "00f067aa0ba902b7";

#[test]
fn extract_reads_w3c_b3_single_and_multi() {
    let t = unhex::<16>(T);
    let s = unhex::<8>(S);
    let both = t.zip(s);
    let (w3c_on, w3c_off) = (format!("00-{T}-{S}-01"), format!("00-{T}-{S}-00"));
    let (b3_on, b3_plain) = (format!("{T}-{S}-1"), format!("{T}-{S}"));
    // (headers, trace and parent, sampled, b3 form)
    type Case<'a> = (
        Vec<(&'a str, &'a str)>,
        Option<(TraceId, SpanId)>,
        Option<bool>,
        B3,
    );
    let cases: Vec<Case> = vec![
        (vec![("traceparent", &w3c_on)], both, Some(true), B3::None),
        (vec![("traceparent", &w3c_off)], both, Some(false), B3::None),
        (vec![("b3", &b3_on)], both, Some(true), B3::Single),
        (vec![("b3", &b3_plain)], both, None, B3::Single),
        (vec![("b3", "0")], None, Some(false), B3::Single),
        (
            vec![
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "1"),
            ],
            both,
            Some(true),
            B3::Multi,
        ),
        (
            vec![("x-b3-traceid", T), ("x-b3-spanid", S), ("x-b3-flags", "1")],
            both,
            Some(true),
            B3::Multi,
        ),
        (vec![("x-b3-sampled", "0")], None, Some(false), B3::Multi),
        // A 64-bit B3 trace id is left-padded.
        (
            vec![("x-b3-traceid", "a3ce929d0e0e4736"), ("x-b3-spanid", S)],
            Some((
                [
                    0, 0, 0, 0, 0, 0, 0, 0, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
                ],
                s.expect("span"),
            )),
            None,
            B3::Multi,
        ),
    ];
    for (h, trace, sampled, b3) in cases {
        let got = extract(&headers(&h)).unwrap_or_else(|| panic!("{h:?}"));
        assert_eq!(
            (got.trace, got.sampled, got.b3),
            (trace, sampled, b3),
            "{h:?}"
        );
    }
}

#[test]
fn malformed_or_absent_context_is_ignored() {
    for h in [
        vec![],
        vec![(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )],
        vec![("traceparent", &format!("ff-{T}-{S}-01") as &str)],
        vec![("traceparent", "garbage")],
        vec![("b3", "xyz")],
        vec![("x-b3-traceid", T)],
    ] {
        assert_eq!(extract(&headers(&h)), None, "{h:?}");
    }
}

#[test]
fn begin_continues_the_callers_trace_and_keeps_its_decision() {
    let mut rng = rand::rng();
    let caller = extract(&headers(&[("traceparent", &format!("00-{T}-{S}-01"))]));
    let cx = begin(caller, 0.0, &mut rng);
    assert_eq!(hex(&cx.trace_id), T);
    assert_eq!(cx.parent.map(|p| hex(&p)), Some(S.to_string()));
    assert_ne!(hex(&cx.span_id), S, "a span of its own");
    assert!(cx.sampled, "the caller sampled it: 0% here does not matter");
    let unsampled = extract(&headers(&[("x-b3-sampled", "0")]));
    assert!(!begin(unsampled, 100.0, &mut rng).sampled);
    // Without a caller's decision: the percentage.
    assert!(begin(None, 100.0, &mut rng).sampled);
    assert!(!begin(None, 0.0, &mut rng).sampled);
    let n = (0..10_000)
        .filter(|_| begin(None, 10.0, &mut rng).sampled)
        .count();
    assert!((800..1200).contains(&n), "10% of 10,000: {n}");
    let root = begin(None, 100.0, &mut rng);
    assert_eq!(root.parent, None);
}

#[test]
fn inject_writes_w3c_and_the_b3_form_the_caller_used() {
    let mut rng = rand::rng();
    let caller = extract(&headers(&[
        ("b3", &format!("{T}-{S}-1")),
        ("tracestate", "vendor=x"),
    ]));
    let cx = begin(caller, 0.0, &mut rng);
    let mut h = HeaderMap::new();
    inject(&mut h, &cx, false);
    let span = hex(&cx.span_id);
    assert_eq!(h["traceparent"], format!("00-{T}-{span}-01").as_str());
    assert_eq!(h["tracestate"], "vendor=x");
    assert_eq!(h["b3"], format!("{T}-{span}-1-{S}").as_str());
    assert!(!h.contains_key("x-b3-traceid"));
    // The next hop reads back this span as its parent.
    let next = extract(&h).expect("context");
    assert_eq!(
        next.trace.map(|(t, s)| (hex(&t), hex(&s))),
        Some((T.to_string(), span.clone()))
    );

    let caller = extract(&headers(&[("traceparent", &format!("00-{T}-{S}-00"))]));
    let cx = begin(caller, 100.0, &mut rng);
    let mut h = HeaderMap::new();
    inject(&mut h, &cx, false);
    assert!(
        !h.contains_key("x-b3-traceid"),
        "W3C in, W3C out with OpenTelemetry"
    );
    let mut h = headers(&[("x-b3-flags", "1")]);
    inject(&mut h, &cx, true);
    assert_eq!(h["x-b3-traceid"], T);
    assert_eq!(h["x-b3-parentspanid"], S);
    assert_eq!(h["x-b3-sampled"], "0");
    assert!(!h.contains_key("x-b3-flags"));
    assert!(h["traceparent"].to_str().expect("ascii").ends_with("-00"));
}

#[test]
fn custom_tags_from_literals_headers_and_the_environment() {
    let tags = vec![
        spar_xds::l7::CustomTag {
            tag: "team".into(),
            literal: "payments".into(),
            ..Default::default()
        },
        spar_xds::l7::CustomTag {
            tag: "user".into(),
            header: "End-User".into(),
            default_value: "anonymous".into(),
            ..Default::default()
        },
        spar_xds::l7::CustomTag {
            tag: "missing".into(),
            header: "x-none".into(),
            default_value: "unset".into(),
            ..Default::default()
        },
        spar_xds::l7::CustomTag {
            tag: "env".into(),
            environment: "SPAR_TRACE_TEST_UNSET_VARIABLE".into(),
            default_value: "dflt".into(),
            ..Default::default()
        },
    ];
    let got = custom_tags(&tags, &headers(&[("end-user", "jason")]));
    let s = |k: &str, v: &str| (k.to_string(), Value::Str(v.into()));
    assert_eq!(
        got,
        vec![
            s("team", "payments"),
            s("user", "jason"),
            s("missing", "unset"),
            s("env", "dflt")
        ]
    );
}
