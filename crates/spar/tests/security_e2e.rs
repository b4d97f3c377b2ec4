//! End to end, as root: Istio's security tasks in sidecar mode on the cluster in a box
//! (examples/security/bookinfo.yaml), with Istio's YAML from examples/istio-samples and the
//! answers a user sees with curl: authorization for HTTP traffic (allow-nothing, then the
//! Bookinfo viewer policies one by one), explicit deny, TCP authorization by port, JWT
//! (`spar jwt` keys and tokens: 401 for a bad token, require-jwt, the groups claim) and
//! CUSTOM ext_authz over HTTP and gRPC. The in-process versions of these checks are in
//! crates/spar-proxy/tests/security_inprocess.rs.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Down, exec, repo, require_root, spar, spar_plain, state_json, text};

const NS: &str = "default";
const SLEEP: &str = "deploy/sleep";
const PRODUCTPAGE: &str = "deploy/productpage-v1";
const REVIEWS: &str = "deploy/reviews-v1";
const DENIED: &str = "RBAC: access denied";
/// Policies reach the sidecars within the control plane's debounce and a push; polls give up
/// after this.
const WAIT: Duration = Duration::from_secs(10);

#[test]
#[ignore = "needs root and network namespaces: run as root with --include-ignored (.ci/run does)"]
fn security_tasks() {
    require_root("security_tasks");
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path();
    let _guard = Down(state.to_path_buf());
    let mesh = repo("examples/security/bookinfo.yaml");
    let out = spar(state, &["up", "-d", mesh.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));

    http_authorization(state);
    explicit_deny(state);
    tcp_authorization(state);
    jwt(state);
    ext_authz(state);
}

/// One HTTP exchange as curl would see it.
#[derive(Debug)]
struct Reply {
    /// 0 when no HTTP answer came back.
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    /// The echo server's report of the request it got.
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.body.trim()).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

