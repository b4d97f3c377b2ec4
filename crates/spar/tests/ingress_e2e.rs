//! End to end, as root: Istio's ingress tasks through the box's ingress gateways
//! (examples/ingress/mesh.yaml), with `curl` on the host as a user runs them (SNI passthrough
//! to a backend that terminates TLS itself included): a Gateway API
//! Gateway of class `istio` over HTTP and HTTPS (TLS terminated with a Secret given to
//! `spar up`), Istio's classic Gateway with a VirtualService bound to it, backends in a sidecar
//! namespace and in an ambient namespace that uses a waypoint, reached with mesh mTLS; then
//! AuthorizationPolicy at the gateways (Istio's "ingress access control"): by `targetRefs` to
//! the Gateway API gateway, by `selector` for the classic one, and on a passthrough listener.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Down, repo, require_root, spar, text};

/// One `curl` from the host: (status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs (Debian package curl)");
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = t.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn eventually(what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// A self-signed certificate for `host` and its key, as a kubernetes.io/tls Secret, and the
/// certificate alone for curl's `--cacert`.
fn secret(dir: &Path, name: &str, host: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    use base64::Engine as _;
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![host.to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: bookinfo}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(&cert.pem()),
        b64(&key.serialize_pem())
    );
    let (s, c) = (
        dir.join(format!("{name}.yaml")),
        dir.join(format!("{name}.pem")),
    );
    std::fs::write(&s, yaml).expect("write");
    std::fs::write(&c, cert.pem()).expect("write");
    (s, c)
}

