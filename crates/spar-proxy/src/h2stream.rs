//! One HBONE tunnel as a byte stream: an HTTP/2 stream driven through the `h2` crate directly.
//! hyper's upgrade path relays every write through a channel to a task of its own before h2
//! sees it, which costs a wake-up (often across threads) per write on each side of a tunnel;
//! profiles of the bench showed those switches as the largest cost per request. Here a write
//! goes straight into the stream's send buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct H2Stream {
    send: SendHalf,
    recv: RecvStream,
    /// Received data not yet read.
    pending: Bytes,
}

impl H2Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> H2Stream {
        H2Stream {
            send: SendHalf {
                send,
                finished: false,
            },
            recv,
            pending: Bytes::new(),
        }
    }

    /// The sending half, the receiving half and data received but not yet read (for a relay
    /// that moves whole frames instead of reading through a buffer).
    pub fn into_parts(self) -> (SendHalf, RecvStream, Bytes) {
        (self.send, self.recv, self.pending)
    }
}

/// The sending half of a tunnel; a half dropped before its end of stream (an error on the
/// other leg) resets the stream, so the peer does not wait on it.
pub struct SendHalf {
    send: SendStream<Bytes>,
    /// End of stream sent (our write side is shut down).
    finished: bool,
}

impl SendHalf {
    /// Queue `data` as DATA frames, no more at a time than the peer's window allows (h2 would
    /// otherwise buffer without bound). The chunk is framed as it is: no copy.
    pub async fn write(&mut self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            let n = std::future::poll_fn(|cx| self.poll_granted(cx, data.len())).await?;
            self.send
                .send_data(data.split_to(n), false)
                .map_err(to_io)?;
        }
        Ok(())
    }

    /// Wait until the peer's window lets at least one byte of `want` go; how many may.
    fn poll_granted(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.finished {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        self.send.reserve_capacity(want);
        loop {
            // Capacity left from an earlier grant is used first: poll_capacity only reports
            // increases, so waiting on it with capacity in hand would never wake.
            let n = self.send.capacity().min(want);
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    /// Send the end of stream (once).
    pub fn finish(&mut self) -> io::Result<()> {
        if !self.finished {
            self.finished = true;
            self.send.send_data(Bytes::new(), true).map_err(to_io)?;
        }
        Ok(())
    }
}

impl Drop for SendHalf {
    fn drop(&mut self) {
        if !self.finished {
            self.send.send_reset(h2::Reason::CANCEL);
        }
    }
}

/// A peer's reset with NO_ERROR or CANCEL ends the stream like a FIN; others are errors.
pub fn to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into());
    }
    match e.reason() {
        Some(h2::Reason::NO_ERROR) | Some(h2::Reason::CANCEL) => {
            io::Error::new(io::ErrorKind::ConnectionReset, "tunnel stream ended")
        }
        _ => io::Error::other(e),
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        while me.pending.is_empty() {
            match ready!(me.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Hand the window back at once: the reader is the flow control.
                    let _ = me.recv.flow_control().release_capacity(data.len());
                    me.pending = data;
                }
                Some(Err(e)) => {
                    let e = to_io(e);
                    return Poll::Ready(if e.kind() == io::ErrorKind::ConnectionReset {
                        Ok(())
                    } else {
                        Err(e)
                    });
                }
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = me.pending.len().min(buf.remaining());
        buf.put_slice(&me.pending[..n]);
        me.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(me.send.poll_granted(cx, buf.len()))?;
        me.send
            .send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes frames as soon as they are queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().send.finish())
    }
}

/// An in-memory HBONE-like stream pair for tests.
#[cfg(test)]
pub mod testing {
    use super::*;

    /// A client and a server stream over an in-memory HTTP/2 connection with small windows,
    /// so flow control must hand capacity back for a transfer to finish.
    pub async fn pair() -> (H2Stream, H2Stream) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::Builder::new()
                .initial_window_size(32 * 1024)
                .handshake::<_, Bytes>(b)
                .await
                .expect("server handshake");
            let (req, mut respond) = conn.accept().await.expect("a stream").expect("ok");
            let send = respond
                .send_response(http::Response::new(()), false)
                .expect("respond");
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            H2Stream::new(send, req.into_body())
        });
        let (sender, conn) = h2::client::Builder::new()
            .initial_window_size(32 * 1024)
            .handshake::<_, Bytes>(a)
            .await
            .expect("client handshake");
        tokio::spawn(conn);
        let mut sender = sender.ready().await.expect("ready");
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("10.0.0.1:80")
            .body(())
            .expect("request");
        let (resp, send) = sender.send_request(req, false).expect("send");
        let server = server.await.expect("server task");
        let resp = resp.await.expect("response");
        (H2Stream::new(send, resp.into_body()), server)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::pair;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn carries_more_than_a_window_each_way_and_half_closes() {
        let (mut client, mut server) = pair().await;
        let data: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.expect("write");
            client.shutdown().await.expect("shutdown");
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.expect("read back");
            back
        });
        // The server echoes until the client's end of stream, then ends its own side.
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, data, "every byte arrives, in order, then EOF");
        server.write_all(&got).await.expect("echo");
        server.shutdown().await.expect("shutdown");
        let back = writer.await.expect("client task");
        assert_eq!(back.len(), data.len());
        assert!(back == data);
    }

    #[tokio::test]
    async fn a_dropped_peer_ends_the_reader() {
        let (mut client, server) = pair().await;
        drop(server);
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("the reader does not hang");
        assert!(matches!(r, Ok(0)), "a cancelled stream reads as EOF: {r:?}");
    }
}
