//! The value syntax of AuthorizationPolicy fields: exact, `prefix*`, `*suffix` and `*`
//! (present); path templates `{*}` (one segment) and `{**}` (the rest); CIDR blocks; and the
//! path normalization applied before paths are compared, so `/public/../admin` is `/admin`.

use std::net::IpAddr;

use ipnet::IpNet;

/// One string value of a policy field.
#[derive(Debug, Clone, PartialEq)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `*`: any value, as long as there is one.
    Present,
}

impl Pattern {
    pub fn parse(s: &str) -> Pattern {
        if s == "*" {
            Pattern::Present
        } else if let Some(p) = s.strip_suffix('*') {
            Pattern::Prefix(p.to_string())
        } else if let Some(p) = s.strip_prefix('*') {
            Pattern::Suffix(p.to_string())
        } else {
            Pattern::Exact(s.to_string())
        }
    }

    /// Whether `v` matches; an absent value matches nothing.
    pub fn matches(&self, v: Option<&str>) -> bool {
        let Some(v) = v else { return false };
        match self {
            Pattern::Exact(e) => v == e,
            Pattern::Prefix(p) => v.starts_with(p.as_str()),
            Pattern::Suffix(s) => v.ends_with(s.as_str()),
            Pattern::Present => !v.is_empty(),
        }
    }

    /// As `matches`, ignoring ASCII case (hosts).
    pub fn matches_ignore_case(&self, v: Option<&str>) -> bool {
        let Some(v) = v else { return false };
        let v = v.to_ascii_lowercase();
        match self {
            Pattern::Exact(e) => v == e.to_ascii_lowercase(),
            Pattern::Prefix(p) => v.starts_with(&p.to_ascii_lowercase()),
            Pattern::Suffix(s) => v.ends_with(&s.to_ascii_lowercase()),
            Pattern::Present => !v.is_empty(),
        }
    }
}

/// A `paths` value: a string pattern, or a template with `{*}` and `{**}`.
#[derive(Debug, Clone, PartialEq)]
pub enum PathPattern {
    Plain(Pattern),
    Template(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Literal(String),
    /// `{*}`: exactly one non-empty segment.
    One,
    /// `{**}`: any number of segments; only last.
    Rest,
}

impl PathPattern {
    /// Parse a `paths` value; a template must start with `/`, use `{*}` and `{**}` as whole
    /// segments, put `{**}` last, and not mix in `*` globs.
    pub fn parse(s: &str) -> Result<PathPattern, String> {
        if !s.contains('{') && !s.contains('}') {
            return Ok(PathPattern::Plain(Pattern::parse(s)));
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(format!("path template {s:?} must start with /"));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segs = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let seg = match *p {
                "{*}" => Segment::One,
                "{**}" if i + 1 == parts.len() => Segment::Rest,
                "{**}" => return Err(format!("{{**}} must be the last segment of {s:?}")),
                lit if lit.contains(['{', '}', '*']) => {
                    return Err(format!(
                        "segment {lit:?} of {s:?}: use {{*}} or {{**}} as a whole segment"
                    ));
                }
                lit => Segment::Literal(lit.to_string()),
            };
            segs.push(seg);
        }
        Ok(PathPattern::Template(segs))
    }

    /// Whether the (normalized) path matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Plain(p) => p.matches(Some(path)),
            PathPattern::Template(segs) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let parts: Vec<&str> = rest.split('/').collect();
                let mut i = 0;
                for seg in segs {
                    match seg {
                        // At least the `/` before it must be there: `/foo/{**}` is not `/foo`.
                        Segment::Rest => return i < parts.len(),
                        Segment::One => {
                            if parts.get(i).is_none_or(|p| p.is_empty()) {
                                return false;
                            }
                        }
                        Segment::Literal(l) => {
                            if parts.get(i) != Some(&l.as_str()) {
                                return false;
                            }
                        }
                    }
                    i += 1;
                }
                i == parts.len()
            }
        }
    }
}

