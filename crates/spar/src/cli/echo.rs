//! `spar echo ...`: the test workload's command line.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use spar_echo::{PodInfo, client, server, tcp};

#[derive(Subcommand)]
pub enum EchoCommand {
    /// Serve HTTP/1.1 and h2c on --port, plus optional TCP echo and server-first ports.
    Serve {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        tcp_port: Option<u16>,
        #[arg(long)]
        server_first_port: Option<u16>,
        /// Serve the gRPC echo service (h2c) on this port.
        #[arg(long)]
        grpc_port: Option<u16>,
        /// Print one line per HTTP request (method, path and query, host, source) to
        /// stdout, which `spar logs` shows.
        #[arg(long)]
        log_requests: bool,
        /// A request header to add to that line (repeatable), e.g. `x-request-id`.
        #[arg(long = "log-header")]
        log_headers: Vec<String>,
        /// Answer `/metrics` with the echo's own Prometheus metrics (for metrics merging).
        #[arg(long)]
        metrics: bool,
        /// Make the TCP echo answer each line with this text, a space and the line, like
        /// Istio's tcp-echo (`hello`); `{version}`, `{pod}` and `{namespace}` are replaced.
        #[arg(long)]
        tcp_banner: Option<String>,
    },
    /// One gRPC call (or, with --stream N, one bidirectional stream of N messages).
    Grpc {
        /// e.g. http://ratings:9070
        url: String,
        #[arg(long, default_value = "hello")]
        message: String,
        #[arg(long, default_value_t = 0)]
        stream: usize,
    },
    /// One WebSocket exchange: handshake, send a text frame, print the echo.
    Ws {
        /// HOST:PORT
        addr: String,
        #[arg(long, default_value = "/ws")]
        path: String,
        #[arg(long, default_value = "hello")]
        message: String,
    },
    /// Send requests and print a summary (status codes, answering versions and pods, latency).
    Client {
        url: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Requests per second (0: as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        qps: f64,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Extra header, 'Name: value' (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// HTTP/2 with prior knowledge (h2c).
        #[arg(long)]
        http2: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
        /// Request method.
        #[arg(short = 'X', long, default_value = "GET")]
        method: String,
        /// Open a new connection for every request.
        #[arg(long)]
        no_keepalive: bool,
        /// Exit with an error unless every request got a 2xx answer (for Jobs that should
        /// be retried, `restartPolicy: OnFailure`).
        #[arg(long)]
        fail_on_error: bool,
    },
    /// A trace collector: OTLP gRPC on --port, OTLP HTTP and Zipkin on --http-port, and
    /// `GET /api/spans?trace_id=HEX` there to read what arrived.
    Otlp {
        #[arg(long, default_value_t = 4317)]
        port: u16,
        #[arg(long, default_value_t = 4318)]
        http_port: u16,
    },
    /// An ext_authz server for CUSTOM policies (as Istio's sample): allows requests that
    /// carry `x-ext-authz: allow`, over HTTP and gRPC (`envoy.service.auth.v3.Authorization`).
    ExtAuthz {
        #[arg(long, default_value_t = 8000)]
        http_port: u16,
        #[arg(long, default_value_t = 9000)]
        grpc_port: u16,
    },
    /// One TCP exchange: send a message, print what comes back.
    Tcp {
        addr: String,
        #[arg(long, default_value = "hello\n")]
        message: String,
    },
    /// One server-first exchange: print the banner, send a line, print the answer.
    ServerFirst { addr: String },
    /// Bulk TCP throughput against a TCP echo port: prints Gb/s (as JSON with --json).
    Bulk {
        addr: String,
        /// Bytes to send (and receive back), in total over all connections.
        #[arg(long, default_value_t = 256 << 20)]
        bytes: u64,
        /// Parallel connections sharing the bytes (the figure is their aggregate).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
        connections: u32,
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    spar_model::duration::parse_duration(s)
}

pub fn run(cmd: EchoCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        match cmd {
            EchoCommand::Serve {
                port,
                tcp_port,
                server_first_port,
                grpc_port,
                log_requests,
                log_headers,
                metrics,
                tcp_banner,
            } => {
                let mut info = PodInfo::from_env(|k| std::env::var(k).ok());
                info.log_requests = log_requests;
                info.log_headers = log_headers.iter().map(|h| h.to_lowercase()).collect();
                info.metrics = metrics;
                if let Some(p) = grpc_port {
                    let (a, _t) = spar_echo::grpc::bind_grpc(p, info.clone()).await?;
                    eprintln!("spar echo: gRPC on {a}");
                }
                let (addr, http) = server::bind_http(port, info.clone()).await?;
                eprintln!("spar echo: HTTP/1.1 and h2c on {addr}");
                if let Some(p) = tcp_port {
                    let banner = tcp_banner.as_deref().map(|b| info.expand(b));
                    let (a, _t) = tcp::bind_tcp_echo(p, banner).await?;
                    eprintln!("spar echo: TCP echo on {a}");
                    drop(_t);
                }
                if let Some(p) = server_first_port {
                    let (a, _t) = tcp::bind_server_first(p, info).await?;
                    eprintln!("spar echo: server-first on {a}");
                    drop(_t);
                }
                let _ = http.await;
            }
            EchoCommand::Client {
                url,
                count,
                qps,
                concurrency,
                headers,
                http2,
                json,
                timeout,
                no_keepalive,
                method,
                fail_on_error,
            } => {
                let method = spar_echo::Method::from_bytes(method.as_bytes())
                    .map_err(|_| anyhow::anyhow!("invalid method {method:?}"))?;
                let headers = headers
                    .iter()
                    .map(|h| {
                        h.split_once(':')
                            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                            .ok_or_else(|| spar_echo::Error::Header(h.clone()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let s = client::run(client::Options {
                    url,
                    count,
                    qps,
                    concurrency,
                    headers,
                    http2,
                    timeout,
                    no_keepalive,
                    method,
                })
                .await?;
                if json {
                    println!("{}", serde_json::to_string(&s)?);
                } else {
                    print!("{s}");
                }
                anyhow::ensure!(
                    s.errors < s.requests || s.requests == 0,
                    "every request failed: {}",
                    s.first_error.unwrap_or_default()
                );
                let ok: usize = s
                    .by_status
                    .iter()
                    .filter(|(c, _)| (200..300).contains(*c))
                    .map(|(_, n)| n)
                    .sum();
                anyhow::ensure!(
                    !fail_on_error || ok == s.requests,
                    "{} of {} requests did not get a 2xx answer",
                    s.requests - ok,
                    s.requests
                );
            }
            EchoCommand::Otlp { port, http_port } => {
                let store = spar_echo::otlp::Store::default();
                let bind = |p: u16| async move {
                    tokio::net::TcpListener::bind(("0.0.0.0", p))
                        .await
                        .with_context(|| format!("cannot listen on port {p}"))
                };
                let grpc = spar_echo::otlp::serve_grpc(bind(port).await?, store.clone());
                let http = spar_echo::otlp::serve_http(bind(http_port).await?, store);
                eprintln!("spar echo otlp: OTLP gRPC on :{port}, OTLP HTTP and Zipkin on :{http_port}");
                let _ = tokio::join!(grpc, http);
            }
            EchoCommand::Tcp { addr, message } => {
                print!("{}", tcp::tcp_exchange(&addr, &message).await?)
            }
            EchoCommand::Bulk {
                addr,
                bytes,
                connections,
                json,
            } => {
                let (got, secs) = tcp::bulk_parallel(&addr, bytes, connections).await?;
                let gbps = got as f64 * 8.0 / secs / 1e9;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({ "bytes": got, "seconds": secs, "gbps": gbps, "connections": connections })
                    );
                } else {
                    println!("{got} bytes echoed in {secs:.3} s: {gbps:.2} Gb/s each way");
                }
                anyhow::ensure!(got == bytes, "only {got} of {bytes} bytes came back");
            }
            EchoCommand::Grpc {
                url,
                message,
                stream,
            } => {
                let s = spar_echo::grpc::call(&url, &message, stream).await;
                println!("{}", serde_json::to_string(&s)?);
                if let Some(e) = s.error {
                    anyhow::bail!("gRPC call failed: {e}");
                }
            }
            EchoCommand::Ws {
                addr,
                path,
                message,
            } => println!("{}", spar_echo::ws::exchange(&addr, &path, &message).await?),
            EchoCommand::ExtAuthz {
                http_port,
                grpc_port,
            } => {
                let (h, g, task) = spar_echo::ext_authz::bind(http_port, grpc_port).await?;
                eprintln!("spar echo: ext_authz HTTP on {h}, gRPC on {g}");
                let _ = task.await;
            }
            EchoCommand::ServerFirst { addr } => {
                let (banner, answer) = tcp::server_first_exchange(&addr).await?;
                println!("{banner}\n{answer}");
            }
        }
        anyhow::Ok(())
    })
}
