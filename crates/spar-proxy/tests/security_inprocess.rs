//! In process, no root: AuthorizationPolicy, RequestAuthentication and CUSTOM ext_authz at
//! the destination sidecar, per request on pooled connections and per connection on TCP,
//! with Istio's YAML and Istio's answers (403 `RBAC: access denied`, 401 for a bad JWT).

mod harness;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::{Builder, Mesh, request, reviews};
use http::Method;
use spar_identity::JwtIssuer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const H: &str = "reviews";

fn ap(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: mesh}}
spec: {spec}
"
    )
}

async fn status(mesh: &Mesh, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let r = mesh.get("client", H, 9080, path, headers).await;
    (r.status, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_nothing_reaches_the_next_request_on_a_pooled_connection() {
    let mesh = reviews("").await;
    let mut c = mesh.client("client", H, 9080).await;
    let r = c.send(request(Method::GET, H, 9080, "/", &[], "")).await;
    assert_eq!(r.status, 200);
    mesh.apply(&ap("allow-nothing", "{}")).await;
    let r = c.send(request(Method::GET, H, 9080, "/", &[], "")).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "RBAC: access denied"),
        "the same client connection, and the sidecars' pooled upstream connection"
    );
    let m = mesh.metrics("reviews-v1") + &mesh.metrics("reviews-v2") + &mesh.metrics("reviews-v3");
    assert!(
        m.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("reporter=\"destination\"")
            && l.contains("response_code=\"403\"")),
        "denials are counted: {m}"
    );
    mesh.delete(&ap("allow-nothing", "{}")).await;
    let r = c.send(request(Method::GET, H, 9080, "/", &[], "")).await;
    assert_eq!(r.status, 200, "deleting the policy opens it again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_by_principal_is_checked_against_the_verified_identity() {
    let mut mesh = Builder::new()
        .namespace("mesh", &[("istio-injection", "enabled")])
        .service("mesh", "reviews", &[(9080, "http")], &[("app", "reviews")])
        .pod("mesh", "client", &[("app", "client"), ("sa", "client")])
        .pod("mesh", "intruder", &[("app", "intruder"), ("sa", "intruder")])
        .pod("mesh", "reviews-v1", &[("app", "reviews"), ("sa", "reviews")])
        .yaml(&ap(
            "reviews-viewer",
            "{selector: {matchLabels: {app: reviews}}, action: ALLOW, rules: [{from: [{source: {principals: [cluster.local/ns/mesh/sa/client]}}], to: [{operation: {methods: [GET]}}]}]}",
        ))
        .start()
        .await;
    mesh.echo("reviews-v1", &[9080]).await;
    mesh.sidecars(&["reviews-v1", "client", "intruder"]).await;
    assert_eq!(status(&mesh, "/", &[]).await.0, 200);
    let r = mesh.get("intruder", H, 9080, "/", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (403, "RBAC: access denied"));
    // A forged XFCC header names nobody: only the mTLS identity counts.
    let r = mesh
        .get(
            "intruder",
            H,
            9080,
            "/",
            &[(
                "x-forwarded-client-cert",
                "URI=spiffe://cluster.local/ns/mesh/sa/client",
            )],
        )
        .await;
    assert_eq!(r.status, 403);
    let r = mesh
        .send(
            "client",
            H,
            9080,
            request(Method::POST, H, 9080, "/", &[], "{}"),
        )
        .await;
    assert_eq!(r.status, 403, "only GET is allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_deny_by_path_method_and_header() {
    let mesh = reviews(&ap(
        "deny",
        "{action: DENY, rules: [{to: [{operation: {paths: [/admin*], methods: [GET]}}]}, {when: [{key: 'request.headers[x-token]', notValues: [admin, guest]}]}]}",
    ))
    .await;
    let ok = [("x-token", "guest")];
    assert_eq!(status(&mesh, "/ok", &ok).await.0, 200);
    assert_eq!(
        status(&mesh, "/admin/x", &ok).await,
        (403, "RBAC: access denied".into())
    );
    assert_eq!(
        status(&mesh, "/public/../admin", &ok).await.0,
        403,
        "normalized first"
    );
    assert_eq!(status(&mesh, "/ok", &[("x-token", "other")]).await.0, 403);
    assert_eq!(
        status(&mesh, "/ok", &[]).await.0,
        403,
        "no x-token is not admin or guest"
    );
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

const ISS: &str = "testing@secure.spar.dev";

fn jwt_policy(jwks_or_uri: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt-example, namespace: mesh}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules:
  - issuer: {ISS}
    {jwks_or_uri}
    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_invalid_is_401_valid_passes_and_require_jwt_and_groups_decide() {
    let iss = JwtIssuer::generate("RS256", "k1").expect("key");
    let jwks = iss.jwks().replace('\'', "''");
    let mesh = reviews(&jwt_policy(&format!("jwks: '{jwks}'"))).await;
    let good = iss
        .sign(
            &serde_json::json!({"iss": ISS, "sub": ISS, "exp": now() + 600, "groups": ["group1"]}),
        )
        .expect("token");
    let other = JwtIssuer::generate("RS256", "k1").expect("key");
    let forged = other
        .sign(&serde_json::json!({"iss": ISS, "sub": "x", "exp": now() + 600}))
        .expect("token");
    let bearer = |t: &str| format!("Bearer {t}");
    assert_eq!(status(&mesh, "/", &[]).await.0, 200, "no token passes");
    let r = mesh
        .get(
            "client",
            H,
            9080,
            "/",
            &[("authorization", &bearer(&forged))],
        )
        .await;
    assert_eq!((r.status, r.body.as_str()), (401, "Jwt verification fails"));
    let r = mesh
        .get("client", H, 9080, "/", &[("authorization", &bearer(&good))])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = &r.json()["headers"];
    assert!(
        seen.get("authorization").is_none(),
        "the token is not forwarded: {seen}"
    );
    assert_eq!(seen["x-jwt-sub"], ISS, "outputClaimToHeaders");
    // require-jwt: only requests with a valid token from the issuer.
    mesh.apply(&ap(
        "require-jwt",
        &format!("{{selector: {{matchLabels: {{app: reviews}}}}, action: ALLOW, rules: [{{from: [{{source: {{requestPrincipals: ['{ISS}/{ISS}']}}}}]}}]}}"),
    ))
    .await;
    assert_eq!(
        status(&mesh, "/", &[]).await,
        (403, "RBAC: access denied".into())
    );
    assert_eq!(
        status(&mesh, "/", &[("authorization", &bearer(&good))])
            .await
            .0,
        200
    );
    // The groups claim.
    mesh.apply(&ap(
        "require-jwt",
        "{selector: {matchLabels: {app: reviews}}, action: ALLOW, rules: [{when: [{key: 'request.auth.claims[groups]', values: [group2]}]}]}",
    ))
    .await;
    assert_eq!(
        status(&mesh, "/", &[("authorization", &bearer(&good))])
            .await
            .0,
        403,
        "group1 is not group2"
    );
}

/// Serve `body` over HTTP on 127.0.0.1 (what a jwksUri points at).
async fn serve_jwks(body: String) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_uri_keys_are_fetched_by_the_control_plane() {
    let iss = JwtIssuer::generate("ES256", "k1").expect("key");
    let at = serve_jwks(iss.jwks()).await;
    let mesh = reviews(&jwt_policy(&format!("jwksUri: http://{at}/jwks.json"))).await;
    let good = iss
        .sign(&serde_json::json!({"iss": ISS, "sub": "alice", "exp": now() + 600}))
        .expect("token");
    let auth = format!("Bearer {good}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mesh
        .get("client", H, 9080, "/", &[("authorization", auth.as_str())])
        .await
        .status
        != 200
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the fetched keys never verified the token"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(mesh.control.config.jwks.problems().is_empty());
    // A jwksUri nobody answers on is reported, and its tokens fail.
    mesh.apply(&jwt_policy("jwksUri: http://127.0.0.1:9/jwks.json"))
        .await;
    harness::eventually(
        "the failed fetch is reported",
        Duration::from_secs(10),
        || {
            let p = mesh.control.config.jwks.problems();
            async move { p.iter().any(|(u, _)| u.contains(":9/")) }
        },
    )
    .await;
    let r = mesh
        .get("client", H, 9080, "/", &[("authorization", auth.as_str())])
        .await;
    assert_eq!(r.status, 401);
}

const MESH_CONFIG: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: sample-ext-authz-http
      envoyExtAuthzHttp:
        service: ext-authz.mesh.svc.cluster.local
        port: \"8000\"
        includeRequestHeadersInCheck: [x-ext-authz]
        headersToUpstreamOnAllow: [x-ext-authz-check-result]
    - name: sample-ext-authz-grpc
      envoyExtAuthzGrpc:
        service: ext-authz.mesh.svc.cluster.local
        port: 9000
";

async fn ext_authz_mesh(provider: &str) -> Mesh {
    let mut mesh = Builder::new()
        .namespace("mesh", &[("istio-injection", "enabled")])
        .service("mesh", "reviews", &[(9080, "http")], &[("app", "reviews")])
        .service("mesh", "ext-authz", &[(8000, "http"), (9000, "grpc")], &[("app", "ext-authz")])
        .pod("mesh", "client", &[("app", "client")])
        .pod("mesh", "reviews-v1", &[("app", "reviews")])
        .pod("mesh", "ext-authz", &[("app", "ext-authz")])
        .yaml(MESH_CONFIG)
        .yaml(&ap(
            "ext-authz",
            &format!("{{selector: {{matchLabels: {{app: reviews}}}}, action: CUSTOM, provider: {{name: {provider}}}, rules: [{{to: [{{operation: {{paths: [/headers*]}}}}]}}]}}"),
        ))
        .start()
        .await;
    mesh.echo("reviews-v1", &[9080]).await;
    mesh.ext_authz("ext-authz", 8000, 9000).await;
    mesh.sidecars(&["reviews-v1", "ext-authz", "client"]).await;
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_ext_authz_over_http_and_grpc() {
    for provider in ["sample-ext-authz-http", "sample-ext-authz-grpc"] {
        let mesh = ext_authz_mesh(provider).await;
        let r = mesh
            .get("client", H, 9080, "/headers", &[("x-ext-authz", "deny")])
            .await;
        assert_eq!(r.status, 403, "{provider}: {}", r.body);
        assert!(
            r.body.contains("denied by ext_authz"),
            "{provider}: the server's body: {}",
            r.body
        );
        let r = mesh
            .get("client", H, 9080, "/headers", &[("x-ext-authz", "allow")])
            .await;
        assert_eq!(r.status, 200, "{provider}: {}", r.body);
        assert_eq!(
            r.json()["headers"]["x-ext-authz-check-result"],
            "allowed",
            "{provider}: headers to upstream on allow"
        );
        let r = mesh.get("client", H, 9080, "/ip", &[]).await;
        assert_eq!(
            r.status, 200,
            "{provider}: a path the policy does not name is not checked"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_with_an_unknown_provider_denies() {
    let mesh = ext_authz_mesh("no-such-provider").await;
    assert_eq!(
        mesh.get("client", H, 9080, "/headers", &[("x-ext-authz", "allow")])
            .await
            .status,
        403
    );
}

async fn tcp_mesh(extra: &str) -> Mesh {
    let mut b = Builder::new()
        .namespace("mesh", &[("istio-injection", "enabled")])
        .service(
            "mesh",
            "tcp-echo",
            &[(9000, "tcp"), (9001, "tcp-other")],
            &[("app", "tcp-echo")],
        )
        .pod("mesh", "client", &[("app", "client"), ("sa", "client")])
        .pod(
            "mesh",
            "intruder",
            &[("app", "intruder"), ("sa", "intruder")],
        )
        .pod("mesh", "tcp-echo", &[("app", "tcp-echo")]);
    if !extra.is_empty() {
        b = b.yaml(extra);
    }
    let mut mesh = b.start().await;
    mesh.tcp_echo("tcp-echo", 9000).await;
    mesh.tcp_echo("tcp-echo", 9001).await;
    mesh.sidecars(&["tcp-echo", "client", "intruder"]).await;
    mesh
}

async fn echoes(mesh: &Mesh, from: &str, port: u16) -> bool {
    let Ok(mut s) = mesh.try_connect(from, "tcp-echo", port).await else {
        return false;
    };
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"ping"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_authorization_by_port_and_principal() {
    let mesh = tcp_mesh(&ap(
        "tcp-policy",
        "{selector: {matchLabels: {app: tcp-echo}}, action: ALLOW, rules: [{from: [{source: {principals: [cluster.local/ns/mesh/sa/client]}}], to: [{operation: {ports: ['9000']}}]}]}",
    ))
    .await;
    assert!(
        echoes(&mesh, "client", 9000).await,
        "allowed port and principal"
    );
    assert!(
        !echoes(&mesh, "client", 9001).await,
        "another port is reset"
    );
    assert!(
        !echoes(&mesh, "intruder", 9000).await,
        "another principal is reset"
    );
    // An ALLOW with HTTP fields never matches TCP: it allows nothing more.
    mesh.apply(&ap(
        "tcp-policy",
        "{selector: {matchLabels: {app: tcp-echo}}, action: ALLOW, rules: [{to: [{operation: {methods: [GET], ports: ['9000']}}]}]}",
    ))
    .await;
    assert!(
        !echoes(&mesh, "client", 9000).await,
        "methods on TCP fail closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tcp_connection_closes_when_a_policy_denies_it() {
    let mesh = tcp_mesh("").await;
    let mut s = mesh.connect("client", "tcp-echo", 9000).await;
    s.write_all(b"one").await.expect("write");
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).await.expect("echo");
    mesh.apply(&ap(
        "deny-client",
        "{selector: {matchLabels: {app: tcp-echo}}, action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/mesh/sa/client]}}]}]}",
    ))
    .await;
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = s.write_all(b"two").await;
        s.read_to_end(&mut rest).await
    })
    .await;
    assert!(r.is_ok(), "the connection ends rather than hangs");
    assert!(rest.is_empty(), "nothing more is carried: {rest:?}");
}
