//! SNI passthrough at an ingress gateway: a listener whose TLS the gateway does not terminate
//! (Istio's Gateway `tls.mode: PASSTHROUGH` with VirtualService `tls` routes, or a Gateway API
//! `TLS` listener in mode `Passthrough` with TLSRoutes). The gateway reads the client's
//! ClientHello only to learn the server name it asks for, answers nothing, and relays the
//! connection, ClientHello included and untouched, to the Service its routes pick; the backend
//! terminates TLS with its own certificate.
//!
//! ```text
//! listener port -> read the ClientHello (rustls Acceptor; within the handshake timeout)
//!  -> SNI -> authorize the connection (the gateway's policies, `connection.sni` known, as
//!     TCP: a denied one is closed) -> the port's gateway hosts: the first TLS route whose sniHosts match (none: close)
//!  -> weighted destination -> its endpoints (`l4::plan::to_target`)
//!  -> connect (HBONE with the gateway's identity, or plain TCP) -> replay the hello -> relay
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::config::{Target, TlsRoute};
use super::ingress::Ingress;
use crate::l4::outbound::connect_first;
use crate::l4::plan::{Admitted, to_target};
use crate::l4::relay::{labels, relay};
use crate::security::authz::Sni;
use crate::snapshot::Snapshot;

/// A ClientHello larger than this is refused (TLS allows 16 KiB records; a hello spread over a
/// few is still far below this).
const MAX_HELLO: usize = 64 * 1024;

/// Serve one client connection on passthrough listener `port`.
pub async fn serve(ig: Arc<Ingress>, port: u16, mut s: TcpStream, peer: SocketAddr) {
    let log = format!("gateway src={peer} port={port} passthrough");
    let hello = tokio::time::timeout(ig.proxy.limits.handshake, client_hello(&mut s)).await;
    let (hello, sni) = match hello {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return tracing::info!(target: "access", "{log} rejected=\"{e}\""),
        Err(_) => return ig.proxy.limit_metrics.timed_out(),
    };
    let Some(sni) = sni else {
        return tracing::info!(target: "access", "{log} rejected=\"the ClientHello names no server (SNI)\"");
    };
    let snap = ig.proxy.snapshot.load_full();
    let conn = Admitted::external(SocketAddr::new(ig.pod.ip, port), peer);
    if let Err(why) = super::authorize::connection(&snap, &conn, Sni::Sent(Some(&sni))) {
        return tracing::info!(target: "access", "{log} sni={sni} denied=\"{why}\"");
    }
    let Some(target) = pick(&snap, port, &sni, &mut rand::rng()) else {
        return tracing::info!(target: "access", "{log} sni={sni} error=\"no route\"");
    };
    let Some(plan) = to_target(&snap, &target, port, &mut rand::rng()) else {
        return tracing::info!(target: "access", "{log} sni={sni} error=\"no service {}\"", target.host);
    };
    let (mut upstream, up) = match connect_first(&ig.proxy, &ig.pod, &plan.candidates, peer).await {
        Ok(x) => x,
        Err(last) => {
            return tracing::info!(target: "access", "{log} sni={sni} error=\"{last}\"");
        }
    };
    let log = format!("{log} sni={sni} upstream={}", up.target());
    if let Err(e) = upstream.write_all(&hello).await {
        return tracing::info!(target: "access", "{log} error=\"{e}\"");
    }
    let l = labels(
        "source",
        Some(&ig.pod.workload),
        up.workload().map(|w| &**w),
        plan.service.as_ref(),
        up.mtls(),
    );
    relay(&ig.proxy.metrics, s, upstream, l, log, None).await
}

/// Read until a whole ClientHello is in: the bytes read, and the server name it asks for.
async fn client_hello(s: &mut TcpStream) -> Result<(Vec<u8>, Option<String>), String> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before its ClientHello".into());
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.len() > MAX_HELLO {
            return Err("ClientHello larger than 64 KiB".into());
        }
        // The Acceptor buffers one record until `accept` processes it: offer it the bytes a
        // record at a time, so a ClientHello spread over several records fits.
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            acceptor
                .read_tls(&mut chunk)
                .map_err(|e| format!("not TLS: {e}"))?;
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let sni = accepted.client_hello().server_name().map(str::to_string);
                    return Ok((seen, sni));
                }
                Ok(None) => {}
                Err((e, _)) => return Err(format!("not a TLS ClientHello: {e}")),
            }
        }
    }
}