/// A CIDR block or a single address.
pub fn cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))
}

fn hex(b: Option<&u8>) -> Option<u8> {
    (*b? as char).to_digit(16).map(|d| d as u8)
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 normalization as Envoy applies it before authorization: percent-encoded
/// unreserved characters decoded, `.` and `..` segments removed, runs of `/` merged.
pub fn normalize_path(path: &str) -> String {
    // The common case, already normal: no escapes, no empty, `.` or `..` segments.
    let normal = path.starts_with('/')
        && !path.contains('%')
        && !path.contains("//")
        && !path.contains("/./")
        && !path.contains("/../")
        && !path.ends_with("/.")
        && !path.ends_with("/..");
    if normal {
        return path.to_string();
    }
    let b = path.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Bytes, not `str` slices: a raw UTF-8 byte may follow the `%`.
        if b[i] == b'%'
            && let (Some(hi), Some(lo)) = (hex(b.get(i + 1)), hex(b.get(i + 2)))
            && unreserved(hi << 4 | lo)
        {
            let v = hi << 4 | lo;
            decoded.push(v);
            i += 3;
            continue;
        }
        decoded.push(b[i]);
        i += 1;
    }
    let s = String::from_utf8_lossy(&decoded);
    let mut out: Vec<&str> = Vec::new();
    let trailing = s.ends_with('/') || s.ends_with("/.") || s.ends_with("/..");
    for seg in s.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            seg => out.push(seg),
        }
    }
    let mut n = format!("/{}", out.join("/"));
    if trailing && n.len() > 1 {
        n.push('/');
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        for (p, v, want) in [
            ("abc", Some("abc"), true),
            ("abc", Some("abcd"), false),
            ("abc*", Some("abcd"), true),
            ("abc*", Some("xabc"), false),
            ("*abc", Some("xabc"), true),
            ("*abc", Some("abcx"), false),
            ("*", Some("x"), true),
            ("*", Some(""), false),
            ("*", None, false),
            ("abc", None, false),
        ] {
            assert_eq!(Pattern::parse(p).matches(v), want, "{p} ~ {v:?}");
        }
        assert!(Pattern::parse("Example.COM").matches_ignore_case(Some("example.com")));
        assert!(Pattern::parse("*.Example.com").matches_ignore_case(Some("API.example.COM")));
    }

    #[test]
    fn templates() {
        for (t, path, want) in [
            ("/foo/{*}", "/foo/bar", true),
            ("/foo/{*}", "/foo/bar/baz", false),
            ("/foo/{*}", "/foo/", false),
            ("/foo/{*}/baz", "/foo/x/baz", true),
            ("/foo/{*}/baz", "/foo/x/y/baz", false),
            ("/foo/{**}", "/foo/x/y/z", true),
            ("/foo/{**}", "/foo/", true),
            ("/foo/{**}", "/foo", false),
            ("/{**}", "/anything/at/all", true),
            ("/a/{*}/{**}", "/a/b/c/d", true),
            ("/a/{*}/{**}", "/a", false),
        ] {
            let p = PathPattern::parse(t).expect("parses");
            assert_eq!(p.matches(path), want, "{t} ~ {path}");
        }
        for bad in ["foo/{*}", "/foo/{**}/bar", "/foo/x{*}", "/foo/{*}*"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn normalization() {
        for (raw, want) in [
            ("/a/b", "/a/b"),
            ("/public/../admin", "/admin"),
            ("/a/./b", "/a/b"),
            ("//a///b", "/a/b"),
            ("/%61dmin", "/admin"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a/b/", "/a/b/"),
            ("/../../x", "/x"),
            ("/", "/"),
            ("/%a\u{e9}x", "/%a\u{e9}x"),
            ("/%", "/%"),
            ("/%4", "/%4"),
        ] {
            assert_eq!(normalize_path(raw), want, "{raw}");
        }
    }
}
