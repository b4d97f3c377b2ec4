//! Moving a connection's bytes between two legs as owned `Bytes` chunks, so that no byte is
//! copied in user space between a TCP socket and an HBONE stream.
//!
//! `tokio::io::copy_bidirectional` reads each leg into a buffer of its own and writes from it:
//! through an `AsyncWrite` for an HTTP/2 stream that is a second copy (the stream must own what
//! it queues), and reading from one is a third (out of the received frame). Here a TCP leg is
//! read straight into a chunk that h2 then owns and frames, and a received DATA frame is written
//! straight to the TCP socket: per direction, two user-space copies fewer on each proxy.
//!
//! Buffers are taken only when a socket is readable and let go when it is drained, so an idle
//! connection holds no buffer (copy_bidirectional kept 2 x 64 KiB per connection for its life).
//! A small read is copied out instead, so that a queued chunk never pins a whole buffer.
//! A received frame's flow-control window is handed back once its bytes are written onward: the
//! peer can have at most a window in flight per stream, which bounds what a slow reader costs.

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use h2::RecvStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

use crate::h2stream::{self, H2Stream, SendHalf};

/// The most read from a TCP leg at once, sent as one HTTP/2 DATA frame (the tunnels' frames
/// reach 1 MiB, so a chunk is never split for framing). A busy socket holds more than this, so
/// the size sets how many frames, wake-ups and writes onward a bulk transfer costs: on the
/// bench, 64 KiB carried 2.3 Gb/s through a sidecar pair and 256 KiB 3.5 (16 KiB 3.0, 1 MiB
/// no better than 256 KiB), at less CPU per byte. Only a busy connection holds a buffer.
const CHUNK: usize = 256 * 1024;

/// What a TCP leg reads at first: a connection of small messages never takes (and frees) a
/// bulk-sized buffer per message; a read that fills its buffer grows the size fourfold, up to
/// `CHUNK`, for the rest of the connection.
const FIRST_CHUNK: usize = 16 * 1024;

/// One side of a relayed connection.
pub enum Leg {
    Tcp(TcpStream),
    /// An HBONE stream, and what must live as long as it (the pooled connection's stream count).
    Tunnel(H2Stream, Option<Arc<()>>),
}

impl From<TcpStream> for Leg {
    fn from(s: TcpStream) -> Leg {
        Leg::Tcp(s)
    }
}

impl From<H2Stream> for Leg {
    fn from(s: H2Stream) -> Leg {
        Leg::Tunnel(s, None)
    }
}

/// Bytes moved so far, each way; kept outside the copying futures so that a connection that
/// ends in an error is still accounted.
#[derive(Default)]
pub struct Moved {
    pub a_to_b: AtomicU64,
    pub b_to_a: AtomicU64,
}

/// Move bytes both ways until both directions have ended or one fails. An end of stream on
/// one side is passed on as a half-close (TCP FIN, or HTTP/2 END_STREAM) to the other.
///
/// A tunnel reset by its peer before its end of stream is an abort, not an end: the relay
/// fails, the other tunnel is reset and a TCP leg is closed with a RST, so that no side takes a
/// cut-off stream for a complete one.
pub async fn pipe(a: Leg, b: Leg, moved: &Moved) -> io::Result<()> {
    let (mut a, mut b) = (Side::new(a), Side::new(b));
    let result = {
        let (a_src, a_sink) = a.halves();
        let (b_src, b_sink) = b.halves();
        tokio::try_join!(
            one_way(a_src, b_sink, &moved.a_to_b),
            one_way(b_src, a_sink, &moved.b_to_a)
        )
    };
    if result.is_err() {
        a.abort();
        b.abort();
    }
    result.map(|_| ())
}

