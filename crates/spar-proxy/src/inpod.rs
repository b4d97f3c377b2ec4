//! In-pod networking for the node proxy: a thread that lives in a pod's network namespace and
//! makes sockets there (listeners, and outbound sockets marked so redirection skips them), and
//! the nftables rules and policy routing that capture the pod's traffic.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::oneshot;

use crate::Error;

/// Mark on the proxy's own outbound sockets: the redirect rules let them pass.
pub const OUTBOUND_MARK: u32 = 0x539;
/// Mark on connections the proxy makes to the application with the client's source address;
/// replies carry it back (connmark + policy routing) to the proxy instead of the network.
pub const INBOUND_MARK: u32 = 0x111;
const INBOUND_TABLE: &str = "111";

type Job = Box<dyn FnOnce() + Send>;

/// A handle on one pod's network namespace.
pub struct PodNet {
    pub name: String,
    jobs: std::sync::mpsc::Sender<Job>,
}

impl PodNet {
    /// Enter `/var/run/netns/<name>` on a dedicated thread that stays there.
    pub fn open(name: &str) -> Result<PodNet, Error> {
        let path = PathBuf::from("/var/run/netns").join(name);
        let file = std::fs::File::open(&path).map_err(|e| Error::Netns {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                // setns changes only this thread; it stays in the pod's namespace until the
                // handle is dropped.
                let entered = nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| e.to_string());
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                }
            })?;
        ready_rx
            .recv()
            .map_err(|e| Error::Netns {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?
            .map_err(|reason| Error::Netns {
                path: path.display().to_string(),
                reason,
            })?;
        Ok(PodNet {
            name: name.to_string(),
            jobs: tx,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| io::Error::other("pod namespace thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("pod namespace thread is gone"))?
    }

    /// A listener on `port` inside the pod (all addresses).
    pub async fn listen(
        &self,
        port: u16,
        transparent: bool,
    ) -> io::Result<tokio::net::TcpListener> {
        let l: TcpListener = self
            .run(move || {
                let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
                s.set_reuse_address(true)?;
                if transparent {
                    s.set_ip_transparent_v4(true)?;
                }
                s.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
                s.listen(1024)?;
                s.set_nonblocking(true)?;
                Ok(s.into())
            })
            .await?;
        tokio::net::TcpListener::from_std(l)
    }

    /// A UDP socket on `port` inside the pod (the DNS proxy).
    pub async fn bind_udp(&self, port: u16) -> io::Result<tokio::net::UdpSocket> {
        let u: std::net::UdpSocket = self
            .run(move || {
                let u = std::net::UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port)))?;
                u.set_nonblocking(true)?;
                Ok(u)
            })
            .await?;
        tokio::net::UdpSocket::from_std(u)
    }

    /// Connect from inside the pod. `source` makes the connection appear to come from that
    /// address (IP_TRANSPARENT), which is how the application sees the real client.
    pub async fn connect(
        &self,
        dst: SocketAddr,
        mark: u32,
        source: Option<IpAddr>,
    ) -> io::Result<tokio::net::TcpStream> {
        let s: TcpStream = self
            .run(move || {
                let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
                s.set_mark(mark)?;
                s.set_tcp_nodelay(true)?;
                if let Some(src) = source {
                    s.set_ip_transparent_v4(true)?;
                    s.bind(&SocketAddr::new(src, 0).into())?;
                }
                s.set_nonblocking(true)?;
                Ok(s.into())
            })
            .await?;
        tokio::net::TcpSocket::from_std_stream(s).connect(dst).await
    }
}

/// The capture rules for a pod (ambient or sidecar), one table replaced atomically. The
/// redirect runs before the box's service DNAT (priority -110 < -100), so VIP traffic reaches
/// the proxy. Excluded ports (sidecar annotations) bypass the proxy in their direction.
pub fn ambient_rules(exclude_inbound: &[u16], exclude_outbound: &[u16]) -> String {
    let set = |ports: &[u16]| {
        if ports.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            format!("tcp dport {{ {} }} return\n    ", list.join(", "))
        }
    };
    let (inb, outb) = (set(exclude_inbound), set(exclude_outbound));
    format!(
        "table ip spar_ambient {{
  chain prerouting {{
    type nat hook prerouting priority -110; policy accept;
    iifname \"lo\" return
    tcp dport 15008 return
    {inb}meta l4proto tcp redirect to :15006
  }}
  chain output {{
    type nat hook output priority -110; policy accept;
    meta mark {{ {OUTBOUND_MARK:#x}, {INBOUND_MARK:#x} }} return
    udp dport 53 redirect to :15053
    oifname \"lo\" return
    ip daddr 127.0.0.0/8 return
    {outb}meta l4proto tcp redirect to :15001
  }}
  chain mark_replies {{
    type route hook output priority -150; policy accept;
    meta mark {INBOUND_MARK:#x} ct mark set {INBOUND_MARK:#x}
    ct mark {INBOUND_MARK:#x} meta mark set {INBOUND_MARK:#x}
  }}
}}
"
    )
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), Error> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(text), Some(mut s)) = (stdin, child.stdin.take()) {
        s.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Install capture: nftables table, policy routing for replies to transparent connections.
pub fn enroll(netns: &str, table: &str) -> Result<(), Error> {
    let rules = format!("add table ip spar_ambient\ndelete table ip spar_ambient\n{table}");
    run(
        "ip",
        &["netns", "exec", netns, "nft", "-f", "-"],
        Some(&rules),
    )?;
    let mark = format!("{INBOUND_MARK:#x}");
    let _ = run(
        "ip",
        &[
            "-n",
            netns,
            "rule",
            "del",
            "fwmark",
            &mark,
            "lookup",
            INBOUND_TABLE,
        ],
        None,
    );
    run(
        "ip",
        &[
            "-n",
            netns,
            "rule",
            "add",
            "fwmark",
            &mark,
            "lookup",
            INBOUND_TABLE,
        ],
        None,
    )?;
    run(
        "ip",
        &[
            "-n",
            netns,
            "route",
            "replace",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            INBOUND_TABLE,
        ],
        None,
    )?;
    Ok(())
}

/// Remove capture; the pod is back to plain networking.
pub fn unenroll(netns: &str) -> Result<(), Error> {
    let _ = run(
        "ip",
        &[
            "netns",
            "exec",
            netns,
            "nft",
            "delete",
            "table",
            "ip",
            "spar_ambient",
        ],
        None,
    );
    let _ = run(
        "ip",
        &[
            "-n",
            netns,
            "rule",
            "del",
            "fwmark",
            &format!("{INBOUND_MARK:#x}"),
            "lookup",
            INBOUND_TABLE,
        ],
        None,
    );
    let _ = run(
        "ip",
        &["-n", netns, "route", "flush", "table", INBOUND_TABLE],
        None,
    );
    Ok(())
}

/// The original destination of a redirected connection.
pub fn original_dst(s: &tokio::net::TcpStream) -> io::Result<SocketAddr> {
    socket2::SockRef::from(s)
        .original_dst_v4()?
        .as_socket()
        .ok_or_else(|| io::Error::other("no original destination"))
}