/// The destination of the TLS route of `port`'s gateway hosts that matches `sni` most
/// specifically (an exact name, then the longest wildcard; the first among equals).
fn pick(snap: &Snapshot, port: u16, sni: &str, rng: &mut impl rand::Rng) -> Option<Target> {
    let mut best: Option<(usize, &TlsRoute)> = None;
    for r in super::ingress::gateway_hosts(snap, port)
        .filter_map(|s| s.l7.as_deref())
        .flat_map(|l7| &l7.tls)
    {
        if let Some(score) = r.specificity(sni)
            && best.is_none_or(|(b, _)| score > b)
        {
            best = Some((score, r));
        }
    }
    let (_, route) = best?;
    super::route::pick_weighted(&route.targets, |n| rng.random_range(0..n))
        .map(|t| t.target.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real client's ClientHello for `sni`, with `alpn` protocols to make it as large as
    /// a test needs (rustls splits a hello over 16 KiB into several records).
    fn hello(sni: &str, alpn: usize) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        cfg.alpn_protocols = (0..alpn)
            .map(|i| format!("{i:0>200}").into_bytes())
            .collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("a name");
        let mut c = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).expect("write");
        }
        out
    }

    #[tokio::test]
    async fn the_server_name_is_read_from_small_and_multi_record_hellos() {
        for (alpn, at_least) in [(0, 100), (120, 20_000)] {
            let sent = hello("nginx.example.com", alpn);
            assert!(sent.len() >= at_least, "{}", sent.len());
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = l.local_addr().expect("addr");
            let client = tokio::spawn({
                let sent = sent.clone();
                async move {
                    let mut s = TcpStream::connect(addr).await.expect("connect");
                    // In two writes, the split inside a record.
                    s.write_all(&sent[..sent.len() / 3]).await.expect("write");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    s.write_all(&sent[sent.len() / 3..]).await.expect("write");
                    s
                }
            });
            let (mut s, _) = l.accept().await.expect("accept");
            let (seen, sni) = client_hello(&mut s).await.expect("a ClientHello");
            assert_eq!(sni.as_deref(), Some("nginx.example.com"), "{alpn}");
            assert_eq!(seen, sent, "every byte kept, to be replayed");
            drop(client.await);
        }
    }

    #[tokio::test]
    async fn bytes_that_are_not_tls_are_refused() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            s
        });
        let (mut s, _) = l.accept().await.expect("accept");
        assert!(client_hello(&mut s).await.is_err());
        drop(client.await);
    }

    #[test]
    fn sni_hosts_match_exactly_or_by_wildcard() {
        let r = |hosts: &[&str]| TlsRoute {
            sni_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            targets: Vec::new(),
        };
        for (hosts, sni, want) in [
            (&["nginx.example.com"][..], "nginx.example.com", true),
            (&["nginx.example.com"], "NGINX.Example.com", true),
            (&["nginx.example.com"], "other.example.com", false),
            (&["*.example.com"], "nginx.example.com", true),
            (&["*.example.com"], "example.com", false),
            (&["*.example.com"], "a.b.example.com", true),
            (&["*"], "anything.at.all", true),
            (&[], "nginx.example.com", false),
        ] {
            assert_eq!(r(hosts).matches(sni), want, "{hosts:?} {sni}");
        }
        // More specific names score higher, so the most specific route wins.
        let s = |h: &str| r(&[h]).specificity("nginx.example.com");
        assert!(s("nginx.example.com") > s("*.example.com"));
        assert!(s("*.example.com") > s("*.com"));
        assert!(s("*.com") > s("*"));
        assert_eq!(s("other.example.com"), None);
    }
}