/// The address `spar status` gives for an ingress pod.
fn ingress_address(state: &Path, pod_prefix: &str, port: u16) -> String {
    let status = text(&spar(state, &["status"]));
    status
        .lines()
        .find(|l| l.starts_with("INGRESS") && l.contains(pod_prefix))
        .and_then(|l| {
            l.split_whitespace()
                .map(|w| w.trim_end_matches(','))
                .find(|w| w.ends_with(&format!(":{port}")))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no ingress {pod_prefix} on {port} in:\n{status}"))
}

#[test]
#[ignore = "needs root and network namespaces: run as root with --include-ignored (.ci/run does)"]
fn ingress_tasks() {
    require_root("ingress_tasks");
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path();
    let _guard = Down(state.to_path_buf());
    let (secret_file, ca) = secret(state, "bookinfo-credential", "bookinfo.example.com");
    // Istio's "TLS ingress gateway for multiple hosts": a second HTTPS listener on 443 with
    // its own host name and Secret, added to the example here.
    let (second_file, second_ca) = secret(state, "second-credential", "productpage.example.org");
    let example = std::fs::read_to_string(repo("examples/ingress/mesh.yaml")).expect("example");
    let anchor = "      certificateRefs: [{name: bookinfo-credential}]\n";
    assert!(example.contains(anchor), "the example's HTTPS listener");
    let mesh = state.join("mesh.yaml");
    std::fs::write(
        &mesh,
        example.replacen(
            anchor,
            &format!(
                "{anchor}  - name: https-2\n    port: 443\n    protocol: HTTPS\n    hostname: productpage.example.org\n    tls:\n      mode: Terminate\n      certificateRefs: [{{name: second-credential}}]\n"
            ),
            1,
        ),
    )
    .expect("write");
    let out = spar(
        state,
        &[
            "up",
            "-d",
            mesh.to_str().expect("utf-8"),
            secret_file.to_str().expect("utf-8"),
            second_file.to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));

    // Gateway API, HTTP: the route to productpage (sidecar mode), mesh mTLS behind the gateway.
    let http = ingress_address(state, "bookinfo-gateway-istio", 80);
    eventually("productpage through the gateway", || {
        let (code, body) = curl(&[&format!("http://{http}/productpage")]);
        (code == 200 && body.contains("productpage-v1"))
            .then_some(())
            .ok_or(format!("{code} {body}"))
    });
    let (_, body) = curl(&[&format!("http://{http}/productpage")]);
    assert!(
        body.contains("spiffe://cluster.local/ns/bookinfo/sa/bookinfo-gateway-istio"),
        "the sidecar saw the gateway's identity over mTLS: {body}"
    );
    // A path no route takes.
    let (code, _) = curl(&[&format!("http://{http}/nothing-here")]);
    assert_eq!(code, 404);
    // An ambient backend whose Service uses a waypoint.
    eventually("details (ambient) through the gateway", || {
        let (code, body) = curl(&[&format!("http://{http}/details/0")]);
        (code == 200 && body.contains("details-v1"))
            .then_some(())
            .ok_or(format!("{code} {body}"))
    });

    // Gateway API, HTTPS: TLS terminated with the Secret's certificate.
    let https = ingress_address(state, "bookinfo-gateway-istio", 443);
    let resolve = format!(
        "bookinfo.example.com:443:{}",
        https.trim_end_matches(":443")
    );
    eventually("HTTPS with the Secret", || {
        let (code, body) = curl(&[
            "--resolve",
            &resolve,
            "--cacert",
            ca.to_str().expect("utf-8"),
            "https://bookinfo.example.com/productpage",
        ]);
        (code == 200 && body.contains("productpage-v1"))
            .then_some(())
            .ok_or(format!("{code} {body}"))
    });

    // The second host on the same port: its own certificate (curl trusts only that one),
    // chosen by SNI; the first host still gets its own.
    let resolve2 = format!(
        "productpage.example.org:443:{}",
        https.trim_end_matches(":443")
    );
    eventually(
        "HTTPS for a second host on 443, with its own Secret",
        || {
            let (code, body) = curl(&[
                "--resolve",
                &resolve2,
                "--cacert",
                second_ca.to_str().expect("utf-8"),
                "https://productpage.example.org/productpage",
            ]);
            (code == 200 && body.contains("productpage-v1"))
                .then_some(())
                .ok_or(format!("{code} {body}"))
        },
    );
    let (code, _) = curl(&[
        "--resolve",
        &resolve,
        "--cacert",
        ca.to_str().expect("utf-8"),
        "https://bookinfo.example.com/productpage",
    ]);
    assert_eq!(code, 200, "the first host keeps its own certificate");

    // Istio's classic Gateway and a VirtualService bound to it, by Host.
    let classic = ingress_address(state, "istio-ingressgateway", 8080);
    eventually("the classic gateway routes by host", || {
        let (code, body) = curl(&[
            "-H",
            "Host: httpbin.example.com",
            &format!("http://{classic}/status/200"),
        ]);
        (code == 200 && body.contains("productpage-v1"))
            .then_some(())
            .ok_or(format!("{code} {body}"))
    });
    let (code, _) = curl(&[
        "-H",
        "Host: other.example.com",
        &format!("http://{classic}/status/200"),
    ]);
    assert_eq!(code, 404, "another host has no route on that gateway");

    // SNI passthrough (Istio's "Ingress Gateway without TLS Termination"): my-nginx
    // terminates TLS with a certificate only it has; the gateways route by SNI without
    // terminating, through the classic Gateway (PASSTHROUGH, a VirtualService `tls` route) and
    // the Gateway API one (a TLS listener in mode Passthrough, a TLSRoute).
    for (what, pod, port) in [
        ("classic Gateway, PASSTHROUGH", "istio-ingressgateway", 443),
        ("Gateway API, TLSRoute", "bookinfo-gateway-istio", 8443),
    ] {
        let addr = ingress_address(state, pod, port);
        let ip = addr.rsplit_once(':').map_or(addr.as_str(), |(ip, _)| ip);
        let url = |host: &str| format!("https://{host}:{port}/");
        let resolve = |host: &str| format!("{host}:{port}:{ip}");
        eventually(what, || {
            let (code, body) = curl(&[
                "-k",
                "--resolve",
                &resolve("nginx.example.com"),
                &url("nginx.example.com"),
            ]);
            // Only the backend's openssl answers this: the gateway has no certificate for it.
            (code == 200 && body.contains("s_server -accept 8443"))
                .then_some(())
                .ok_or(format!("{code} {body}"))
        });
        let (code, _) = curl(&[
            "-k",
            "--resolve",
            &resolve("other.example.com"),
            &url("other.example.com"),
        ]);
        assert_eq!(code, 0, "{what}: a server name no route takes is closed");
    }

    // Authorization at the gateways, applied live; each denial as Istio's gateway answers it.
    let policies = state.join("ingress-policies.yaml");
    std::fs::write(
        &policies,
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-details-from-outside, namespace: bookinfo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: bookinfo-gateway}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/details/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: classic-from-elsewhere-only, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: ALLOW
  rules: [{from: [{source: {remoteIpBlocks: [192.0.2.0/24]}}]}]
"#,
    )
    .expect("write");
    let out = spar(state, &["apply", "-f", policies.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    eventually("a DENY targeting the Gateway API gateway", || {
        let (code, body) = curl(&[&format!("http://{http}/details/0")]);
        (code == 403 && body == "RBAC: access denied")
            .then_some(())
            .ok_or(format!("{code} {body}"))
    });
    let (code, _) = curl(&[&format!("http://{http}/productpage")]);
    assert_eq!(code, 200, "a path the DENY does not name");
    let (code, body) = curl(&[
        "--resolve",
        &resolve,
        "--cacert",
        ca.to_str().expect("utf-8"),
        "https://bookinfo.example.com/details/0",
    ]);
    assert_eq!(
        (code, body.as_str()),
        (403, "RBAC: access denied"),
        "HTTPS too"
    );
    eventually("an ALLOW by selector on the classic gateway", || {
        let (code, body) = curl(&[
            "-H",
            "Host: httpbin.example.com",
            &format!("http://{classic}/status/200"),
        ]);
        (code == 403 && body == "RBAC: access denied")
            .then_some(())
            .ok_or(format!("{code} {body}"))
    });
    // The classic gateway's passthrough listener: the ALLOW holds there too, per connection.
    let addr = ingress_address(state, "istio-ingressgateway", 443);
    let ip = addr.rsplit_once(':').map_or(addr.as_str(), |(ip, _)| ip);
    let (code, _) = curl(&[
        "-k",
        "--resolve",
        &format!("nginx.example.com:443:{ip}"),
        "https://nginx.example.com:443/",
    ]);
    assert_eq!(
        code, 0,
        "a passthrough connection the policy denies is closed"
    );
    // A DENY on HTTP fields (`paths`) reaches a passthrough listener of the same gateway
    // without them (as Istio builds TCP filters: fail closed), so it closes every passthrough
    // connection; once the policies are deleted, the passthrough answers again.
    let addr = ingress_address(state, "bookinfo-gateway-istio", 8443);
    let ip = addr
        .rsplit_once(':')
        .map_or(addr.as_str(), |(ip, _)| ip)
        .to_string();
    let nginx = || {
        curl(&[
            "-k",
            "--resolve",
            &format!("nginx.example.com:8443:{ip}"),
            "https://nginx.example.com:8443/",
        ])
    };
    assert_eq!(
        nginx().0,
        0,
        "the paths DENY applies to TCP without its paths"
    );
    let out = spar(state, &["delete", "-f", policies.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    eventually("passthrough after the policies are deleted", || {
        let (code, body) = nginx();
        (code == 200 && body.contains("s_server -accept 8443"))
            .then_some(())
            .ok_or(format!("{code} {body}"))
    });
    // `connection.sni` at the Gateway API gateway: the name the client sent is what policies
    // see. First an ALLOW for one name only: plain HTTP (no SNI) and another HTTPS name are
    // refused, the passthrough connection that names it goes through.
    let sni_policy = |action: &str| {
        std::fs::write(
            &policies,
            format!(
                r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: by-sni, namespace: bookinfo}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: bookinfo-gateway}}]
  action: {action}
  rules: [{{when: [{{key: connection.sni, values: [nginx.example.com]}}]}}]
"#
            ),
        )
        .expect("write");
        let out = spar(state, &["apply", "-f", policies.to_str().expect("utf-8")]);
        assert!(out.status.success(), "{}", text(&out));
    };
    let bookinfo_https = || {
        curl(&[
            "--resolve",
            &resolve,
            "--cacert",
            ca.to_str().expect("utf-8"),
            "https://bookinfo.example.com/productpage",
        ])
    };
    sni_policy("ALLOW");
    eventually("an ALLOW by connection.sni refuses plain HTTP", || {
        let (code, body) = curl(&[&format!("http://{http}/productpage")]);
        (code == 403).then_some(()).ok_or(format!("{code} {body}"))
    });
    let (code, body) = nginx();
    assert!(
        code == 200 && body.contains("s_server -accept 8443"),
        "the passthrough connection naming the allowed SNI passes: {code} {body}"
    );
    assert_eq!(bookinfo_https().0, 403, "another SNI is not allowed");
    // Then a DENY of that name: it alone is refused.
    sni_policy("DENY");
    eventually("a DENY by connection.sni", || {
        let (code, body) = curl(&[&format!("http://{http}/productpage")]);
        (code == 200).then_some(()).ok_or(format!("{code} {body}"))
    });
    let (code, _) = nginx();
    assert_eq!(code, 0, "a passthrough connection the DENY names is closed");
    assert_eq!(bookinfo_https().0, 200, "another SNI passes");
}
