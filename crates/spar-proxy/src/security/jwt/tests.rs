use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use spar_identity::JwtIssuer;

use super::*;

const ISS: &str = "https://issuer.example";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

fn rules(issuer: &JwtIssuer, rule: Value) -> Vec<Rule> {
    let spec: sec::RequestAuthentication =
        serde_json::from_value(json!({"jwtRules": [rule]})).expect("spec");
    let jwks: BTreeMap<String, String> = [(ISS.to_string(), issuer.jwks())].into_iter().collect();
    compile("ns/jwt", &spec, &jwks).expect("compiles")
}

fn token(issuer: &JwtIssuer, extra: Value) -> String {
    let mut c = json!({"iss": ISS, "sub": "alice", "exp": now() + 600, "groups": ["g1"], "n": 7});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    issuer.sign(&c).expect("sign")
}

fn bearer(t: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        format!("Bearer {t}").parse().expect("value"),
    );
    h
}

#[test]
fn valid_tokens_become_a_request_principal_and_are_stripped() {
    for alg in ["ES256", "RS256"] {
        let iss = JwtIssuer::generate(alg, "k1").expect("key");
        let r = rules(&iss, json!({"issuer": ISS}));
        let mut h = bearer(&token(&iss, json!({"aud": ["a", "b"], "azp": "app"})));
        let Outcome::Valid(auth) = authenticate(&r, &mut h, None) else {
            panic!("{alg}: valid");
        };
        assert_eq!(auth.principal, format!("{ISS}/alice"));
        assert_eq!(auth.audiences, vec!["a", "b"]);
        assert_eq!(auth.presenter.as_deref(), Some("app"));
        assert_eq!(auth.claims["groups"][0], "g1");
        assert!(
            h.get("authorization").is_none(),
            "{alg}: stripped by default"
        );
    }
}

#[test]
fn failures_are_401_reasons_and_no_token_passes() {
    let iss = JwtIssuer::generate("ES256", "k1").expect("key");
    let other = JwtIssuer::generate("ES256", "k1").expect("key");
    let r = rules(&iss, json!({"issuer": ISS, "audiences": ["api"]}));
    let cases: Vec<(String, &str)> = vec![
        (
            token(&iss, json!({"aud": "api", "exp": now() - 3600})),
            "Jwt is expired",
        ),
        (
            token(&iss, json!({"aud": "api", "iss": "https://elsewhere"})),
            "Jwt issuer is not configured",
        ),
        (
            token(&other, json!({"aud": "api"})),
            "Jwt verification fails",
        ),
        (
            token(&iss, json!({"aud": "web"})),
            "Audiences in Jwt are not allowed",
        ),
        (token(&iss, json!({})), "Audiences"),
        ("not.a.jwt".into(), "Jwt verification fails"),
    ];
    for (t, why) in cases {
        match authenticate(&r, &mut bearer(&t), None) {
            Outcome::Invalid(w) => assert!(w.contains(why), "{w} should say {why}"),
            o => panic!("{why}: {o:?}"),
        }
    }
    assert_eq!(
        authenticate(&r, &mut HeaderMap::new(), None),
        Outcome::Missing
    );
    // An HMAC token signed with the public key as a secret (the classic confusion) fails.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("k1".into()),
            ..jsonwebtoken::Header::new(Algorithm::HS256)
        },
        &json!({"iss": ISS, "sub": "x", "exp": now() + 60, "aud": "api"}),
        &jsonwebtoken::EncodingKey::from_secret(iss.jwks().as_bytes()),
    )
    .expect("hs256");
    assert!(matches!(
        authenticate(&r, &mut bearer(&hs), None),
        Outcome::Invalid(_)
    ));
}

#[test]
fn an_issuer_without_keys_yet_rejects_its_tokens() {
    let iss = JwtIssuer::generate("ES256", "k1").expect("key");
    let spec: sec::RequestAuthentication = serde_json::from_value(
        json!({"jwtRules": [{"issuer": ISS, "jwksUri": "http://keys/jwks.json"}]}),
    )
    .expect("spec");
    let r = compile("ns/jwt", &spec, &BTreeMap::new()).expect("compiles");
    assert!(matches!(
        authenticate(&r, &mut bearer(&token(&iss, json!({}))), None),
        Outcome::Invalid(_)
    ));
}

