//! Property tests: the loader never panics, whatever bytes it is given, and a valid document
//! still loads after arbitrary edits elsewhere are reported, not crashed on.

use proptest::prelude::*;

const SEED: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n  http:\n  - match:\n    - headers:\n        end-user: {exact: jason}\n    fault: {delay: {fixedDelay: 7s, percentage: {value: 100}}}\n    route:\n    - destination: {host: reviews, subset: v2}\n      weight: 100\n";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(s in ".{0,400}") {
        let _ = spar_model::load_str("fuzz.yaml", &s);
    }

    #[test]
    fn yaml_shaped_text_never_panics(lines in prop::collection::vec("[ -]{0,4}[a-zA-Z]{0,8}: ?[\\[\\]{}a-z0-9.*:-]{0,10}", 0..30)) {
        let _ = spar_model::load_str("fuzz.yaml", &lines.join("\n"));
    }

    #[test]
    fn mutated_valid_document_never_panics(pos in 0usize..400, cut in 0usize..20, insert in "[ :\\-\\[\\]{}a-z0-9\n]{0,12}") {
        let mut text = SEED.to_string();
        let pos = pos.min(text.len());
        let end = (pos + cut).min(text.len());
        if text.is_char_boundary(pos) && text.is_char_boundary(end) {
            text.replace_range(pos..end, &insert);
        }
        let loaded = spar_model::load_str("fuzz.yaml", &text);
        for p in &loaded.problems {
            // Every problem is located in the file.
            prop_assert!(p.line >= 1 || p.file != "fuzz.yaml");
        }
    }
}

#[test]
fn seed_is_valid() {
    let l = spar_model::load_str("seed.yaml", SEED);
    assert!(l.problems.is_empty(), "{:?}", l.problems);
}
