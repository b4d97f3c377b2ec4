//! The sidecar role's outbound path: a captured connection to a service goes through the L7
//! engine when the port speaks HTTP (declared, or detected from the first bytes), through
//! the VirtualService's `tcp` routes when it is TCP, and through the L4 path otherwise.
//! Inbound (15008 HBONE, 15006 plaintext) is shared with the node role.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use tokio::net::TcpStream;

use crate::inpod;
use crate::l7::config::{Protocol, Service};
use crate::l7::detect::{Detected, sniff};
use crate::l7::http::{Downstream, handle};
use crate::node::{Node, Pod, forward, reset};
use crate::state::{self, OutboundPlan, State};

/// How long an undeclared port waits for the client's first bytes before treating the
/// connection as TCP (server-first protocols send nothing first).
const DETECT_WINDOW: Duration = Duration::from_millis(200);

pub async fn outbound(node: Arc<Node>, pod: Arc<Pod>, s: TcpStream, peer: SocketAddr) {
    let Ok(dst) = inpod::original_dst(&s) else {
        return reset(s);
    };
    let st = node.state.load_full();
    let l7 = st
        .by_vip
        .get(&dst.ip())
        .map(|v| format!("{}/{}", v.namespace, v.hostname))
        .and_then(|k| st.l7.get(&k).cloned().map(|svc| (k, svc)));
    let Some((key, svc)) = l7 else {
        // Not a known service: L4 (pod IPs, passthrough).
        return crate::node::outbound_to(node, pod, s, peer, dst).await;
    };
    let http = match svc.protocol(dst.port()) {
        Protocol::Http | Protocol::Http2 | Protocol::Grpc => true,
        Protocol::Tcp => false,
        Protocol::Detect => sniff(&s, DETECT_WINDOW).await == Detected::Http,
    };
    if !http {
        let plan = tcp_plan(&st, &svc, &key, dst);
        return forward(node, pod, s, peer, dst, plan).await;
    }
    let Some(engine) = node.engine.clone() else {
        return reset(s);
    };
    let ds = Arc::new(Downstream {
        node,
        pod,
        engine,
        service: key,
        dst,
        peer,
    });
    let svc_fn = hyper::service::service_fn(move |req| {
        let ds = ds.clone();
        async move { Ok::<_, Infallible>(handle(ds, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client that half-closes after its request still gets the answer.
    builder.http1().half_close(true);
    let _ = builder
        .serve_connection_with_upgrades(TokioIo::new(s), svc_fn)
        .await;
}

/// A TCP connection to a service: the first `tcp` route for the port picks a destination by
/// weight, and its endpoints (of the subset) are tried in random order.
fn tcp_plan(st: &State, svc: &Service, key: &str, dst: SocketAddr) -> OutboundPlan {
    let route = svc
        .tcp
        .iter()
        .find(|r| r.ports.is_empty() || r.ports.contains(&dst.port()));
    let Some(route) = route else {
        return state::plan_outbound(st, dst, |v| rand_shuffle(v));
    };
    let Some(t) =
        crate::l7::route::pick_weighted(&route.targets, |n| rand::rng().random_range(0..n))
    else {
        return state::plan_outbound(st, dst, |v| rand_shuffle(v));
    };
    let Some(target_svc) = st.l7_by_host.get(&t.target.host) else {
        return OutboundPlan {
            candidates: Vec::new(),
            service: Some(key.to_string()),
        };
    };
    let tkey = format!("{}/{}", target_svc.namespace, target_svc.hostname);
    let port = t.target.port.unwrap_or(dst.port());
    let members = t.target.subset.as_ref().map(|s| {
        target_svc
            .subsets
            .get(s)
            .map(|s| s.members.clone())
            .unwrap_or_default()
    });
    let mut eps: Vec<_> = crate::l7::http::endpoints(st, &tkey, port, members.as_ref())
        .iter()
        .map(|(addr, w)| state::to_workload(w, *addr))
        .collect();
    rand_shuffle(&mut eps);
    OutboundPlan {
        candidates: eps,
        service: Some(tkey),
    }
}

fn rand_shuffle<T>(v: &mut [T]) {
    use rand::seq::SliceRandom;
    v.shuffle(&mut rand::rng());
}
