//! Bad inputs tried on the YAML loader, beyond `loader_props.rs` (single-line text, one
//! seed): any bytes, multi-line and multi-document text, the repository's own examples
//! (every kind they hold) with lines edited, moved, re-indented or repeated, and nesting
//! and alias expansion meant to exhaust the parser. Never a panic, and every problem names
//! the file and a line that is in the text.

use proptest::prelude::*;

const SEEDS: [&str; 5] = [
    include_str!("../../../examples/sidecar/mesh.yaml"),
    include_str!("../../../examples/istio-samples/security-tasks.yaml"),
    include_str!("../../../examples/control/policies.yaml"),
    include_str!("../../../examples/istio-samples/destination-rule-all.yaml"),
    include_str!("../../../examples/istio-samples/virtual-service-ratings-test-abort.yaml"),
];

const FILE: &str = "fuzz.yaml";

/// Load `text` and check what every problem and resource says about where it is.
fn load_checked(text: &str) -> Result<spar_model::Loaded, TestCaseError> {
    let loaded = spar_model::load_str(FILE, text);
    // A parser may point just past the last line (an unexpected end of the stream). YAML
    // breaks lines at LF, CRLF and a lone CR (as editors do).
    let last = text.replace("\r\n", "\n").split(['\n', '\r']).count() as u64 + 1;
    for p in &loaded.problems {
        prop_assert_eq!(&p.file, FILE);
        prop_assert!(
            (1..=last).contains(&p.line),
            "line {} of {}: {}",
            p.line,
            last - 1,
            p
        );
    }
    for (r, origin) in &loaded.resources {
        prop_assert!(
            (1..=last).contains(&origin.line),
            "{} at line {}",
            r.key(),
            origin.line
        );
    }
    Ok(loaded)
}

/// A seed with its lines edited: a piece of a line replaced, a line moved, re-indented,
/// repeated or dropped, or a document separator put in.
fn mutated_seed() -> impl Strategy<Value = String> {
    (
        prop::sample::select(SEEDS.to_vec()),
        prop::collection::vec(
            (
                0u8..6,
                any::<prop::sample::Index>(),
                any::<prop::sample::Index>(),
                "[ :\\-\\[\\]{}a-zA-Z0-9\"'&*!|>#%@`,?.]{0,10}",
            ),
            1..4,
        ),
    )
        .prop_map(|(seed, edits)| {
            let mut lines: Vec<String> = seed.lines().map(str::to_string).collect();
            for (op, a, b, text) in edits {
                if lines.is_empty() {
                    lines.push(text);
                    continue;
                }
                let i = a.index(lines.len());
                let j = b.index(lines.len());
                match op {
                    0 => {
                        // Replace a piece of line i.
                        let l = &mut lines[i];
                        let mut at = j.min(l.len());
                        while !l.is_char_boundary(at) {
                            at -= 1;
                        }
                        let mut end = (at + text.len() % 5).min(l.len());
                        while !l.is_char_boundary(end) {
                            end -= 1;
                        }
                        l.replace_range(at..end, &text);
                    }
                    1 => {
                        let l = lines.remove(i);
                        lines.insert(j.min(lines.len()), l);
                    }
                    2 => lines[i] = format!("{}{}", " ".repeat(j % 5), lines[i].trim_start()),
                    3 => {
                        let l = lines[i].clone();
                        lines.insert(j, l);
                    }
                    4 => {
                        lines.remove(i);
                    }
                    _ => lines.insert(
                        i,
                        if j % 2 == 0 {
                            "---".into()
                        } else {
                            "...".into()
                        },
                    ),
                }
            }
            lines.join("\n")
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any bytes a file might hold (read as the loader's callers read them: lossily).
    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        load_checked(&String::from_utf8_lossy(&bytes))?;
    }

    /// Multi-line text of any characters, with YAML's structure characters common.
    #[test]
    fn arbitrary_lines(lines in prop::collection::vec(prop_oneof![
        ".{0,40}",
        "[ \\t:\\-\\[\\]{}&*!|>'\"#%@,?]{0,12}[a-z0-9]{0,6}",
        Just("---".to_string()),
    ], 0..30)) {
        load_checked(&lines.join("\n"))?;
    }

    /// The examples, edited: no panic, every problem and resource located in the text.
    #[test]
    fn mutated_examples(text in mutated_seed()) {
        load_checked(&text)?;
    }
}

proptest! {
    // Each case loads every example: a few orders are enough.
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// The examples, concatenated in any order: every resource of each still loads, each at
    /// a line where its document starts, and nothing is a problem but a duplicate.
    #[test]
    fn examples_concatenated(order in Just((0..SEEDS.len()).collect::<Vec<_>>()).prop_shuffle()) {
        let text = order.iter().map(|&i| SEEDS[i].trim_end()).collect::<Vec<_>>().join("\n---\n");
        let loaded = load_checked(&text)?;
        prop_assert_eq!(loaded.resources.len(), *SEED_RESOURCES);
        let lines: Vec<&str> = text.split('\n').collect();
        for (r, origin) in &loaded.resources {
            let at = lines[origin.line as usize - 1];
            prop_assert!(!at.trim().is_empty() && !at.starts_with("---"), "{} starts at {:?}", r.key(), at);
        }
        for p in loaded.errors() {
            prop_assert!(p.message.contains("is already defined at"), "{}", p);
        }
    }
}

/// How many resources the examples hold, each loaded alone.
static SEED_RESOURCES: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    SEEDS
        .iter()
        .map(|s| spar_model::load_str("seed.yaml", s).resources.len())
        .sum()
});