#[test]
fn locations_and_output_headers() {
    let iss = JwtIssuer::generate("ES256", "k1").expect("key");
    let t = token(&iss, json!({}));
    // A custom header with a prefix; forwarded on request; payload and claims as headers.
    let r = rules(
        &iss,
        json!({"issuer": ISS, "fromHeaders": [{"name": "x-jwt", "prefix": "Token "}],
               "forwardOriginalToken": true, "outputPayloadToHeader": "x-jwt-payload",
               "outputClaimToHeaders": [{"header": "x-user", "claim": "sub"}, {"header": "x-n", "claim": "n"}]}),
    );
    let mut h = HeaderMap::new();
    h.insert("x-jwt", format!("Token {t}").parse().expect("v"));
    h.insert("x-user", "mallory".parse().expect("v"));
    assert!(matches!(authenticate(&r, &mut h, None), Outcome::Valid(_)));
    assert!(h.get("x-jwt").is_some(), "forwarded");
    assert_eq!(h.get("x-user").and_then(|v| v.to_str().ok()), Some("alice"));
    assert_eq!(h.get("x-n").and_then(|v| v.to_str().ok()), Some("7"));
    let payload = h
        .get("x-jwt-payload")
        .and_then(|v| v.to_str().ok())
        .expect("payload header");
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    let claims: Value = serde_json::from_slice(&decoded).expect("json");
    assert_eq!(claims["sub"], "alice");
    // Custom locations replace the defaults: a bearer header is not looked at.
    assert_eq!(authenticate(&r, &mut bearer(&t), None), Outcome::Missing);
    // Without a token, a client's own claim header does not survive.
    let mut forged = HeaderMap::new();
    forged.insert("x-user", "admin".parse().expect("v"));
    assert_eq!(authenticate(&r, &mut forged, None), Outcome::Missing);
    assert!(forged.get("x-user").is_none());
    // Query parameters and cookies.
    let r = rules(
        &iss,
        json!({"issuer": ISS, "fromParams": ["my_token"], "fromCookies": ["session"]}),
    );
    let q = format!("a=1&my_token={t}");
    assert!(matches!(
        authenticate(&r, &mut HeaderMap::new(), Some(&q)),
        Outcome::Valid(_)
    ));
    let mut c = HeaderMap::new();
    c.insert("cookie", format!("x=1; session={t}").parse().expect("v"));
    assert!(matches!(authenticate(&r, &mut c, None), Outcome::Valid(_)));
    // The default locations: the access_token parameter.
    let r = rules(&iss, json!({"issuer": ISS}));
    let q = format!("access_token={t}");
    assert!(matches!(
        authenticate(&r, &mut HeaderMap::new(), Some(&q)),
        Outcome::Valid(_)
    ));
}

#[test]
fn verified_tokens_are_cached_only_as_they_are_and_until_they_expire() {
    let iss = JwtIssuer::generate("ES256", "k1").expect("key");
    let r = rules(&iss, json!({"issuer": ISS, "forwardOriginalToken": true}));
    let good = token(&iss, json!({}));
    for _ in 0..3 {
        let mut h = bearer(&good);
        assert!(matches!(authenticate(&r, &mut h, None), Outcome::Valid(_)));
        assert!(h.get("authorization").is_some(), "forwarded as asked");
    }
    assert_eq!(
        r[0].cache.lock().expect("lock").len(),
        1,
        "verified once, then cached"
    );
    // The same claims under another signature are not the cached token.
    let (head, _) = good.rsplit_once('.').expect("three parts");
    let forged = format!("{head}.AAAA");
    assert!(matches!(
        authenticate(&r, &mut bearer(&forged), None),
        Outcome::Invalid(_)
    ));
    // An entry past its `exp` is not used: the token is verified again (here it fails).
    let plant = |expires| {
        r[0].cache.lock().expect("lock").insert(
            forged.clone(),
            Verified {
                auth: std::sync::Arc::new(RequestAuth {
                    principal: format!("{ISS}/mallory"),
                    claims: json!({"iss": ISS, "sub": "mallory"}),
                    ..Default::default()
                }),
                expires: Some(expires),
            },
        );
    };
    plant(now() - 1);
    assert!(matches!(
        authenticate(&r, &mut bearer(&forged), None),
        Outcome::Invalid(_)
    ));
    plant(now() + 60);
    assert!(
        matches!(
            authenticate(&r, &mut bearer(&forged), None),
            Outcome::Valid(_)
        ),
        "a live entry is used as is (this is why only verified tokens are ever inserted)"
    );
}
