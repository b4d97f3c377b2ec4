//! In-process CA over TLS: who may get which certificate, and what the chain looks like.

mod common;

use std::time::Duration;

use spar_identity::ca::make_csr;
use spar_identity::{Identity, Subject};
use spar_xds::ca::IstioCertificateRequest;
use spar_xds::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use x509_parser::prelude::*;

async fn ask(
    running: &spar_control::Running,
    token: Option<&str>,
    impersonate: Option<&str>,
    csr_identity: Option<&Identity>,
    ttl: i64,
) -> Result<Vec<String>, tonic::Status> {
    let ch = common::channel(running.grpc_addr, &running.root_pem).await;
    let mut client = IstioCertificateServiceClient::new(ch);
    let (csr, _key) = make_csr(csr_identity).expect("csr");
    let metadata = impersonate.map(|id| prost_types::Struct {
        fields: [(
            "ImpersonatedIdentity".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(id.to_string())),
            },
        )]
        .into_iter()
        .collect(),
    });
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: ttl,
        metadata,
    });
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    client
        .create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain)
}

fn der(pem: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .expect("pem")
        .1
        .contents
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";

#[tokio::test]
async fn who_gets_which_certificate() {
    let state = tempfile::tempdir().expect("tmp");
    let cfg = tempfile::tempdir().expect("tmp");
    std::fs::write(cfg.path().join("mesh.yaml"), common::TOPOLOGY).expect("write");
    let running = common::start(state.path(), Some(cfg.path())).await;
    let ttl = Duration::from_secs(300);
    let web_pod = Subject::Pod {
        namespace: "shop".into(),
        name: "web-1".into(),
        service_account: "web".into(),
    };
    let pod_token = running.tokens.mint(web_pod, ttl).expect("token");
    let node1 = running
        .tokens
        .mint(
            Subject::Node {
                name: "node-1".into(),
            },
            ttl,
        )
        .expect("token");

    // A workload token gets its own identity, with the requested lifetime...
    let web_id: Identity = WEB.parse().expect("id");
    let chain = ask(&running, Some(&pod_token), None, Some(&web_id), 120)
        .await
        .expect("issued");
    assert_eq!(chain.len(), 2, "leaf then root");
    assert_eq!(chain[1].trim(), running.root_pem.trim());
    let (leaf_der, root_der) = (der(&chain[0]), der(&chain[1]));
    let (_, leaf) = X509Certificate::from_der(&leaf_der).expect("leaf");
    let (_, root) = X509Certificate::from_der(&root_der).expect("root");
    leaf.verify_signature(Some(root.public_key()))
        .expect("chain verifies against the root");
    let uris: Vec<String> = leaf
        .subject_alternative_name()
        .expect("ext")
        .expect("san")
        .value
        .general_names
        .iter()
        .filter_map(|n| {
            if let GeneralName::URI(u) = n {
                Some(u.to_string())
            } else {
                None
            }
        })
        .collect();
    assert_eq!(uris, vec![WEB.to_string()]);
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert_eq!(
        lifetime,
        120 + 60,
        "requested 120 s, back-dated 60 s for clock skew"
    );

    // ...and nothing else.
    let e = ask(&running, Some(&pod_token), Some(DB), None, 0)
        .await
        .expect_err("other identity");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let db_id: Identity = DB.parse().expect("id");
    let e = ask(&running, Some(&pod_token), None, Some(&db_id), 0)
        .await
        .expect_err("CSR for another identity");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // A node token gets identities of pods on its node only.
    let chain = ask(&running, Some(&node1), Some(WEB), None, 0)
        .await
        .expect("web runs on node-1");
    let (_, leaf) = X509Certificate::from_der(&der(&chain[0]))
        .map(|(r, c)| (r.len(), c.validity().clone()))
        .expect("leaf");
    let default_life = leaf.not_after.timestamp() - leaf.not_before.timestamp();
    assert_eq!(default_life, 24 * 3600 + 60, "default lifetime is 24 h");
    let e = ask(&running, Some(&node1), Some(DB), None, 0)
        .await
        .expect_err("db runs on node-2");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("node-1"), "{}", e.message());

    // Missing, forged and expired tokens are refused.
    let e = ask(&running, None, None, None, 0)
        .await
        .expect_err("no token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let other = spar_identity::TokenIssuer::load_or_create(tempfile::tempdir().expect("d").path())
        .expect("issuer");
    let forged = other
        .mint(
            Subject::Node {
                name: "node-1".into(),
            },
            ttl,
        )
        .expect("token");
    let e = ask(&running, Some(&forged), Some(WEB), None, 0)
        .await
        .expect_err("forged");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let expired = running
        .tokens
        .mint_at(
            Subject::Node {
                name: "node-1".into(),
            },
            now - 3600,
            now - 600,
        )
        .expect("token");
    let e = ask(&running, Some(&expired), Some(WEB), None, 0)
        .await
        .expect_err("expired");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn applied_config_and_root_survive_restart() {
    let state = tempfile::tempdir().expect("tmp");
    let running = common::start(state.path(), None).await;
    let root = running.root_pem.clone();
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n";
    let (code, body) = common::http(&running, "POST", "/apply?source=vs.yaml", vs).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("VirtualService/shop/reviews"), "{body}");
    // Same validation as `spar validate`: bad input is refused with file, line and field.
    let bad = vs.replace("subset: v1}", "subset: v1}\n      weight: 30\n    - destination: {host: reviews, subset: v2}\n      weight: 30");
    let (code, body) = common::http(&running, "POST", "/apply?source=bad.yaml", &bad).await;
    assert_eq!(code, 400);
    assert!(
        body.contains(
            "bad.yaml:7: VirtualService/reviews: spec.http[0].route: weights add up to 60"
        ),
        "{body}"
    );
    drop(running);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let running = common::start(state.path(), None).await;
    assert_eq!(running.root_pem, root, "the root persists");
    let (_, reg) = common::http(&running, "GET", "/debug/registry", "").await;
    assert!(
        reg.contains("\"reviews\"") && reg.contains("\"subset\":\"v1\""),
        "{reg}"
    );
    let (code, body) = common::http(&running, "POST", "/delete", vs).await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = common::http(&running, "POST", "/delete", vs).await;
    assert_eq!(code, 400, "deleting twice reports not found");
}

/// The admin API mints tokens and changes the mesh: without the admin token, from a
/// rebinding host name, or as a cross-site `text/plain` POST, nothing gets in.
#[tokio::test]
async fn the_admin_api_needs_its_token() {
    let state = tempfile::tempdir().expect("tmp");
    let running = common::start(state.path(), None).await;
    let token_file = state.path().join("admin-token");
    assert_eq!(
        std::fs::read_to_string(&token_file).expect("token file"),
        running.admin_token
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let mint = r#"{"kind": "node", "name": "node-1"}"#;
    let bearer = format!("Authorization: Bearer {}\r\n", running.admin_token);
    let json = "Content-Type: application/json\r\n";
    let cases = [
        ("no token", String::from(json), 401),
        (
            "a wrong token",
            format!("Authorization: Bearer nope\r\n{json}"),
            401,
        ),
        (
            "text/plain",
            format!("{bearer}Content-Type: text/plain\r\n"),
            415,
        ),
    ];
    for (what, headers, want) in cases {
        let (code, body) = common::raw(running.admin_addr, "POST", "/token", &headers, mint).await;
        assert_eq!(code, want, "{what}: {body}");
        assert!(!body.contains("\"token\""), "{what}: {body}");
    }
    // A DNS-rebinding page reaches the port under its own host name.
    let mut s = tokio::net::TcpStream::connect(running.admin_addr)
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET /debug/registry HTTP/1.0\r\nHost: evil.example:15014\r\n{bearer}\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    assert!(
        out.starts_with("HTTP/1.0 403") || out.starts_with("HTTP/1.1 403"),
        "{out}"
    );
    // With the token: a node token is minted.
    let (code, body) = common::http(&running, "POST", "/token", mint).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"token\""));
}