async fn one_way(mut src: Source<'_>, mut sink: Sink<'_>, count: &AtomicU64) -> io::Result<()> {
    while let Some(chunk) = src.next().await? {
        let n = chunk.len();
        match sink.write(chunk).await {
            Ok(()) => {}
            // The tunnel's peer stopped reading (it reset or closed the stream after its own
            // end of stream): this direction is over, the other may still be draining.
            Err(e) if sink.is_tunnel() && e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e),
        }
        src.consumed(n);
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    match sink.finish().await {
        Err(e) if sink.is_tunnel() && e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// A leg taken apart, so each direction owns its half.
enum Side {
    Tcp(TcpStream),
    Tunnel {
        send: SendHalf,
        recv: RecvStream,
        pending: Bytes,
        _guard: Option<Arc<()>>,
    },
}

impl Side {
    /// On a failed relay: a TCP leg closes with a RST rather than a FIN (a tunnel's half is
    /// reset when it is dropped unfinished).
    fn abort(&self) {
        if let Side::Tcp(s) = self {
            let _ = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
        }
    }

    fn new(leg: Leg) -> Side {
        match leg {
            Leg::Tcp(s) => Side::Tcp(s),
            Leg::Tunnel(s, guard) => {
                let (send, recv, pending) = s.into_parts();
                Side::Tunnel {
                    send,
                    recv,
                    pending,
                    _guard: guard,
                }
            }
        }
    }

    fn halves(&mut self) -> (Source<'_>, Sink<'_>) {
        match self {
            Side::Tcp(s) => {
                let (r, w) = s.split();
                (
                    Source::Tcp {
                        r,
                        buf: BytesMut::new(),
                        size: FIRST_CHUNK,
                        drained: false,
                    },
                    Sink::Tcp(w),
                )
            }
            Side::Tunnel {
                send,
                recv,
                pending,
                ..
            } => (
                Source::Tunnel {
                    recv,
                    first: std::mem::take(pending),
                    released: false,
                },
                Sink::Tunnel(send),
            ),
        }
    }
}

enum Source<'a> {
    Tcp {
        r: ReadHalf<'a>,
        buf: BytesMut,
        /// How much to read at once (grows from `FIRST_CHUNK` to `CHUNK`).
        size: usize,
        /// The last read was short: the socket is empty and tokio has cleared its readiness.
        drained: bool,
    },
    Tunnel {
        recv: &'a mut RecvStream,
        /// Bytes an earlier reader took from the stream and did not consume (their window
        /// was handed back when they were read).
        first: Bytes,
        /// The last chunk's window was already handed back.
        released: bool,
    },
}

impl Source<'_> {
    /// The next chunk, or None at the end of the stream.
    async fn next(&mut self) -> io::Result<Option<Bytes>> {
        match self {
            Source::Tcp {
                r,
                buf,
                size,
                drained,
            } => {
                if *drained {
                    // Let the buffer go while the socket is idle, and wait for its next
                    // readiness event: a read shorter than its buffer emptied the socket and
                    // cleared the readiness (tokio's `poll_read`), so no read is spent on
                    // EAGAIN (one syscall per request saved on a keep-alive connection).
                    *buf = BytesMut::new();
                    r.readable().await?;
                    *drained = false;
                }
                let want = *size;
                if buf.capacity() - buf.len() < want / 4 {
                    buf.reserve(want);
                }
                let room = buf.capacity() - buf.len();
                let n = r.read_buf(buf).await?;
                if n == 0 {
                    return Ok(None);
                }
                *drained = n < room;
                if n == room {
                    *size = (want * 4).min(CHUNK);
                }
                // A small chunk may wait in h2's queue: it must not pin a whole buffer.
                if n < want / 4 {
                    let chunk = Bytes::copy_from_slice(buf);
                    buf.clear();
                    return Ok(Some(chunk));
                }
                Ok(Some(buf.split().freeze()))
            }
            Source::Tunnel {
                recv,
                first,
                released,
            } => {
                *released = !first.is_empty();
                if *released {
                    return Ok(Some(std::mem::take(first)));
                }
                match poll_fn(|cx| recv.poll_data(cx)).await {
                    Some(Ok(data)) => Ok(Some(data)),
                    // A reset before END_STREAM (even CANCEL) aborts the relay.
                    Some(Err(e)) => Err(h2stream::to_io(e)),
                    None => Ok(None),
                }
            }
        }
    }

    /// `n` bytes of what `next` returned have been written onward: hand the window back.
    fn consumed(&mut self, n: usize) {
        if let Source::Tunnel {
            recv,
            released: false,
            ..
        } = self
        {
            let _ = recv.flow_control().release_capacity(n);
        }
    }
}

