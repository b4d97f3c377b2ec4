//! Bad inputs tried on what Spar does with an HTTP request's path: hyper has parsed the
//! request line, and `normalize_path` is what AuthorizationPolicy paths are compared
//! against (and what the request goes on with). Whatever the bytes, the normalized path is
//! rooted, has no `.`/`..` or empty segments to climb out of a prefix with, and is a fixed
//! point; path templates and value patterns match by their definition, never by accident.

use proptest::prelude::*;
use spar_model::istio::pattern::{PathPattern, Pattern, cidr, normalize_path};

/// Paths a client might send: anything, path-shaped text, and dot segments spelled every
/// way (`..`, `%2e%2E`, `.%2e`), with doubled and trailing slashes.
fn raw_path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        "[a-zA-Z0-9_~-]{0,6}",
        prop::sample::select(vec![
            ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%2e.", "%2f", "%2F", "%25", "%252e", "%",
            "%4", "%zz", "%41dmin", "admin", "ADMIN", "é", "%c3%a9", "",
        ])
        .prop_map(str::to_string),
    ];
    prop_oneof![
        ".{0,40}",
        "[/.%a-fA-F0-9]{0,30}",
        (
            prop::collection::vec(segment, 0..8),
            prop::sample::select(vec!["", "/", "//"])
        )
            .prop_map(|(segs, end)| format!("/{}{end}", segs.join("/"))),
    ]
}

