//! gRPC echo: `Unary` answers once, `Stream` answers every message of a bidirectional
//! stream as it arrives; each reply names the pod and version that answered.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::{Error, PodInfo};

pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("spar.echo.v1");
}

use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};
use pb::{EchoReply, EchoRequest};

struct Service {
    info: Arc<PodInfo>,
}

impl Service {
    fn reply(&self, message: String) -> EchoReply {
        EchoReply {
            message,
            pod: self.info.pod.clone(),
            version: self.info.version.clone(),
        }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Service {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Ok(Response::new(self.reply(req.into_inner().message)))
    }

    type StreamStream = ReplyStream;

    async fn stream(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let mut incoming = req.into_inner();
        let info = self.info.clone();
        let out = async_stream(move |tx| async move {
            while let Some(m) = incoming.next().await {
                let r = m.map(|m| EchoReply {
                    message: m.message,
                    pod: info.pod.clone(),
                    version: info.version.clone(),
                });
                if tx.send(r).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(out))
    }
}

/// A stream fed by a task through a channel.
fn async_stream<F, Fut>(f: F) -> ReplyStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<EchoReply, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Serve gRPC (h2c) on `port`.
pub async fn bind_grpc(
    port: u16,
    info: PodInfo,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|source| Error::Listen { port, source })?;
    let addr = listener.local_addr()?;
    Ok((addr, serve_grpc(listener, info)))
}

/// Serve gRPC (h2c) on a bound listener forever.
pub fn serve_grpc(listener: tokio::net::TcpListener, info: PodInfo) -> tokio::task::JoinHandle<()> {
    let svc = EchoServer::new(Service {
        info: Arc::new(info),
    });
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::warn!(error = %e, "gRPC server stopped");
        }
    })
}

/// What a client run saw: (reply messages with the answering pod, errors).
#[derive(Debug, Default, serde::Serialize)]
pub struct GrpcSummary {
    pub replies: Vec<String>,
    pub pods: Vec<String>,
    pub error: Option<String>,
}

/// One unary call, or (`stream` > 0) one bidirectional stream of `stream` messages.
pub async fn call(url: &str, message: &str, stream: usize) -> GrpcSummary {
    let mut s = GrpcSummary::default();
    let mut client = match tonic::transport::Endpoint::from_shared(url.to_string()) {
        Ok(e) => match e.connect().await {
            Ok(c) => EchoClient::new(c),
            Err(e) => {
                s.error = Some(format!("connect: {e}"));
                return s;
            }
        },
        Err(e) => {
            s.error = Some(format!("url: {e}"));
            return s;
        }
    };
    if stream == 0 {
        match client
            .unary(EchoRequest {
                message: message.into(),
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                s.replies.push(r.message);
                s.pods.push(r.pod);
            }
            Err(e) => s.error = Some(e.to_string()),
        }
        return s;
    }
    // Send one message, wait for its answer, then the next: proves the stream is live both
    // ways, not buffered until the end.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
    if tx
        .send(EchoRequest {
            message: format!("{message}-0"),
        })
        .await
        .is_err()
    {
        s.error = Some("stream closed".into());
        return s;
    }
    let mut replies = match client.stream(outbound).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            s.error = Some(e.to_string());
            return s;
        }
    };
    for i in 0..stream {
        match replies.next().await {
            Some(Ok(r)) => {
                s.replies.push(r.message);
                s.pods.push(r.pod);
            }
            Some(Err(e)) => {
                s.error = Some(e.to_string());
                return s;
            }
            None => {
                s.error = Some("stream ended early".into());
                return s;
            }
        }
        if i + 1 < stream
            && tx
                .send(EchoRequest {
                    message: format!("{message}-{}", i + 1),
                })
                .await
                .is_err()
        {
            s.error = Some("stream closed".into());
            return s;
        }
    }
    s
}
