//! WebSocket echo (RFC 6455, enough for tests): the server completes the handshake and sends
//! every data frame back unmasked; the client sends one masked text frame and reads the echo.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Error;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn accept_key(key: &[u8]) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(key);
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.digest().bytes())
}

/// If `req` asks for a WebSocket, answer 101 and echo frames on the upgraded connection.
pub fn upgrade<B: Send + 'static>(req: &mut Request<B>) -> Option<Response<Full<Bytes>>> {
    let wants = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !wants {
        return None;
    }
    let key = req.headers().get("sec-websocket-key")?.as_bytes().to_vec();
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(io) = on.await {
            let _ = echo_frames(TokioIo::new(io)).await;
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept_key(&key)) {
        h.insert("sec-websocket-accept", v);
    }
    Some(r)
}

/// Read one frame: (opcode, unmasked payload).
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7f {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    if len > 1 << 20 {
        return Err(std::io::Error::other("frame larger than 1 MiB"));
    }
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    if masked {
        payload
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b ^= mask[i % 4]);
    }
    Ok((opcode, payload))
}

async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> std::io::Result<()> {
    let mut out = vec![0x80 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    w.write_all(&out).await?;
    w.flush().await
}

async fn echo_frames<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<()> {
    loop {
        let (op, payload) = read_frame(&mut s).await?;
        match op {
            // Close: answer and stop.
            0x8 => return write_frame(&mut s, 0x8, &payload, None).await,
            // Ping -> pong.
            0x9 => write_frame(&mut s, 0xA, &payload, None).await?,
            0xA => {}
            op => write_frame(&mut s, op, &payload, None).await?,
        }
    }
}

/// Handshake with `ws://addr/path`, send `message`, return what came back.
pub async fn exchange(addr: &str, path: &str, message: &str) -> Result<String, Error> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| Error::Connect {
            addr: addr.into(),
            source,
        })?;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    // The response head, byte by byte up to the blank line (frames may follow at once).
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = s.read_u8().await?;
        head.push(b);
        if head.len() > 16 * 1024 {
            return Err(Error::Io(std::io::Error::other("response head too large")));
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(Error::Io(std::io::Error::other(format!(
            "no upgrade: {}",
            head.lines().next().unwrap_or("")
        ))));
    }
    let want = accept_key(key.as_bytes());
    if !head.to_ascii_lowercase().contains(&format!(
        "sec-websocket-accept: {}",
        want.to_ascii_lowercase()
    )) {
        return Err(Error::Io(std::io::Error::other("bad Sec-WebSocket-Accept")));
    }
    write_frame(&mut s, 0x1, message.as_bytes(), Some(rand::random())).await?;
    let (_, payload) = read_frame(&mut s).await?;
    write_frame(&mut s, 0x8, &[], Some(rand::random())).await?;
    Ok(String::from_utf8_lossy(&payload).into_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_matches_the_rfc_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
