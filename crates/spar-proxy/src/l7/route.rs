//! Route selection: pure functions from a request's facts and the compiled config to a
//! decision. No I/O here; the tables in the tests pin Istio's matching semantics.

use super::config::{Action, Match, Rewrite, Route, Service, StringMatch, WeightedTarget};
use super::facts::RequestFacts;

fn query_value<'a>(q: Option<&'a str>, key: &str) -> Option<&'a str> {
    q?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

pub fn matches(m: &Match, r: &RequestFacts<'_>) -> bool {
    let opt =
        |sm: &Option<StringMatch>, v: &str, ic: bool| sm.as_ref().is_none_or(|s| s.matches(v, ic));
    opt(&m.uri, r.path, m.ignore_uri_case)
        && opt(&m.method, r.method, false)
        && opt(&m.scheme, r.scheme, false)
        && opt(&m.authority, r.authority, false)
        && m.port.is_none_or(|p| p == r.port)
        && m.headers.iter().all(|(k, sm)| {
            r.headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| sm.matches(v, false))
        })
        && m.without_headers.iter().all(|(k, sm)| {
            !r.headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| sm.matches(v, false))
        })
        && m.query
            .iter()
            .all(|(k, sm)| query_value(r.query, k).is_some_and(|v| sm.matches(v, false)))
}

/// The first route whose matches (any of them; none means all requests) fit, and the match
/// that fitted (rewrites need it).
pub fn select<'a>(
    svc: &'a Service,
    r: &RequestFacts<'_>,
) -> Option<(&'a Route, Option<&'a Match>)> {
    svc.http.iter().find_map(|route| {
        if route.matches.is_empty() {
            return Some((route, None));
        }
        route
            .matches
            .iter()
            .find(|m| matches(m, r))
            .map(|m| (route, Some(m)))
    })
}

/// Weighted choice; `roll` is uniform in `0..total weight` (all-zero weights pick the first).
pub fn pick_weighted(
    targets: &[WeightedTarget],
    roll: impl FnOnce(u64) -> u64,
) -> Option<&WeightedTarget> {
    let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
    if total == 0 {
        return targets.first();
    }
    let mut x = roll(total);
    for t in targets {
        let w = u64::from(t.weight);
        if x < w {
            return Some(t);
        }
        x -= w;
    }
    targets.last()
}

/// The upstream path after `rewrite` (Istio: a prefix match's prefix is replaced, otherwise
/// the whole path).
pub fn rewrite_path(rw: &Rewrite, matched: Option<&Match>, path: &str) -> String {
    match rw {
        Rewrite::Uri(new) => {
            let ic = matched.is_some_and(|m| m.ignore_uri_case);
            match matched.and_then(|m| m.uri.as_ref()) {
                // `matches` checks the prefix on a char boundary, so the slice is safe.
                Some(m @ StringMatch::Prefix(p)) if m.matches(path, ic) => {
                    format!("{new}{}", &path[p.len()..])
                }
                _ => new.clone(),
            }
        }
        Rewrite::Regex(re, with) => re.replace_all(path, with.as_str()).into_owned(),
    }
}

/// The `Location` of a redirect.
pub fn redirect_location(a: &Action, r: &RequestFacts<'_>, path_and_query: &str) -> Option<String> {
    let Action::Redirect {
        uri,
        authority,
        port,
        scheme,
        ..
    } = a
    else {
        return None;
    };
    let scheme = scheme.as_deref().unwrap_or(r.scheme);
    let host = authority.as_deref().unwrap_or(r.authority);
    let host = match port {
        Some(p) => {
            // Only a numeric port is replaced: `[::1]` has colons of its own.
            let bare = match host.rsplit_once(':') {
                Some((h, port))
                    if !port.is_empty()
                        && port.bytes().all(|b| b.is_ascii_digit())
                        && (!h.starts_with('[') || h.ends_with(']')) =>
                {
                    h
                }
                _ => host,
            };
            format!("{bare}:{p}")
        }
        None => host.to_string(),
    };
    let path = uri.as_deref().unwrap_or(path_and_query);
    Some(format!("{scheme}://{host}{path}"))
}

#[cfg(test)]
mod tests {
    use super::super::config::compile;
    use super::*;
    use crate::snapshot::ServiceKey;
    use http::HeaderMap;
    use spar_xds::l7::ServiceRoutes;
    use std::sync::LazyLock;

    static KEY: LazyLock<ServiceKey> =
        LazyLock::new(|| ServiceKey::new("default", "reviews.default.svc.cluster.local"));