/// A template and a path it must match: `{*}` becomes one non-empty segment, `{**}` any
/// number (at least the slash before it stays).
fn template_and_match() -> impl Strategy<Value = (String, String)> {
    let seg = prop_oneof![
        3 => "[a-z0-9._-]{0,6}".prop_map(|l| (l.clone(), l)),
        1 => "[a-z0-9]{1,6}".prop_map(|v| ("{*}".to_string(), v)),
    ];
    (
        prop::collection::vec(seg, 0..5),
        prop::option::of(prop::collection::vec("[a-z0-9]{0,4}", 0..3)),
    )
        .prop_map(|(segs, rest)| {
            let (mut t, mut p): (Vec<String>, Vec<String>) = segs.into_iter().unzip();
            if let Some(rest) = rest {
                t.push("{**}".into());
                p.push(rest.join("/"));
            }
            (format!("/{}", t.join("/")), format!("/{}", p.join("/")))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any path: rooted, no `.`/`..`/empty segments (but a trailing slash), and
    /// normalizing again changes nothing unless a `%` escape is left to decode.
    #[test]
    fn normalized_paths_are_rooted_and_flat(raw in raw_path()) {
        let n = normalize_path(&raw);
        prop_assert!(n.starts_with('/'), "{raw:?} -> {n:?}");
        prop_assert!(!n.contains("//"), "{raw:?} -> {n:?}");
        let inner = n[1..].strip_suffix('/').unwrap_or(&n[1..]);
        if !inner.is_empty() {
            for seg in inner.split('/') {
                prop_assert!(!matches!(seg, "" | "." | ".."), "{raw:?} -> {n:?}");
            }
        }
        prop_assert!(!n.contains("/../") && !n.ends_with("/..") && !n.contains("/./"));
        if !n.contains('%') {
            prop_assert_eq!(normalize_path(&n), n.clone(), "a fixed point");
        }
    }

    /// A path already in normal form (rooted, plain segments) is left exactly as it is: the
    /// application gets what the client sent.
    #[test]
    fn normal_paths_are_unchanged(segs in prop::collection::vec("[a-zA-Z0-9_~-]{1,6}", 0..6), slash in any::<bool>()) {
        let mut p = format!("/{}", segs.join("/"));
        if slash && !segs.is_empty() {
            p.push('/');
        }
        prop_assert_eq!(normalize_path(&p), p);
    }

    /// However `/admin` is spelled (case aside), a DENY on `/admin` and `/admin/{**}` sees
    /// it: normalization decodes dot segments and unreserved escapes before matching.
    #[test]
    fn dot_segments_never_hide_a_denied_path(
        before in prop::collection::vec(prop::sample::select(vec!["a", ".", "..", "%2e", "%2e%2e", "", "x/.."]), 0..4),
        spelled in prop::sample::select(vec!["admin", "%61dmin", "adm%69n", "%61%64%6d%69%6e"]),
        after in prop::collection::vec(prop::sample::select(vec!["", "x", ".", "%2e"]), 0..3),
    ) {
        // `..` pops a segment before `admin`: put enough `..` in front to pop them all.
        let pops = before.len() + 1;
        let raw = format!("/{}/{}{}/{}", before.join("/"), "../".repeat(pops), spelled, after.join("/"));
        let n = normalize_path(&raw);
        let exact = Pattern::parse("/admin").matches(Some(&n));
        let under = PathPattern::parse("/admin/{**}").expect("template").matches(&n);
        prop_assert!(exact || under, "{raw:?} -> {n:?} escapes both");
    }

    /// Templates: parsing any text never panics; what parses as a template matches only
    /// rooted paths.
    #[test]
    fn templates_parse_safely(t in prop_oneof![".{0,30}", "[/{}*a-z]{0,20}"], path in raw_path()) {
        if let Ok(p @ PathPattern::Template(_)) = PathPattern::parse(&t) {
            prop_assert!(t.starts_with('/'));
            prop_assert!(!p.matches(&path) || path.starts_with('/'));
        }
    }

    /// A template matches the paths made by filling it in, and not those with a `{*}` left
    /// empty or a segment added where no `{**}` takes it.
    #[test]
    fn templates_match_their_fillings((t, path) in template_and_match(), extra in "[a-z]{1,4}") {
        let p = PathPattern::parse(&t).expect("a well-formed template");
        prop_assert!(p.matches(&path), "{t} ~ {path}");
        if !t.contains("{**}") && t.contains('{') {
            prop_assert!(!p.matches(&format!("{path}/{extra}")), "{t} ~ {path}/{extra}");
        }
        if let Some(i) = t.find("{*}") {
            // The template with that `{*}` filled by nothing: not a match.
            let empty = t[..i].replace("{*}", "x") + &t[i + 3..].replace("{*}", "x").replace("{**}", "");
            prop_assert!(!p.matches(&empty) || t.contains("{**}"), "{t} ~ {empty}");
        }
    }

    /// Value patterns mean what Istio says, for any value: `*` is presence, `p*` a prefix,
    /// `*s` a suffix, anything else exact; an absent value matches nothing; case-insensitive
    /// matching is matching of the lower-cased pattern and value.
    #[test]
    fn value_patterns_mean_what_they_say(s in "[a-zA-Z*é.]{0,6}", v in "[a-zA-Z*é.]{0,8}") {
        let p = Pattern::parse(&s);
        let want = if s == "*" {
            !v.is_empty()
        } else if let Some(pre) = s.strip_suffix('*') {
            v.starts_with(pre)
        } else if let Some(suf) = s.strip_prefix('*') {
            v.ends_with(suf)
        } else {
            v == s
        };
        prop_assert_eq!(p.matches(Some(&v)), want, "{:?} ~ {:?}", s, v);
        prop_assert!(!p.matches(None));
        prop_assert_eq!(
            p.matches_ignore_case(Some(&v)),
            Pattern::parse(&s.to_ascii_lowercase()).matches(Some(&v.to_ascii_lowercase()))
        );
    }

    /// CIDRs: any text parses or is refused without a panic; an address is its own block.
    #[test]
    fn cidrs_parse_safely(s in prop_oneof![".{0,20}", "[0-9a-f.:/]{0,24}"], ip in any::<[u8; 4]>()) {
        let _ = cidr(&s);
        let addr = std::net::IpAddr::from(ip);
        let net = cidr(&addr.to_string()).expect("an address");
        prop_assert!(net.contains(&addr));
        prop_assert_eq!(net.prefix_len(), 32);
    }
}
