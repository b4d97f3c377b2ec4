//! Accepting connections without spinning when accept itself fails.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How long to wait after a failed accept before the next.
const RETRY: Duration = Duration::from_millis(100);

/// The next connection on `l`. A failure (most often EMFILE: out of file descriptors) fails
/// again at once for as long as its cause lasts, so retrying straight away would spin a core
/// and flood the log: it is logged and retried after a pause instead.
pub async fn next(l: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match l.accept().await {
            Ok(c) => return c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
