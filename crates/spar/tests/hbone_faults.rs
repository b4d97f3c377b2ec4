//! End to end, as root: what a node proxy's HBONE port (15008) does with bad peers. A test
//! client inside a pod's namespace dials a meshed pod with certificates made for the purpose.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Down, repo, require_root, spar, state_json, text};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use spar_identity::ca::make_csr;
use spar_identity::{CertificateAuthority, Identity};

/// The test checks the server, so it accepts whatever certificate the server shows.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn client_config(cert: Option<(Vec<String>, String)>, alpn: bool) -> Arc<rustls::ClientConfig> {
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls13")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyServer));
    let mut cfg = match cert {
        Some((chain, key)) => {
            let certs = chain
                .iter()
                .map(|p| CertificateDer::from_pem_slice(p.as_bytes()).expect("cert"))
                .collect();
            b.with_client_auth_cert(
                certs,
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
            )
            .expect("client cert")
        }
        None => b.with_no_client_auth(),
    };
    if alpn {
        cfg.alpn_protocols = vec![b"h2".to_vec()];
    }
    Arc::new(cfg)
}

/// What one attempt got: an HTTP status, or the failure.
async fn attempt(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    method: http::Method,
    authority: &str,
) -> Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| format!("h2: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    Ok(resp.status().as_u16())
}

/// (what, client certificate, offer ALPN h2, method, authority, status or refused)
type Case = (
    &'static str,
    Option<(Vec<String>, String)>,
    bool,
    http::Method,
    String,
    Result<u16, ()>,
);

/// Run `f` on a thread inside a pod's network namespace.
fn in_pod<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{netns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread")
}

#[test]
#[ignore = "needs root and network namespaces: run as root with --include-ignored (.ci/run does)"]
fn hbone_rejects_bad_peers() {
    require_root("hbone_rejects_bad_peers");
    spar_identity::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path();
    let _guard = Down(state.to_path_buf());
    let extra = repo("crates/spar/tests/fixtures/ambient-extra.yaml");
    let out = spar(
        state,
        &[
            "up",
            "-d",
            repo("examples/bookinfo").to_str().expect("utf-8"),
            extra.to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        spar(
            state,
            &[
                "label",
                "namespace",
                "bookinfo",
                "istio.io/dataplane-mode=ambient"
            ]
        )
        .status
        .success()
    );
    let st = state_json(state);
    let pods = st["plan"]["pods"].as_array().expect("pods");
    let ip_of = |name: &str| {
        pods.iter().find(|p| p["name"] == name).expect("pod")["ip"]
            .as_str()
            .expect("ip")
            .to_string()
    };
    let details: std::net::SocketAddr = format!("{}:15008", ip_of("details-v1-0"))
        .parse()
        .expect("addr");
    let target = format!("{}:9080", ip_of("details-v1-0"));
    let elsewhere = format!("{}:9080", ip_of("ratings-v1-0"));

    // Certificates: a good one from the mesh CA, one from the same root for another trust
    // domain, one from an unrelated CA, and an expired one.
    let ca_dir = state.join("control").join("ca");
    let mesh = CertificateAuthority::load_or_create(&ca_dir, "cluster.local").expect("mesh CA");
    let foreign_td = CertificateAuthority::from_files(
        &ca_dir.join("root-cert.pem"),
        &ca_dir.join("root-key.pem"),
        "evil.org",
    )
    .expect("CA");
    let other_root =
        CertificateAuthority::load_or_create(&state.join("other-ca"), "cluster.local").expect("CA");
    let issue = |ca: &CertificateAuthority, id: &str, ttl: u64| {
        let id: Identity = id.parse().expect("identity");
        let (csr, key) = make_csr(Some(&id)).expect("csr");
        (
            ca.sign_csr(&csr, &id, Duration::from_secs(ttl))
                .expect("signed")
                .chain,
            key,
        )
    };
    let good = issue(&mesh, "spiffe://cluster.local/ns/legacy/sa/default", 600);
    let evil = issue(&foreign_td, "spiffe://evil.org/ns/legacy/sa/default", 600);
    let unknown = issue(
        &other_root,
        "spiffe://cluster.local/ns/legacy/sa/default",
        600,
    );
    let expired = issue(&mesh, "spiffe://cluster.local/ns/legacy/sa/default", 0);
    std::thread::sleep(Duration::from_millis(1500));

    // Wait until details is enrolled (its 15008 answers a good peer).
    let mut last = Err(String::new());
    for _ in 0..50 {
        let (cfg, t) = (client_config(Some(good.clone()), true), target.clone());
        last = in_pod("spar-legacy-client3-0", move || {
            tokio::runtime::Runtime::new()
                .expect("rt")
                .block_on(attempt(details, cfg, http::Method::CONNECT, &t))
        });
        if last == Ok(200) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(last, Ok(200), "a mesh peer is accepted");

    let cases: Vec<Case> = vec![
        (
            "no client certificate",
            None,
            true,
            http::Method::CONNECT,
            target.clone(),
            Err(()),
        ),
        (
            "another trust domain",
            Some(evil),
            true,
            http::Method::CONNECT,
            target.clone(),
            Err(()),
        ),
        (
            "an unknown root",
            Some(unknown),
            true,
            http::Method::CONNECT,
            target.clone(),
            Err(()),
        ),
        (
            "an expired certificate",
            Some(expired),
            true,
            http::Method::CONNECT,
            target.clone(),
            Err(()),
        ),
        (
            "TLS without h2",
            Some(good.clone()),
            false,
            http::Method::CONNECT,
            target.clone(),
            Err(()),
        ),
        (
            "h2 without CONNECT",
            Some(good.clone()),
            true,
            http::Method::GET,
            format!("http://{target}/"),
            Ok(400),
        ),
        (
            "CONNECT to another pod",
            Some(good.clone()),
            true,
            http::Method::CONNECT,
            elsewhere,
            Ok(400),
        ),
        (
            "nothing listening",
            Some(good.clone()),
            true,
            http::Method::CONNECT,
            target.replace(":9080", ":9999"),
            Ok(503),
        ),
    ];
    for (what, cert, alpn, method, authority, want) in cases {
        let cfg = client_config(cert, alpn);
        let got = in_pod("spar-legacy-client3-0", move || {
            tokio::runtime::Runtime::new()
                .expect("rt")
                .block_on(attempt(details, cfg, method, &authority))
        });
        match want {
            Ok(code) => assert_eq!(got, Ok(code), "{what}"),
            Err(()) => assert!(
                got.is_err(),
                "{what}: expected a refused connection, got {got:?}"
            ),
        }
    }
    // The proxy is still serving, and logged why it refused.
    let (cfg, t) = (client_config(Some(good), true), target);
    assert_eq!(
        in_pod("spar-legacy-client3-0", move || {
            tokio::runtime::Runtime::new()
                .expect("rt")
                .block_on(attempt(details, cfg, http::Method::CONNECT, &t))
        }),
        Ok(200)
    );
    let log = std::fs::read_to_string(state.join("logs/proxy-node-2.log")).unwrap_or_default();
    assert!(log.contains("rejected=\"mTLS"), "{log}");
}
