//! Bad inputs tried on RequestAuthentication: every header value and query string is a
//! client's bytes. Whatever they are, `authenticate` must not panic, must never call a token
//! valid that its issuer did not sign as it stands, and must never let a client's own copy
//! of an output header through.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use serde_json::{Value, json};
use spar_identity::JwtIssuer;

use super::*;

const ISS: &str = "https://issuer.example";

static ISSUER: LazyLock<JwtIssuer> =
    LazyLock::new(|| JwtIssuer::generate("ES256", "k1").expect("key"));

/// Default locations (`Authorization: Bearer`, `access_token`), output headers on.
static DEFAULT: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    rules(
        json!({"issuer": ISS, "outputPayloadToHeader": "x-jwt-payload",
        "outputClaimToHeaders": [{"header": "x-user", "claim": "sub"}]}),
    )
});

/// Custom locations: a header with its own prefix, a parameter, a cookie; token forwarded.
static CUSTOM: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    rules(
        json!({"issuer": ISS, "fromHeaders": [{"name": "x-jwt", "prefix": "Token "}],
        "fromParams": ["my_token"], "fromCookies": ["session"], "forwardOriginalToken": true,
        "outputClaimToHeaders": [{"header": "x-user", "claim": "sub"}]}),
    )
});

/// The output headers each rule set writes (from a verified token only).
fn outputs(custom: bool) -> &'static [&'static str] {
    if custom {
        &["x-user"]
    } else {
        &["x-jwt-payload", "x-user"]
    }
}

fn rules(rule: Value) -> Vec<Rule> {
    let spec: sec::RequestAuthentication =
        serde_json::from_value(json!({"jwtRules": [rule]})).expect("spec");
    let jwks: BTreeMap<String, String> = [(ISS.to_string(), ISSUER.jwks())].into();
    compile("ns/jwt", &spec, &jwks).expect("compiles")
}

fn claims() -> Value {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs()
        + 3600;
    json!({"iss": ISS, "sub": "alice", "exp": exp, "aud": "api"})
}

static TOKEN: LazyLock<(String, Value)> = LazyLock::new(|| {
    let c = claims();
    (ISSUER.sign(&c).expect("sign"), c)
});

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn header_name() -> impl Strategy<Value = HeaderName> {
    prop_oneof![
        prop::sample::select(vec![
            "authorization",
            "x-jwt",
            "cookie",
            "x-jwt-payload",
            "x-user",
            "x-other",
        ])
        .prop_map(HeaderName::from_static),
        "[a-z0-9-]{1,12}".prop_map(|n| HeaderName::from_bytes(n.as_bytes()).expect("name")),
    ]
}

/// Header values: arbitrary bytes, and token-shaped junk behind the prefixes.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..80),
        (
            prop::sample::select(vec![
                "Bearer ",
                "bearer ",
                "BEARER",
                "Token ",
                "session=",
                "a=b; session=",
                "",
            ]),
            "[A-Za-z0-9_.=-]{0,60}",
        )
            .prop_map(|(p, t)| format!("{p}{t}").into_bytes()),
    ]
    .prop_filter_map("a header value", |b| HeaderValue::from_bytes(&b).ok())
}

fn query() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        ".{0,60}",
        (
            prop::sample::select(vec!["access_token=", "my_token=", "x=1&access_token=", "="]),
            "[A-Za-z0-9_.=&-]{0,60}",
        )
            .prop_map(|(k, v)| format!("{k}{v}")),
    ])
}

/// A forged token: any algorithm (`none`, HS*, the right one), our issuer, a signature that
/// is empty, random, or lifted from a real token.
fn forged() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "none", "None", "HS256", "HS512", "ES256", "ES384", "RS256", "PS256", "EdDSA", "",
        ]),
        prop::option::of(prop::sample::select(vec!["k1", "k2", ""])),
        prop::collection::vec(any::<u8>(), 0..72),
        0usize..3,
        "[a-z]{1,8}",
    )
        .prop_map(|(alg, kid, random, sig, sub)| {
            let mut h = json!({"alg": alg, "typ": "JWT"});
            if let Some(k) = kid {
                h["kid"] = json!(k);
            }
            let mut c = claims();
            c["sub"] = json!(sub);
            let sig = match sig {
                0 => String::new(),
                1 => URL_SAFE_NO_PAD.encode(random),
                _ => TOKEN.0.rsplit('.').next().unwrap_or("").to_string(),
            };
            format!("{}.{}.{sig}", b64(&h), b64(&c))
        })
}

/// The real token with characters replaced.
fn mutated_token() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            any::<prop::sample::Index>(),
            prop_oneof![
                prop::sample::select(
                    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
                        .chars()
                        .collect::<Vec<_>>()
                ),
                any::<char>(),
            ],
        ),
        1..4,
    )
    .prop_map(|pokes| {
        let mut t: Vec<char> = TOKEN.0.chars().collect();
        for (at, c) in pokes {
            let at = at.index(t.len());
            t[at] = c;
        }
        t.into_iter().collect()
    })
}

