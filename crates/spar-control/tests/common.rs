//! Shared helpers for in-process control-plane tests: start on port 0, dial with TLS, talk
//! to the admin API over a real socket.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use spar_control::{Options, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub const TOPOLOGY: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web, version: v1}}
spec: {serviceAccountName: web, nodeName: node-1, containers: [{name: web, command: [x]}]}
status: {podIP: 10.1.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: shop, labels: {app: db}}
spec: {serviceAccountName: db, nodeName: node-2, containers: [{name: db, command: [x]}]}
status: {podIP: 10.1.2.5}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-allow, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/db]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-allow, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  rules: [{from: [{source: {namespaces: [shop]}}]}]
";

pub async fn start(state: &Path, config: Option<&Path>) -> Running {
    let mut o = Options::new(state.to_path_buf());
    o.config_dir = config.map(Path::to_path_buf);
    o.grpc_addr = "127.0.0.1:0".parse().expect("addr");
    o.admin_addr = "127.0.0.1:0".parse().expect("addr");
    spar_control::start(o).await.expect("control plane starts")
}

pub async fn channel(addr: SocketAddr, root_pem: &str) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root_pem))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connects over TLS")
}

/// One HTTP/1.0 request to the admin API; returns (status, body).
/// An admin API call as `spar` makes it (with the control plane's admin token).
pub async fn http(
    r: &spar_control::Running,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    raw(
        r.admin_addr,
        method,
        path,
        &format!(
            "Authorization: Bearer {}\r\nContent-Type: application/json\r\n",
            r.admin_token
        ),
        body,
    )
    .await
}

/// An admin API call with exactly these extra header lines (each ending in CRLF).
pub async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin reachable");
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("admin answers")
        .expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