fn parse(raw: &str) -> Reply {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Reply {
        status,
        head: head.to_string(),
        body: if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        let Some(chunk) = rest.get(..n).filter(|_| n > 0) else {
            break;
        };
        out.push_str(chunk);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// `METHOD http://TARGET/PATH` from the pod `from`, with these headers; one connection, so
/// each call is decided afresh.
fn call(
    state: &Path,
    from: &str,
    method: &str,
    target: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {target}\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    if method != "GET" {
        req += "Content-Length: 0\r\n";
    }
    req += "Connection: close\r\n\r\n";
    let out = exec(
        state,
        NS,
        from,
        &["spar", "echo", "tcp", target, "--message", &req],
    );
    parse(&String::from_utf8_lossy(&out.stdout))
}

fn get(state: &Path, from: &str, target: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    call(state, from, "GET", target, path, headers)
}

/// Poll until `probe` gives the status wanted (config is propagating), then return that reply.
fn until(what: &str, want: u16, mut probe: impl FnMut() -> Reply) -> Reply {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = probe();
        if r.status == want {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: wanted {want}, still {r:?} after {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Exactly this status now (the policy that decides it is known to be in force).
fn expect(what: &str, want: u16, r: Reply) -> Reply {
    assert_eq!(r.status, want, "{what}: {r:?}");
    r
}

fn denied(what: &str, r: Reply) {
    assert_eq!((r.status, r.body.trim()), (403, DENIED), "{what}: {r:?}");
}

fn sample(file: &str) -> PathBuf {
    repo(&format!("examples/istio-samples/{file}"))
}

fn apply(state: &Path, file: &Path) {
    let out = spar(state, &["apply", "-f", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}: {}", file.display(), text(&out));
}

fn delete(state: &Path, file: &Path) {
    let out = spar(state, &["delete", "-f", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}: {}", file.display(), text(&out));
}

/// YAML of the test's own, kept in the state directory so it can be deleted again.
fn write(state: &Path, name: &str, yaml: &str) -> PathBuf {
    let f = state.join(format!("{name}.yaml"));
    std::fs::write(&f, yaml).expect("write");
    f
}

/// Istio's "Authorization for HTTP traffic": allow-nothing shuts every door, then each viewer
/// policy opens one call, for the caller its principal names only.
fn http_authorization(state: &Path) {
    until("the mesh answers", 200, || {
        get(state, SLEEP, "productpage:9080", "/", &[])
    });
    apply(state, &sample("authz-allow-nothing.yaml"));
    let r = until("allow-nothing", 403, || {
        get(state, SLEEP, "productpage:9080", "/productpage", &[])
    });
    denied("allow-nothing: sleep -> productpage", r);
    for (from, target) in [
        (PRODUCTPAGE, "details:9080"),
        (PRODUCTPAGE, "reviews:9080"),
        (REVIEWS, "ratings:9080"),
    ] {
        let r = until(&format!("allow-nothing: {from} -> {target}"), 403, || {
            get(state, from, target, "/", &[])
        });
        denied(target, r);
    }

    apply(state, &sample("authz-productpage-viewer.yaml"));
    until("productpage-viewer", 200, || {
        get(state, SLEEP, "productpage:9080", "/productpage", &[])
    });
    denied(
        "productpage-viewer allows GET only",
        call(
            state,
            SLEEP,
            "POST",
            "productpage:9080",
            "/productpage",
            &[],
        ),
    );
    denied(
        "productpage itself cannot reach details yet",
        get(state, PRODUCTPAGE, "details:9080", "/details/0", &[]),
    );

    apply(state, &sample("authz-details-viewer.yaml"));
    let r = until("details-viewer", 200, || {
        get(state, PRODUCTPAGE, "details:9080", "/details/0", &[])
    });
    assert_eq!(
        r.json()["peer_identity"],
        "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        "details saw productpage's identity"
    );
    denied(
        "details-viewer names productpage, not sleep",
        get(state, SLEEP, "details:9080", "/details/0", &[]),
    );
    denied(
        "details-viewer allows GET only",
        call(
            state,
            PRODUCTPAGE,
            "POST",
            "details:9080",
            "/details/0",
            &[],
        ),
    );

    apply(state, &sample("authz-reviews-viewer.yaml"));
    until("reviews-viewer", 200, || {
        get(state, PRODUCTPAGE, "reviews:9080", "/reviews/0", &[])
    });
    denied(
        "reviews-viewer names productpage, not sleep",
        get(state, SLEEP, "reviews:9080", "/reviews/0", &[]),
    );

    apply(state, &sample("authz-ratings-viewer.yaml"));
    until("ratings-viewer", 200, || {
        get(state, REVIEWS, "ratings:9080", "/ratings/0", &[])
    });
    denied(
        "ratings-viewer names reviews, not productpage",
        get(state, PRODUCTPAGE, "ratings:9080", "/ratings/0", &[]),
    );

    for f in [
        "authz-allow-nothing.yaml",
        "authz-productpage-viewer.yaml",
        "authz-details-viewer.yaml",
        "authz-reviews-viewer.yaml",
        "authz-ratings-viewer.yaml",
    ] {
        delete(state, &sample(f));
    }
    until("no policies: sleep -> details", 200, || {
        get(state, SLEEP, "details:9080", "/details/0", &[])
    });
}

/// Istio's "Explicit deny" on httpbin: DENY by method, by method unless `x-token: admin`,
/// DENY before ALLOW by path; and a DENY by path that normalizes the path first.
fn explicit_deny(state: &Path) {
    let httpbin = |method: &str, path: &str, headers: &[(&str, &str)]| {
        call(state, SLEEP, method, "httpbin:8000", path, headers)
    };
    until("allow-nothing is gone from httpbin", 200, || {
        httpbin("GET", "/get", &[])
    });
    apply(state, &sample("authz-deny-method-get.yaml"));
    let r = until("deny-method-get", 403, || httpbin("GET", "/get", &[]));
    denied("GET /get", r);
    expect("POST is not denied", 200, httpbin("POST", "/post", &[]));

    apply(state, &sample("authz-deny-method-get-x-token.yaml"));
    until("x-token: admin is let through", 200, || {
        httpbin("GET", "/get", &[("x-token", "admin")])
    });
    denied(
        "x-token: guest",
        httpbin("GET", "/get", &[("x-token", "guest")]),
    );
    denied("no x-token", httpbin("GET", "/get", &[]));

    apply(state, &sample("authz-allow-path-ip.yaml"));
    let r = until("allow-path-ip: only /ip", 403, || {
        httpbin("GET", "/get", &[("x-token", "admin")])
    });
    denied("GET /get with x-token: admin", r);
    expect(
        "GET /ip with x-token: admin",
        200,
        httpbin("GET", "/ip", &[("x-token", "admin")]),
    );
    denied("GET /ip without x-token", httpbin("GET", "/ip", &[]));
    delete(state, &sample("authz-allow-path-ip.yaml"));
    delete(state, &sample("authz-deny-method-get-x-token.yaml"));
    until("deny policies deleted", 200, || httpbin("GET", "/get", &[]));

    let deny_path = write(
        state,
        "deny-admin-path",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin-path, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - to:
    - operation:
        paths: [\"/admin*\"]
",
    );
    apply(state, &deny_path);
    let r = until("deny-admin-path", 403, || {
        httpbin("GET", "/admin/users", &[])
    });
    denied("/admin/users", r);
    denied(
        "the path is normalized before matching",
        httpbin("GET", "/public/../admin", &[]),
    );
    expect("other paths", 200, httpbin("GET", "/get", &[]));
    delete(state, &deny_path);
    until("deny-admin-path deleted", 200, || {
        httpbin("GET", "/admin/users", &[])
    });
}

/// `spar echo tcp ADDR`: does the message come back?
fn echoes(state: &Path, addr: &str) -> bool {
    let msg = format!("hello {addr}");
    let out = exec(
        state,
        NS,
        SLEEP,
        &["spar", "echo", "tcp", addr, "--message", &msg],
    );
    String::from_utf8_lossy(&out.stdout).contains(&msg)
}

fn until_echoes(state: &Path, what: &str, addr: &str, want: bool) {
    let deadline = Instant::now() + WAIT;
    while echoes(state, addr) != want {
        assert!(
            Instant::now() < deadline,
            "{what}: {addr} {} after {WAIT:?}",
            if want {
                "still refused"
            } else {
                "still echoes"
            }
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Istio's "Authorization for TCP traffic": ports 9000 and 9001 through the Service, 9002 at
/// the pod's address (the Service leaves it out).
fn tcp_authorization(state: &Path) {
    let ip = state_json(state)["plan"]["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "tcp-echo-0" && p["namespace"] == NS)
        .and_then(|p| p["ip"].as_str().map(str::to_string))
        .expect("tcp-echo's address");
    let p9002 = format!("{ip}:9002");
    until_echoes(state, "no policy", "tcp-echo:9000", true);
    assert!(echoes(state, "tcp-echo:9001"), "no policy: 9001");
    assert!(echoes(state, &p9002), "no policy: 9002");

    apply(state, &sample("authz-tcp-policy.yaml"));
    until_echoes(state, "tcp-policy allows 9000 and 9001 only", &p9002, false);
    assert!(echoes(state, "tcp-echo:9000"), "tcp-policy: 9000");
    assert!(echoes(state, "tcp-echo:9001"), "tcp-policy: 9001");

    apply(state, &sample("authz-tcp-policy-allow-get.yaml"));
    until_echoes(
        state,
        "an ALLOW rule with methods never matches TCP",
        "tcp-echo:9000",
        false,
    );
    assert!(!echoes(state, "tcp-echo:9001"), "no ALLOW rule names 9001");

    apply(state, &sample("authz-tcp-policy-deny-get.yaml"));
    until_echoes(
        state,
        "DENY on 9000 only: 9001 opens",
        "tcp-echo:9001",
        true,
    );
    assert!(
        !echoes(state, "tcp-echo:9000"),
        "a DENY rule with methods denies all of its port on TCP"
    );
    delete(state, &sample("authz-tcp-policy.yaml"));
    until_echoes(state, "tcp-policy deleted", "tcp-echo:9000", true);
}

/// `spar jwt ...`, which must succeed; its standard output, trimmed.
fn spar_jwt(args: &[&str]) -> String {
    let mut all = vec!["jwt"];
    all.extend_from_slice(args);
    let out = spar_plain(&all);
    assert!(out.status.success(), "spar {all:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const ISSUER: &str = "testing@secure.istio.io";

/// Istio's "JWT authorization" with a key of our own (`spar jwt`), its JWKS inline in Istio's
/// jwt-example RequestAuthentication.
fn jwt(state: &Path) {
    let keys = tempfile::tempdir().expect("tmp");
    let (mine, other) = (keys.path().join("mine"), keys.path().join("other"));
    let (mine, other) = (
        mine.to_str().expect("utf-8"),
        other.to_str().expect("utf-8"),
    );
    let printed = spar_jwt(&["keygen", "--out", mine, "--alg", "PS256", "--kid", "k1"]);
    assert_eq!(printed, format!("{mine}/jwks.json"));
    spar_jwt(&["keygen", "--out", other, "--alg", "PS256", "--kid", "k1"]);
    let jwks = spar_jwt(&["jwks", "--key-dir", mine]);
    assert_eq!(
        std::fs::read_to_string(&printed).expect("jwks.json").trim(),
        jwks
    );
    let token = |dir: &str, extra: &[&str]| {
        let mut a = vec!["token", "--key-dir", dir, "--iss", ISSUER, "--sub", ISSUER];
        a.extend_from_slice(extra);
        format!("Bearer {}", spar_jwt(&a))
    };
    let groups = token(mine, &["--claim-json", r#"groups=["group1","group2"]"#]);
    let one_group = token(mine, &["--claim", "groups=group1"]);
    let no_groups = token(mine, &[]);
    let forged = token(other, &["--claim-json", r#"groups=["group1"]"#]);
    let expired = token(mine, &["--claim-json", "exp=1000000000"]);

    // Istio's jwt-example, its jwksUri (Istio's demo keys on the internet) replaced by ours.
    let sample_text =
        std::fs::read_to_string(sample("requestauthentication-jwt-example.yaml")).expect("sample");
    let ra: String = sample_text
        .lines()
        .map(|l| match l.trim_start().strip_prefix("jwksUri:") {
            Some(_) => format!("    jwks: '{}'", jwks.replace('\'', "''")),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(ra.contains("jwks: '"), "{ra}");
    let ra = write(state, "jwt-example", &ra);

    let httpbin = |auth: Option<&str>| {
        let h: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        get(state, SLEEP, "httpbin:8000", "/headers", &h)
    };
    apply(state, &ra);
    until("an invalid token", 401, || {
        httpbin(Some("Bearer invalidToken"))
    });
    let r = expect("a token of another key", 401, httpbin(Some(&forged)));
    assert_eq!(r.body.trim(), "Jwt verification fails", "{r:?}");
    let r = expect("an expired token", 401, httpbin(Some(&expired)));
    assert_eq!(r.body.trim(), "Jwt is expired", "{r:?}");
    expect("no token passes authentication", 200, httpbin(None));
    let r = expect("a valid token", 200, httpbin(Some(&groups)));
    assert!(
        r.json()["headers"].get("authorization").is_none(),
        "the token is not forwarded: {r:?}"
    );

    apply(state, &sample("authz-require-jwt.yaml"));
    let r = until("require-jwt: no token", 403, || httpbin(None));
    denied("require-jwt without a token", r);
    expect(
        "require-jwt with a valid token",
        200,
        httpbin(Some(&no_groups)),
    );

    apply(state, &sample("authz-require-jwt-groups.yaml"));
    let r = until("require-jwt with groups: a token without them", 403, || {
        httpbin(Some(&no_groups))
    });
    denied("no groups claim", r);
    expect("groups [group1, group2]", 200, httpbin(Some(&groups)));
    expect("groups: group1 (a string)", 200, httpbin(Some(&one_group)));

    delete(state, &sample("authz-require-jwt-groups.yaml"));
    delete(state, &ra);
    until("JWT policies deleted", 200, || {
        httpbin(Some("Bearer invalidToken"))
    });
}

/// Istio's "External authorization": the CUSTOM policy sends /headers on httpbin to
/// `spar echo ext-authz`, first over gRPC, then over HTTP.
fn ext_authz(state: &Path) {
    let httpbin = |path: &str, verdict: Option<&str>| {
        let h: Vec<(&str, &str)> = verdict.map(|v| ("x-ext-authz", v)).into_iter().collect();
        get(state, SLEEP, "httpbin:8000", path, &h)
    };
    let grpc = std::fs::read_to_string(sample("authz-ext-authz.yaml")).expect("sample");
    assert!(grpc.contains("name: sample-ext-authz-grpc"));
    let http = grpc.replace("name: sample-ext-authz-grpc", "name: sample-ext-authz-http");
    for (provider, yaml) in [
        ("sample-ext-authz-grpc", grpc),
        ("sample-ext-authz-http", http),
    ] {
        let policy = write(state, "ext-authz", &yaml);
        apply(state, &policy);
        let r = until(&format!("{provider}: denied"), 403, || {
            httpbin("/headers", Some("deny"))
        });
        assert!(
            r.body.contains("denied by ext_authz"),
            "{provider}: the server's denial: {r:?}"
        );
        if provider == "sample-ext-authz-http" {
            assert_eq!(
                r.header("x-ext-authz-check-result"),
                Some("denied"),
                "headersToDownstreamOnDeny: {r:?}"
            );
        }
        let r = expect(
            &format!("{provider}: without the header"),
            403,
            httpbin("/headers", None),
        );
        assert!(r.body.contains("denied by ext_authz"), "{provider}: {r:?}");
        let r = expect(
            &format!("{provider}: allowed"),
            200,
            httpbin("/headers", Some("allow")),
        );
        let seen = &r.json()["headers"];
        assert_eq!(seen["x-ext-authz"], "allow", "{provider}: {r:?}");
        assert_eq!(
            seen["x-ext-authz-check-result"], "allowed",
            "{provider}: the authorizer's header reached httpbin: {r:?}"
        );
        expect(
            &format!("{provider}: a path the policy does not name"),
            200,
            httpbin("/ip", None),
        );
        delete(state, &policy);
        until(&format!("{provider}: policy deleted"), 200, || {
            httpbin("/headers", Some("deny"))
        });
    }
}