/// Where a token goes, for each rule set: a header (value), or the query.
fn place(custom: bool, slot: usize, token: &str) -> (HeaderMap, Option<String>) {
    let mut h = HeaderMap::new();
    let mut q = None;
    let put = |h: &mut HeaderMap, n: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(n, v);
        }
    };
    match (custom, slot % 3) {
        (false, 0) => put(&mut h, "authorization", format!("Bearer {token}")),
        (false, _) => q = Some(format!("a=1&access_token={token}")),
        (true, 0) => put(&mut h, "x-jwt", format!("Token {token}")),
        (true, 1) => q = Some(format!("my_token={token}&b=2")),
        (true, _) => put(&mut h, "cookie", format!("theme=dark; session={token}")),
    }
    (h, q)
}

fn rule_set(custom: bool) -> &'static [Rule] {
    if custom { &CUSTOM } else { &DEFAULT }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any headers and query: never Valid (nobody but the issuer signs); and a request that
    /// is not authenticated goes on exactly as it came, less the client's own copies of the
    /// output headers.
    #[test]
    fn arbitrary_requests_never_authenticate(
        custom in any::<bool>(),
        headers in prop::collection::vec((header_name(), header_value()), 0..6),
        query in query(),
    ) {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(n, v);
        }
        let mut want = h.clone();
        for o in outputs(custom) {
            want.remove(*o);
        }
        let outcome = authenticate(rule_set(custom), &mut h, query.as_deref());
        prop_assert!(!matches!(outcome, Outcome::Valid(_)), "{outcome:?}");
        prop_assert_eq!(h, want);
    }

    /// Forged tokens (alg `none`, HS*, a lifted signature, random signatures) in every
    /// location: never Valid.
    #[test]
    fn forged_tokens_never_verify(custom in any::<bool>(), slot in 0usize..3, token in forged()) {
        let (mut h, q) = place(custom, slot, &token);
        let outcome = authenticate(rule_set(custom), &mut h, q.as_deref());
        prop_assert!(!matches!(outcome, Outcome::Valid(_)), "{token}: {outcome:?}");
        for o in outputs(custom) {
            prop_assert!(h.get(*o).is_none());
        }
    }

    /// The real token with characters replaced: refused, or (where an edit only touched bits
    /// the encoding ignores) exactly the claims the issuer signed.
    #[test]
    fn mutated_tokens_are_refused_or_unchanged(
        custom in any::<bool>(), slot in 0usize..3, token in mutated_token(),
    ) {
        let (mut h, q) = place(custom, slot, &token);
        if let Outcome::Valid(auth) = authenticate(rule_set(custom), &mut h, q.as_deref()) {
            prop_assert_eq!(&auth.claims, &TOKEN.1, "{}", token);
            prop_assert_eq!(&auth.principal, &format!("{ISS}/alice"));
        }
    }

    /// The real token, with any prefix case and padding, among unrelated headers: Valid,
    /// stripped unless forwarded, and the output headers carry the verified claims only.
    #[test]
    fn real_tokens_verify_among_junk(
        custom in any::<bool>(),
        slot in 0usize..3,
        pad in "[ \t]{0,3}",
        junk in prop::collection::vec((header_name(), header_value()), 0..5),
    ) {
        // Padding only where a header value may carry it (a query or cookie value may not).
        let pad = if slot % 3 == 0 { pad } else { String::new() };
        let (mut h, q) = place(custom, slot, &format!("{pad}{}{pad}", TOKEN.0));
        for (n, v) in junk {
            // Not where a rule looks for a token (those are the other properties' business).
            if !["authorization", "x-jwt", "cookie"].contains(&n.as_str()) {
                h.append(n, v);
            }
        }
        let Outcome::Valid(auth) = authenticate(rule_set(custom), &mut h, q.as_deref()) else {
            return Err(TestCaseError::fail(format!("not valid: {h:?} {q:?}")));
        };
        prop_assert_eq!(&auth.claims, &TOKEN.1);
        let users: Vec<&str> = h.get_all("x-user").iter().filter_map(|v| v.to_str().ok()).collect();
        prop_assert_eq!(users, vec!["alice"], "the verified claim, not the client's copy");
        if !custom {
            prop_assert!(h.get("authorization").is_none(), "stripped");
            let payload = h.get("x-jwt-payload").expect("payload header");
            let decoded = URL_SAFE_NO_PAD.decode(payload.as_bytes()).expect("base64url");
            let v: Value = serde_json::from_slice(&decoded).expect("json");
            prop_assert_eq!(v, TOKEN.1.clone());
        }
    }
}