    fn svc(vs: serde_json::Value) -> Service {
        compile(&ServiceRoutes {
            namespace: "default".into(),
            hostname: "reviews.default.svc.cluster.local".into(),
            virtual_service: vs.to_string(),
            virtual_service_name: "default/reviews".into(),
            ..Default::default()
        })
        .expect("compiles")
    }

    fn facts<'a>(
        method: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        h: &'a HeaderMap,
    ) -> RequestFacts<'a> {
        RequestFacts {
            method,
            scheme: "http",
            authority: "reviews:9080",
            path,
            query,
            headers: h,
            port: 9080,
            service: &KEY,
            peer: "10.0.0.1:5000".parse().expect("addr"),
            h2: false,
        }
    }

    #[test]
    fn first_matching_route_wins() {
        let s = svc(serde_json::json!({
            "hosts": ["reviews.default.svc.cluster.local"],
            "http": [
                {"name": "jason", "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                 "route": [{"destination": {"host": "reviews.default.svc.cluster.local", "subset": "v2"}}]},
                {"name": "api", "match": [{"uri": {"prefix": "/api/"}, "method": {"exact": "POST"}},
                                          {"uri": {"regex": "/v[0-9]+/.*"}}],
                 "route": [{"destination": {"host": "reviews.default.svc.cluster.local", "subset": "v3"}}]},
                {"name": "q", "match": [{"queryParams": {"debug": {"exact": "1"}}}, {"uri": {"exact": "/CaSe"}, "ignoreUriCase": true}],
                 "route": [{"destination": {"host": "reviews.default.svc.cluster.local", "subset": "v4"}}]},
                {"name": "rest", "route": [{"destination": {"host": "reviews.default.svc.cluster.local", "subset": "v1"}}]}
            ]
        }));
        let mut jason = HeaderMap::new();
        jason.insert("end-user", "jason".parse().expect("value"));
        let mut other = HeaderMap::new();
        other.insert("end-user", "json".parse().expect("value"));
        let empty = HeaderMap::new();
        for (m, p, q, h, want) in [
            ("GET", "/", None, &jason, "jason"),
            ("GET", "/", None, &other, "rest"),
            ("POST", "/api/x", None, &empty, "api"),
            ("GET", "/api/x", None, &empty, "rest"),
            ("GET", "/v12/reviews", None, &empty, "api"),
            ("GET", "/xv1/reviews", None, &empty, "rest"),
            ("GET", "/", Some("a=2&debug=1"), &empty, "q"),
            ("GET", "/", Some("debug=10"), &empty, "rest"),
            ("GET", "/case", None, &empty, "q"),
        ] {
            let (r, _) = select(&s, &facts(m, p, q, h)).expect("a route");
            assert_eq!(r.name, want, "{m} {p} {q:?}");
        }
    }

    #[test]
    fn weights_split_by_roll() {
        let s = svc(serde_json::json!({
            "hosts": ["reviews.default.svc.cluster.local"],
            "http": [{"route": [
                {"destination": {"host": "reviews.default.svc.cluster.local", "subset": "v1"}, "weight": 80},
                {"destination": {"host": "reviews.default.svc.cluster.local", "subset": "v3"}, "weight": 20}
            ]}]
        }));
        let Action::Forward(t) = &s.http[0].action else {
            panic!("forward")
        };
        let pick = |x| pick_weighted(t, |_| x).and_then(|w| w.target.subset.clone());
        assert_eq!(pick(0).as_deref(), Some("v1"));
        assert_eq!(pick(79).as_deref(), Some("v1"));
        assert_eq!(pick(80).as_deref(), Some("v3"));
        assert_eq!(pick(99).as_deref(), Some("v3"));
    }

    #[test]
    fn rewrites_and_redirects() {
        let s = svc(serde_json::json!({
            "hosts": ["reviews.default.svc.cluster.local"],
            "http": [
                {"match": [{"uri": {"prefix": "/old/"}}], "rewrite": {"uri": "/new/"},
                 "route": [{"destination": {"host": "reviews.default.svc.cluster.local"}}]},
                {"match": [{"uri": {"exact": "/moved"}}], "redirect": {"uri": "/here", "authority": "other", "port": 8080}}
            ]
        }));
        let h = HeaderMap::new();
        let f = facts("GET", "/old/a/b", None, &h);
        let (r, m) = select(&s, &f).expect("route");
        assert_eq!(
            rewrite_path(r.rewrite.as_ref().expect("rewrite"), m, f.path),
            "/new/a/b"
        );
        let f = facts("GET", "/moved", None, &h);
        let (r, _) = select(&s, &f).expect("route");
        assert_eq!(
            redirect_location(&r.action, &f, "/moved").as_deref(),
            Some("http://other:8080/here")
        );
    }
}
