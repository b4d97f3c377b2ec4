//! Header work on the request and response heads: hop-by-hop headers stripped, VirtualService
//! header operations applied.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::config::HeaderOps;

pub fn apply_ops(h: &mut HeaderMap, ops: &HeaderOps) {
    for n in &ops.remove {
        h.remove(n);
    }
    for (n, v) in &ops.set {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(n.clone(), v);
        }
    }
    for (n, v) in &ops.add {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.append(n.clone(), v);
        }
    }
}

/// Whether a request asks to switch protocols (WebSocket).
pub fn wants_upgrade(h: &HeaderMap) -> bool {
    h.get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
        && h.contains_key(header::UPGRADE)
}

/// Hop-by-hop headers never travel on (except the ones an upgrade needs).
pub fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in ["keep-alive", "proxy-connection", "transfer-encoding"] {
        h.remove(n);
    }
    if !upgrade {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_ops() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "5"),
            ("te", "gzip"),
            ("x-keep", "a"),
            ("x-drop", "b"),
        ] {
            h.append(k, v.parse().expect("value"));
        }
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["x-drop", "x-keep"]);
        let ops = HeaderOps {
            set: vec![(HeaderName::from_static("x-keep"), "set".into())],
            add: vec![(HeaderName::from_static("x-keep"), "added".into())],
            remove: vec![HeaderName::from_static("x-drop")],
        };
        apply_ops(&mut h, &ops);
        let got: Vec<&str> = h
            .get_all("x-keep")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(got, vec!["set", "added"]);
        assert!(!h.contains_key("x-drop"));
        let mut up = HeaderMap::new();
        up.insert("connection", "Upgrade".parse().expect("v"));
        up.insert("upgrade", "websocket".parse().expect("v"));
        assert!(wants_upgrade(&up));
        strip_hop_by_hop(&mut up, true);
        assert!(up.contains_key("upgrade") && up.contains_key("connection"));
    }
}
