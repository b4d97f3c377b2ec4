//! A minimal client for local admin APIs (plain HTTP/1.0 on loopback): the control plane's,
//! which wants its bearer token (`Control`), and the proxies' (`get`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// A control plane's admin API: where it listens and the token it wants.
#[derive(Debug, Clone)]
pub struct Control {
    pub addr: String,
    pub token: String,
}

impl Control {
    /// The control plane whose state directory is `control_state` (its `endpoints.json` and
    /// `admin-token`).
    pub fn locate(control_state: &Path) -> Option<Control> {
        Some(Control {
            addr: admin_addr(control_state)?,
            token: std::fs::read_to_string(control_state.join("admin-token"))
                .ok()?
                .trim()
                .to_string(),
        })
    }

    /// POST `body` to `path`; returns (status code, response body).
    pub fn post(&self, path: &str, body: &str) -> std::io::Result<(u16, String)> {
        let auth = format!("Authorization: Bearer {}\r\n", self.token);
        request(
            &self.addr,
            "POST",
            path,
            &auth,
            body,
            Duration::from_secs(30),
        )
    }

    /// GET `path`; returns (status code, response body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let auth = format!("Authorization: Bearer {}\r\n", self.token);
        request(&self.addr, "GET", path, &auth, "", Duration::from_secs(10))
    }
}

/// GET `path` from a proxy's admin port; returns (status code, response body).
pub fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    request(addr, "GET", path, "", "", Duration::from_secs(10))
}

fn request(
    addr: &str,
    method: &str,
    path: &str,
    extra: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: spar\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        code,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

/// The admin address a control plane recorded in its state directory.
pub fn admin_addr(control_state: &Path) -> Option<String> {
    let text = std::fs::read_to_string(control_state.join("endpoints.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["admin"].as_str().map(str::to_string)
}
