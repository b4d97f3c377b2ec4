#!/usr/bin/env python3
"""Generate a config directory for the control-plane scale benchmark.

usage: gen.py DIR --pods N --services M --policies P [--namespaces 10] [--nodes K]
         [--per-file 1000]

Pods carry podIP and nodeName and an `app` label shared by N/M pods; each Service selects one
app; policies select an app (most) or a whole namespace. Namespaces alternate ambient and
sidecar injection, so node proxies and sidecars both have work. Files hold --per-file
documents each, as the issue's measurements did.
"""
import argparse, ipaddress, os


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--pods", type=int, required=True)
    ap.add_argument("--services", type=int, required=True)
    ap.add_argument("--policies", type=int, default=0)
    ap.add_argument("--namespaces", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=0, help="default: one per 100 pods")
    ap.add_argument("--per-file", type=int, default=1000)
    a = ap.parse_args()
    nodes = a.nodes or max(1, a.pods // 100)
    os.makedirs(a.dir, exist_ok=True)
    docs = []
    for n in range(a.namespaces):
        mode = "istio.io/dataplane-mode: ambient" if n % 2 == 0 else "istio-injection: enabled"
        docs.append(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{n}, labels: {{{mode}}}}}\n")
    base = int(ipaddress.ip_address("10.128.0.0"))
    for i in range(a.pods):
        ns, app = pod_place(i, a)
        ip = ipaddress.ip_address(base + i + 1)
        docs.append(
            f"apiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{i}, namespace: ns-{ns}, labels: {{app: app-{app}, version: v1}}}}\n"
            f"spec: {{serviceAccountName: sa-{app}, nodeName: node-{i % nodes}, containers: [{{name: app, command: [x], ports: [{{name: http, containerPort: 8080}}]}}]}}\n"
            f"status: {{podIP: {ip}}}\n")
    vip = int(ipaddress.ip_address("10.96.0.0"))
    for s in range(a.services):
        ns = s % a.namespaces
        docs.append(
            f"apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: ns-{ns}}}\n"
            f"spec: {{selector: {{app: app-{s}}}, clusterIP: {ipaddress.ip_address(vip + s + 1)}, ports: [{{name: http, port: 80, targetPort: http}}]}}\n")
    for p in range(a.policies):
        ns = p % a.namespaces
        if p % 10 == 9:
            sel = ""
        else:
            sel = f"selector: {{matchLabels: {{app: app-{(p * 7) % max(1, a.services) // a.namespaces * a.namespaces + ns}}}}}, "
        docs.append(
            f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: pol-{p}, namespace: ns-{ns}}}\n"
            f"spec: {{{sel}rules: [{{from: [{{source: {{namespaces: [ns-{(ns + 1) % a.namespaces}]}}}}], to: [{{operation: {{ports: ['8080']}}}}]}}]}}\n")
    for f in range(0, len(docs), a.per_file):
        with open(os.path.join(a.dir, f"mesh-{f // a.per_file:05d}.yaml"), "w") as out:
            out.write("---\n".join(docs[f:f + a.per_file]))


def pod_place(i, a):
    """Pod i belongs to app i % services, in that service's namespace."""
    app = i % max(1, a.services)
    return app % a.namespaces, app


if __name__ == "__main__":
    main()
