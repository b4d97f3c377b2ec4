//! The DNS proxy on 15053 inside each enrolled pod: names the mesh knows (service host names,
//! ServiceEntry hosts) are answered from the config; everything else goes to the node's own
//! resolvers. Only what a stub resolver sends is handled: one question, class IN.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::UdpSocket;

use crate::snapshot::{self, Snapshot};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TTL: u32 = 30;

/// A parsed question: the name (lower case, no trailing dot), type and the end of the question.
#[derive(Debug, PartialEq)]
pub struct Question {
    pub name: String,
    pub qtype: u16,
    end: usize,
}

pub fn parse_question(msg: &[u8]) -> Option<Question> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) != 1 || msg[2] & 0x80 != 0 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression is not valid in a question from a stub resolver
        }
        // A `.` inside a label is escaped as in zone files, so the label `a.b` is never
        // taken for the mesh name `a.b`.
        labels.push(
            std::str::from_utf8(msg.get(i..i + len)?)
                .ok()?
                .to_ascii_lowercase()
                .replace('.', "\\."),
        );
        i += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*msg.get(i + 2)?, *msg.get(i + 3)?]);
    if qclass != 1 {
        return None;
    }
    Some(Question {
        name: labels.join("."),
        qtype,
        end: i + 4,
    })
}

/// The addresses the mesh has for `name`, or None when the name is not the mesh's.
pub fn lookup(snap: &Snapshot, name: &str) -> Option<Vec<IpAddr>> {
    let info = snap
        .service_by_host(&name.to_ascii_lowercase())
        .filter(|s| s.service.is_some())?;
    let svc = info.service.as_ref()?;
    let mut ips: Vec<IpAddr> = svc
        .addresses
        .iter()
        .filter_map(|a| snapshot::ip(&a.address))
        .collect();
    if ips.is_empty() {
        // Headless or address-less: the (healthy) endpoints themselves.
        ips = info.endpoints.iter().map(|e| e.ip).collect();
    }
    Some(ips)
}

/// An answer to `query` with these addresses (rcode 0), or an empty NXDOMAIN-free answer.
pub fn answer(query: &[u8], q: &Question, ips: &[IpAddr], rcode: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(q.end + 16 * ips.len());
    out.extend_from_slice(&query[..2]); // id
    out.push(0x80 | (query[2] & 0x01) | 0x04); // QR, RD copied, AA
    out.push(0x80 | (rcode & 0x0f)); // RA
    let answers: Vec<&IpAddr> = ips
        .iter()
        .filter(|ip| {
            matches!(
                (ip, q.qtype),
                (IpAddr::V4(_), TYPE_A) | (IpAddr::V6(_), TYPE_AAAA)
            )
        })
        .collect();
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..q.end]);
    for ip in answers {
        out.extend_from_slice(&[0xc0, 12]); // pointer to the question's name
        out.extend_from_slice(&q.qtype.to_be_bytes());
        out.extend_from_slice(&[0, 1]);
        out.extend_from_slice(&TTL.to_be_bytes());
        match ip {
            IpAddr::V4(a) => {
                out.extend_from_slice(&[0, 4]);
                out.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                out.extend_from_slice(&[0, 16]);
                out.extend_from_slice(&a.octets());
            }
        }
    }
    out
}

/// The node's resolvers, from /etc/resolv.conf (the proxy runs in the node's namespace).
pub fn upstreams() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Serve one pod's DNS socket forever.
/// Forwarded queries in flight per pod; beyond this a query is dropped (the client's
/// resolver retries), so a flood of datagrams never becomes a flood of tasks and sockets.
const MAX_FORWARDS: usize = 64;

pub async fn serve(
    sock: UdpSocket,
    state: Arc<ArcSwap<Snapshot>>,
    upstreams: Arc<Vec<SocketAddr>>,
) {
    let sock = Arc::new(sock);
    let forwards = Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS));
    let mut buf = vec![0u8; 1500];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let query = &buf[..n];
        let Some(q) = parse_question(query) else {
            continue;
        };
        // Mesh names are answered here, without a task.
        if let Some(ips) = lookup(&state.load(), &q.name) {
            let _ = sock.send_to(&answer(query, &q, &ips, 0), from).await;
            continue;
        }
        let Ok(permit) = forwards.clone().try_acquire_owned() else {
            tracing::debug!(%from, "too many DNS queries in flight; dropping one");
            continue;
        };
        let query = query.to_vec();
        let (sock, upstreams) = (sock.clone(), upstreams.clone());
        tokio::spawn(async move {
            let reply = match forward(&query, &upstreams).await {
                Some(r) => r,
                None => answer(&query, &q, &[], 2), // SERVFAIL
            };
            let _ = sock.send_to(&reply, from).await;
            drop(permit);
        });
    }
}

async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let Ok(s) = UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)).await
        else {
            continue;
        };
        if s.send_to(query, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_secs(2), s.recv_from(&mut buf)).await
        {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    #[test]
    fn parse_and_answer() {
        let q = query("Api.Example.com", TYPE_A);
        let parsed = parse_question(&q).expect("parses");
        assert_eq!(
            (parsed.name.as_str(), parsed.qtype),
            ("api.example.com", TYPE_A)
        );
        let a = answer(
            &q,
            &parsed,
            &[
                IpAddr::from([10, 96, 9, 9]),
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
            ],
            0,
        );
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert_eq!(
            u16::from_be_bytes([a[6], a[7]]),
            1,
            "one A answer (the IPv6 address is not an A record)"
        );
        assert_eq!(&a[a.len() - 4..], &[10, 96, 9, 9]);
        for bad in [
            vec![],
            vec![0; 11],
            {
                let mut b = query("x", TYPE_A);
                b[5] = 2;
                b
            },
            {
                let mut b = query("x", TYPE_A);
                b.truncate(b.len() - 1);
                b
            },
        ] {
            assert!(parse_question(&bad).is_none());
        }
    }
}
