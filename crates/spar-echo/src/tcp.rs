//! Plain TCP echo, a server-first protocol (banner before the client speaks, like SMTP or
//! MySQL), and their one-exchange clients.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::{Error, PodInfo};

async fn listen(port: u16) -> Result<TcpListener, Error> {
    match TcpListener::bind(("::", port)).await {
        Ok(l) => Ok(l),
        Err(_) => TcpListener::bind(("0.0.0.0", port))
            .await
            .map_err(|source| Error::Listen { port, source }),
    }
}

/// Echo every byte back until the client closes; with a `banner`, answer each line with
/// `BANNER LINE` instead (Istio's tcp-echo sample: `hello ...`).
pub async fn bind_tcp_echo(
    port: u16,
    banner: Option<String>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let l = listen(port).await?;
    let addr = l.local_addr()?;
    Ok((
        addr,
        match banner {
            None => serve_tcp_echo(l),
            Some(b) => serve_tcp_banner(l, b),
        },
    ))
}

/// Answer each line with the banner, a space and the line, until the client closes.
pub fn serve_tcp_banner(l: TcpListener, banner: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let banner = banner.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("{banner} {line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    })
}

/// Echo on a bound listener forever.
pub fn serve_tcp_echo(l: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.split();
                // A wide buffer, so that the echo itself is not the bottleneck of the
                // bulk benchmark's floor (tokio's default copy moves 8 KiB at a time).
                let mut r = tokio::io::BufReader::with_capacity(256 * 1024, r);
                let _ = tokio::io::copy_buf(&mut r, &mut w).await;
            });
        }
    })
}

/// Send a banner first, then answer each line with `echo: LINE` until the client closes.
pub async fn bind_server_first(
    port: u16,
    info: PodInfo,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let l = listen(port).await?;
    let addr = l.local_addr()?;
    Ok((
        addr,
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let banner = format!("220 {} spar-echo server-first ready\r\n", info.pod);
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    if w.write_all(banner.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if w.write_all(format!("echo: {line}\r\n").as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        }),
    ))
}

async fn connect(addr: &str) -> Result<TcpStream, Error> {
    tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| Error::Connect {
            addr: addr.into(),
            source: std::io::ErrorKind::TimedOut.into(),
        })?
        .map_err(|source| Error::Connect {
            addr: addr.into(),
            source,
        })
}

/// Send `message`, close the sending side, and return everything that came back.
pub async fn tcp_exchange(addr: &str, message: &str) -> Result<String, Error> {
    let mut s = connect(addr).await?;
    s.write_all(message.as_bytes()).await?;
    s.shutdown().await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .map_err(|_| Error::Io(std::io::ErrorKind::TimedOut.into()))??;
    Ok(out)
}

/// Read the banner without sending anything, then send one line and read the answer.
pub async fn server_first_exchange(addr: &str) -> Result<(String, String), Error> {
    let s = connect(addr).await?;
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let read_line =
        async |r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>| -> Result<String, Error> {
            let mut line = String::new();
            tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line))
                .await
                .map_err(|_| Error::Io(std::io::ErrorKind::TimedOut.into()))??;
            Ok(line.trim_end().to_string())
        };
    let banner = read_line(&mut r).await?;
    w.write_all(b"hello\r\n").await?;
    let answer = read_line(&mut r).await?;
    Ok((banner, answer))
}

/// Bulk throughput over `connections` parallel connections sharing `total` bytes.
/// Returns (bytes each way over all connections, seconds until the last one finished).
pub async fn bulk_parallel(addr: &str, total: u64, connections: u32) -> Result<(u64, f64), Error> {
    let n = u64::from(connections.max(1));
    let start = std::time::Instant::now();
    let runs: Vec<_> = (0..n)
        .map(|i| {
            let addr = addr.to_string();
            // The first connection carries the remainder of an uneven split.
            let share = total / n + if i == 0 { total % n } else { 0 };
            tokio::spawn(async move { bulk_exchange(&addr, share).await })
        })
        .collect();
    let mut got = 0;
    for r in runs {
        got += r.await.map_err(|e| Error::Io(std::io::Error::other(e)))??.0;
    }
    Ok((got, start.elapsed().as_secs_f64()))
}

/// Bulk throughput against a TCP echo: write `total` bytes while reading them back.
/// Returns (bytes each way, seconds).
pub async fn bulk_exchange(addr: &str, total: u64) -> Result<(u64, f64), Error> {
    let s = connect(addr).await?;
    let (mut r, mut w) = s.into_split();
    let start = std::time::Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![0x5au8; 64 * 1024];
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            w.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        w.shutdown().await
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < total {
        let n = tokio::time::timeout(Duration::from_secs(30), r.read(&mut buf))
            .await
            .map_err(|_| Error::Io(std::io::ErrorKind::TimedOut.into()))??;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    writer
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
    Ok((got, start.elapsed().as_secs_f64()))
}