enum Sink<'a> {
    Tcp(WriteHalf<'a>),
    Tunnel(&'a mut SendHalf),
}

impl Sink<'_> {
    fn is_tunnel(&self) -> bool {
        matches!(self, Sink::Tunnel(_))
    }

    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            Sink::Tcp(w) => w.write_all(&data).await,
            Sink::Tunnel(t) => t.write(data).await,
        }
    }

    /// Pass the end of stream on.
    async fn finish(&mut self) -> io::Result<()> {
        match self {
            Sink::Tcp(w) => w.shutdown().await,
            Sink::Tunnel(t) => t.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2stream::testing::pair;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connected TCP pair on loopback: (the end the test holds, the end the pipe takes).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    /// The far end of a tunnel echoes what it reads, then ends its side.
    fn echo(mut far: H2Stream) -> tokio::task::JoinHandle<usize> {
        tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.expect("far end reads");
            far.write_all(&got).await.expect("far end echoes");
            far.shutdown().await.expect("far end finishes");
            got.len()
        })
    }

    #[tokio::test]
    async fn tcp_to_tunnel_carries_both_ways_and_passes_half_closes_on() {
        let (mut app, leg) = tcp_pair().await;
        let (near, far) = pair().await;
        let far = echo(far);
        let moved = Moved::default();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (app_side, relayed) = tokio::join!(
            async {
                let (mut r, mut w) = app.split();
                let write = async {
                    w.write_all(&data).await.expect("app writes");
                    // The app's FIN reaches the far end as END_STREAM: it echoes and ends.
                    w.shutdown().await.expect("app half-closes");
                };
                let mut back = Vec::new();
                let read = r.read_to_end(&mut back);
                let (_, n) = tokio::join!(write, read);
                n.expect("app reads to the end");
                back
            },
            pipe(leg.into(), near.into(), &moved)
        );
        relayed.expect("the relay ends cleanly");
        assert_eq!(far.await.expect("far task"), data.len());
        assert!(app_side == data, "every byte came back, in order");
        assert_eq!(moved.a_to_b.load(Ordering::Relaxed), data.len() as u64);
        assert_eq!(moved.b_to_a.load(Ordering::Relaxed), data.len() as u64);
    }

    #[tokio::test]
    async fn a_tcp_leg_reads_small_first_and_grows_while_reads_fill_the_buffer() {
        let (mut app, mut leg) = tcp_pair().await;
        let writer = tokio::spawn(async move {
            // Ends with an error once the test drops its end; only the first bytes matter.
            let _ = app.write_all(&vec![1u8; 2 << 20]).await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (r, _w) = leg.split();
        let mut src = Source::Tcp {
            r,
            buf: BytesMut::new(),
            size: FIRST_CHUNK,
            drained: false,
        };
        let mut lens = Vec::new();
        for _ in 0..3 {
            let chunk = src.next().await.expect("read").expect("data");
            lens.push(chunk.len());
        }
        assert!(lens[0] <= FIRST_CHUNK, "{lens:?}");
        assert!(
            lens[1] > FIRST_CHUNK && lens[1] <= 4 * FIRST_CHUNK,
            "{lens:?}"
        );
        assert!(lens[2] > 4 * FIRST_CHUNK && lens[2] <= CHUNK, "{lens:?}");
        drop(src);
        drop(leg);
        let _ = writer.await;
    }

    #[tokio::test]
    async fn after_a_short_read_the_next_message_still_arrives() {
        // A keep-alive connection: a short read marks the socket drained; the next request,
        // sent later, must wake the relay (readiness re-armed by the kernel's event).
        let (mut app, mut leg) = tcp_pair().await;
        let (r, _w) = leg.split();
        let mut src = Source::Tcp {
            r,
            buf: BytesMut::new(),
            size: FIRST_CHUNK,
            drained: false,
        };
        for msg in [&b"first"[..], b"second", b"third"] {
            app.write_all(msg).await.expect("write");
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), src.next())
                .await
                .expect("not stuck after a drained read")
                .expect("read")
                .expect("data");
            assert_eq!(&got[..], msg);
            // The short read left the socket marked drained: the next call waits for an
            // event instead of reading into EAGAIN (the syscall this saves).
            assert!(matches!(src, Source::Tcp { drained: true, .. }));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(app);
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), src.next())
            .await
            .expect("the end is seen after a drained read")
            .expect("read");
        assert!(end.is_none());
    }

    #[tokio::test]
    async fn tunnel_to_tunnel_moves_frames_through() {
        // A waypoint's leg pair: HBONE in, HBONE out.
        let (mut client, near_in) = pair().await;
        let (near_out, far) = pair().await;
        let far = echo(far);
        let relay = tokio::spawn(async move {
            let moved = Moved::default();
            pipe(near_in.into(), near_out.into(), &moved)
                .await
                .map(|()| {
                    (
                        moved.a_to_b.load(Ordering::Relaxed),
                        moved.b_to_a.load(Ordering::Relaxed),
                    )
                })
        });
        let data = vec![7u8; 200_000];
        client.write_all(&data).await.expect("write");
        client.shutdown().await.expect("finish");
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.expect("read");
        assert_eq!(back.len(), data.len());
        assert_eq!(far.await.expect("far"), data.len());
        let (up, down) = relay.await.expect("relay task").expect("relay ok");
        assert_eq!((up, down), (200_000, 200_000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reset_tunnel_ends_the_relay_and_closes_the_tcp_side() {
        let (mut app, leg) = tcp_pair().await;
        let (near, far) = pair().await;
        let moved = Moved::default();
        let relay = pipe(leg.into(), near.into(), &moved);
        let test = async {
            app.write_all(b"hello").await.expect("write");
            // The far end goes away without an end of stream: its drop resets the stream.
            drop(far);
            let mut buf = [0u8; 16];
            app.read(&mut buf).await
        };
        let both = async { tokio::join!(relay, test) };
        let (r, read) = tokio::time::timeout(std::time::Duration::from_secs(5), both)
            .await
            .expect("neither the relay nor the app is left hanging");
        // The reset is an abort: the relay fails and the app sees a RST, not a clean end.
        assert!(r.is_err(), "{r:?}");
        assert!(
            matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{read:?}"
        );
    }

    #[tokio::test]
    async fn tcp_to_tcp_relays_both_ways_with_half_closes() {
        let (mut a, a_leg) = tcp_pair().await;
        let (mut b, b_leg) = tcp_pair().await;
        let moved = Moved::default();
        let relay = pipe(a_leg.into(), b_leg.into(), &moved);
        let test = async {
            a.write_all(b"ping").await.expect("write");
            let mut buf = [0u8; 4];
            b.read_exact(&mut buf).await.expect("read");
            assert_eq!(&buf, b"ping");
            b.write_all(b"pong!").await.expect("write back");
            b.shutdown().await.expect("b closes");
            let mut back = Vec::new();
            a.shutdown().await.expect("a closes");
            a.read_to_end(&mut back).await.expect("read back");
            back
        };
        let (r, back) = tokio::join!(relay, test);
        r.expect("relay ok");
        assert_eq!(back, b"pong!");
        assert_eq!(moved.a_to_b.load(Ordering::Relaxed), 4);
        assert_eq!(moved.b_to_a.load(Ordering::Relaxed), 5);
    }
}
