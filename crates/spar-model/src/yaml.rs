//! YAML documents -> JSON values plus a map from field paths to source lines.
//!
//! Typed deserialization happens on the JSON value (so errors carry a field path via
//! `serde_path_to_error`); the path map turns those paths back into `file:line`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::Spanned;

/// One YAML document: its value, and the line of each field path in it.
#[derive(Debug, Clone)]
pub struct Document {
    pub value: Value,
    /// Path (`spec.http[0].route`) -> 1-based line in the file.
    pub lines: BTreeMap<String, u64>,
    /// Line where the document starts.
    pub line: u64,
}

impl Document {
    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> u64 {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return *l;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.line,
            }
        }
    }
}

/// A parse failure with its line, when the parser knows it.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub line: u64,
    pub message: String,
}

/// Parse every document of a YAML stream, within the default limits. Empty documents are
/// skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, SyntaxError> {
    parse_documents_within(text, &crate::load::Limits::default())
}

/// Parse every document of a YAML stream within `limits` (a breach names the limit).
pub fn parse_documents_within(
    text: &str,
    limits: &crate::load::Limits,
) -> Result<Vec<Document>, SyntaxError> {
    let options = serde_saphyr::options! {
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_documents: limits.documents_per_file,
            max_nodes: limits.nodes_per_file,
            // Events are about two per node; the node limit is the one that speaks.
            max_events: limits.nodes_per_file.saturating_mul(3).saturating_add(limits.documents_per_file.saturating_mul(4)),
            max_total_scalar_bytes: 1 << 30,
            max_depth: 32, // 64 (the default) overflows a 2 MiB thread stack in debug builds
        },
    };
    let nodes: Vec<Spanned<Node>> = serde_saphyr::from_multiple_with_options(text, options)
        .map_err(|e| SyntaxError {
            line: e.location().map(|l| l.line()).unwrap_or(1),
            message: match &e {
                serde_saphyr::Error::Budget { breach, .. } => limits.explain(breach),
                _ => first_line(&e.to_string()),
            },
        })?;
    Ok(nodes
        .into_iter()
        .filter(|n| !matches!(n.value, Node::Null))
        .map(|n| {
            let mut lines = BTreeMap::new();
            let line = n.referenced.line();
            let value = flatten(n, "", &mut lines);
            Document { value, lines, line }
        })
        .collect())
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or("invalid YAML")
        .trim()
        .to_string()
}

fn flatten(node: Spanned<Node>, path: &str, lines: &mut BTreeMap<String, u64>) -> Value {
    lines
        .entry(path.to_string())
        .or_insert(node.referenced.line());
    match node.value {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Int(i) => Value::Number(i.into()),
        Node::UInt(u) => Value::Number(u.into()),
        Node::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        Node::Str(s) => Value::String(s),
        Node::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, n)| flatten(n, &format!("{path}[{i}]"), lines))
                .collect(),
        ),
        Node::Map(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                let child = if path.is_empty() {
                    k.value.clone()
                } else {
                    format!("{path}.{}", k.value)
                };
                lines.insert(child.clone(), k.referenced.line());
                let value = flatten(v, &child, lines);
                map.insert(k.value, value);
            }
            Value::Object(map)
        }
    }
}

/// A YAML node as the parser sees it (kept private: callers get JSON values).
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::UInt(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_follow_fields() {
        let text = "a: 1\n---\nkind: X\nspec:\n  http:\n  - route:\n    - weight: 5\n";
        let docs = parse_documents(text).expect("parses");
        assert_eq!(docs.len(), 2);
        let d = &docs[1];
        assert_eq!(d.value["spec"]["http"][0]["route"][0]["weight"], 5);
        assert_eq!(d.line_of("kind"), 3);
        assert_eq!(d.line_of("spec.http[0].route[0].weight"), 7);
        assert_eq!(d.line_of("spec.http[0].route[0].weight.nothing"), 7);
    }

    #[test]
    fn syntax_error_has_line() {
        let err = parse_documents("a: 1\nb: [1, 2\nc: 3\n").expect_err("broken");
        assert!(err.line >= 2, "{err:?}");
    }
}