#[test]
fn seeds_load_without_errors() {
    for s in SEEDS {
        let l = spar_model::load_str("seed.yaml", s);
        assert!(!l.has_errors(), "{:?}", l.problems);
        assert!(!l.resources.is_empty());
    }
}

/// Deep nesting is a problem with a line, not a stack overflow: this runs on a test
/// thread's 2 MiB stack, as the control plane's workers do. Depth 53 overflowed it in a
/// debug build while the parser's own limit was 64; the loader now stops at 32 (no
/// Kubernetes or Istio resource comes near).
#[test]
fn deep_nesting_is_refused_not_a_crash() {
    for depth in [10, 32, 33, 53, 64, 65, 1_000, 100_000] {
        for (open, close) in [("[", "]"), ("{a: ", "}"), ("- ", "")] {
            let text = format!("{}x{}", open.repeat(depth), close.repeat(depth));
            let l = spar_model::load_str(FILE, &text);
            let refused = l
                .problems
                .iter()
                .any(|p| p.message.contains("invalid YAML") && p.line == 1);
            assert_eq!(refused, depth > 32, "{depth} x {open:?}: {:?}", l.problems);
        }
    }
    // Aliases do not nest deeper than their text: each replay counts its depth.
    let mut text = format!("a0: &a0 {}x{}\n", "[".repeat(10), "]".repeat(10));
    for i in 1..10 {
        let (open, close) = ("[".repeat(10), "]".repeat(10));
        text.push_str(&format!("a{i}: &a{i} {open}*a{}{close}\n", i - 1));
    }
    let l = spar_model::load_str(FILE, &text);
    assert!(l.has_errors(), "{:?}", l.problems);
}

/// Aliases that expand to billions of nodes ("billion laughs") are refused quickly, not
/// expanded into memory.
#[test]
fn alias_bombs_are_refused_quickly() {
    let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    let mut prev = 'a';
    for c in 'b'..='j' {
        text.push_str(&format!(
            "{c}: &{c} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        ));
        prev = c;
    }
    let start = std::time::Instant::now();
    let l = spar_model::load_str(FILE, &text);
    // About 5 s in a debug build (the parser replays a million events first); the bound
    // is loose so a busy CI machine does not fail it.
    assert!(
        start.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
    assert!(l.has_errors(), "10^10 nodes are not a config");
}
