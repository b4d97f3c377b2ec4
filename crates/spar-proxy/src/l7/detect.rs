//! Protocol detection on an undeclared port: HTTP/1.x request lines and the HTTP/2 preface
//! are recognised from the first bytes, without consuming them. A client that sends nothing
//! within the window is treated as TCP, so server-first protocols (SMTP, MySQL, ...) never
//! hang waiting for a request that will not come.

use std::time::Duration;

use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http,
    Tcp,
}

const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Decide from a prefix: `None` while the bytes could still become HTTP.
pub fn classify(b: &[u8]) -> Option<Detected> {
    let fits = |p: &[u8]| {
        let n = p.len().min(b.len());
        b[..n] == p[..n]
    };
    let candidates: Vec<&[u8]> = METHODS
        .iter()
        .copied()
        .chain([H2_PREFACE])
        .filter(|p| fits(p))
        .collect();
    if candidates.is_empty() {
        return Some(Detected::Tcp);
    }
    if candidates.iter().any(|p| b.len() >= p.len()) {
        return Some(Detected::Http);
    }
    None
}

/// Peek at the stream until the bytes decide or `window` passes.
pub async fn sniff(s: &TcpStream, window: Duration) -> Detected {
    let mut buf = [0u8; 16];
    let deadline = tokio::time::Instant::now() + window;
    loop {
        let n = match tokio::time::timeout_at(deadline, s.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Detected::Tcp,
            Ok(Ok(n)) => n,
        };
        if let Some(d) = classify(&buf[..n]) {
            return d;
        }
        // A partial method: more bytes are on their way.
        if tokio::time::Instant::now() >= deadline {
            return Detected::Tcp;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_prefixes() {
        for (b, want) in [
            (&b"GET / HTTP/1.1"[..], Some(Detected::Http)),
            (b"POST ", Some(Detected::Http)),
            (b"PO", None),
            (b"PRI * HTTP/2.0\r\n\r\nSM", Some(Detected::Http)),
            (b"PRI * HTT", None),
            (b"\x16\x03\x01", Some(Detected::Tcp)),
            (b"HELO", Some(Detected::Tcp)),
            (b"GETX", Some(Detected::Tcp)),
        ] {
            assert_eq!(classify(b), want, "{:?}", String::from_utf8_lossy(b));
        }
    }

    #[tokio::test]
    async fn silent_client_is_tcp_quickly() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let _c = TcpStream::connect(addr).await.expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        let t = std::time::Instant::now();
        assert_eq!(sniff(&s, Duration::from_millis(100)).await, Detected::Tcp);
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
