//! Capture: the nftables table and policy routing that send a pod's traffic to its proxy,
//! one table per pod, replaced atomically.

use std::process::{Command, Stdio};

use crate::Error;

/// Mark on the proxy's own outbound sockets: the redirect rules let them pass.
pub const OUTBOUND_MARK: u32 = 0x539;
/// Mark on connections the proxy makes to the application with the client's source address;
/// replies carry it back (connmark + policy routing) to the proxy instead of the network.
pub const INBOUND_MARK: u32 = 0x111;
const INBOUND_TABLE: &str = "111";

/// What to capture: everything but these ports (sidecar annotations).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capture {
    pub exclude_inbound: Vec<u16>,
    pub exclude_outbound: Vec<u16>,
}

/// The capture rules for a pod (ambient or sidecar), one table replaced atomically. The
/// redirect runs before the box's service DNAT (priority -110 < -100), so VIP traffic reaches
/// the proxy. Excluded ports (sidecar annotations) bypass the proxy in their direction.
pub fn rules(c: &Capture) -> String {
    let set = |ports: &[u16]| {
        if ports.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            format!("tcp dport {{ {} }} return\n    ", list.join(", "))
        }
    };
    let (inb, outb) = (set(&c.exclude_inbound), set(&c.exclude_outbound));
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
{IPV6_RULES}"
    )
}

/// Capture is IPv4 (dual stack is not implemented): IPv6 off the pod's loopback is dropped
/// both ways, so no pod reaches another over IPv6 (link-local addresses) around mTLS and
/// policy. The box also disables IPv6 on pod interfaces; this holds for any other host.
const IPV6_RULES: &str = "table ip6 spar_ambient6 {
  chain input {
    type filter hook input priority 0; policy drop;
    iifname \"lo\" accept
  }
  chain output {
    type filter hook output priority 0; policy drop;
    oifname \"lo\" accept
  }
}
";

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
pub fn install(netns: &str, c: &Capture) -> Result<(), Error> {
    let rules = format!(
        "add table ip spar_ambient\ndelete table ip spar_ambient\nadd table ip6 spar_ambient6\ndelete table ip6 spar_ambient6\n{}",
        rules(c)
    );
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
    if let Err(e) = accept_marks(netns, true) {
        // Only a cost (the app leg runs in small segments), so not a failure.
        tracing::warn!(netns, error = %e, "cannot set tcp_fwmark_accept in the pod");
    }
    Ok(())
}

/// `net.ipv4.tcp_fwmark_accept` in the pod: the application's socket for a connection the
/// proxy made to it takes the mark of the proxy's SYN, so its SYN-ACK is already routed by the
/// reply table (over loopback) when its MSS is chosen. Without it the SYN-ACK's MSS came from
/// the route to the client's address (the pod's 1500-byte link) and the loopback leg to the
/// app ran in 1448-byte segments with an ACK for every two: 3.5 -> 3.75 Gb/s on the bench's
/// sidecar bulk. Connections that do not come from the proxy carry no mark and are unchanged.
fn accept_marks(netns: &str, on: bool) -> Result<(), Error> {
    let kv = format!("net.ipv4.tcp_fwmark_accept={}", u8::from(on));
    // As the box sets its namespaces' sysctls (spar-box `net.rs`).
    run(
        "ip",
        &["netns", "exec", netns, "sysctl", "-q", "-w", &kv],
        None,
    )
}

/// Remove capture; the pod is back to plain networking.
pub fn remove(netns: &str) -> Result<(), Error> {
    for (family, table) in [("ip", "spar_ambient"), ("ip6", "spar_ambient6")] {
        let _ = run(
            "ip",
            &[
                "netns", "exec", netns, "nft", "delete", "table", family, table,
            ],
            None,
        );
    }
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
    let _ = accept_marks(netns, false);
    Ok(())
}
