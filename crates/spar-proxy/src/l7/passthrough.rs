//! SNI passthrough at an ingress gateway: a listener whose TLS the gateway does not terminate
//! (Istio's Gateway `tls.mode: PASSTHROUGH` with VirtualService `tls` routes, or a Gateway API
//! `TLS` listener in mode `Passthrough` with TLSRoutes). The gateway reads the client's
//! ClientHello only to learn the server name it asks for, answers nothing, and relays the
//! connection, ClientHello included and untouched, to the Service its routes pick; the backend
//! terminates TLS with its own certificate.
//!
//! ```text
//! listener port -> read the ClientHello (rustls Acceptor; within the handshake timeout)
//!  -> SNI -> the port's gateway hosts: the first TLS route whose sniHosts match (none: close)
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
use crate::l4::plan::to_target;
use crate::l4::relay::{labels, relay};
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
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            acceptor
                .read_tls(&mut chunk)
                .map_err(|e| format!("not TLS: {e}"))?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_string);
                return Ok((seen, sni));
            }
            Ok(None) => continue,
            Err((e, _)) => return Err(format!("not a TLS ClientHello: {e}")),
        }
    }
}

/// The destination of the first TLS route of `port`'s gateway hosts that matches `sni`.
fn pick(snap: &Snapshot, port: u16, sni: &str, rng: &mut impl rand::Rng) -> Option<Target> {
    let suffix = format!(".gateway-{port}");
    let route: &TlsRoute = snap
        .services
        .values()
        .filter(|s| s.service.is_none() && s.key.hostname().ends_with(&suffix))
        .filter_map(|s| s.l7.as_deref())
        .flat_map(|l7| &l7.tls)
        .find(|r| r.matches(sni))?;
    super::route::pick_weighted(&route.targets, |n| rng.random_range(0..n))
        .map(|t| t.target.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
