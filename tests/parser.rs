//! Behaviour of the DSL helpers in `metalor::parser`, rule by rule, against
//! the upstream 0.3.2 contract (plus the deliberate non-ASCII fix).

use metalor::parser::{
    interpolate_braced_variables, parse_exec_array, significant_lines, valid_identifier,
    SignificantLine,
};
use std::collections::BTreeMap;

fn lines(source: &str) -> Vec<(usize, &str)> {
    significant_lines(source)
        .map(|line| (line.number, line.text))
        .collect()
}

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn interpolate(value: &str, pairs: &[(&str, &str)]) -> String {
    interpolate_braced_variables(value, &vars(pairs), "ARG").unwrap()
}

fn interpolate_error(value: &str, pairs: &[(&str, &str)], kind: &str) -> String {
    let error = interpolate_braced_variables(value, &vars(pairs), kind).unwrap_err();
    format!("{error:#}")
}

fn exec_error(raw: &str) -> anyhow::Error {
    parse_exec_array(raw).unwrap_err()
}

// ---- significant_lines -----------------------------------------------------

#[test]
fn significant_lines_matches_the_verified_upstream_example() {
    let source = "a\r\n  # c\r\n\tb # not comment\n\n  #x\nlast";
    assert_eq!(
        lines(source),
        vec![(1, "a"), (3, "b # not comment"), (6, "last")]
    );
}

#[test]
fn significant_lines_yields_struct_values_borrowing_the_source() {
    let source = "  FROM base  ";
    let collected: Vec<SignificantLine<'_>> = significant_lines(source).collect();
    assert_eq!(
        collected,
        vec![SignificantLine {
            number: 1,
            text: "FROM base"
        }]
    );
    let offset = collected[0].text.as_ptr() as usize - source.as_ptr() as usize;
    assert_eq!(offset, 2, "text must be a slice of the source, not a copy");
}

#[test]
fn significant_lines_strips_crlf_endings() {
    assert_eq!(lines("one\r\ntwo\r\n"), vec![(1, "one"), (2, "two")]);
}

#[test]
fn significant_lines_does_not_split_on_a_bare_carriage_return() {
    assert_eq!(
        lines("one\rtwo\nthree"),
        vec![(1, "one\rtwo"), (2, "three")]
    );
}

#[test]
fn significant_lines_keeps_a_hash_after_the_first_character() {
    assert_eq!(
        lines("RUN echo #1\nA#B\n# whole-line comment"),
        vec![(1, "RUN echo #1"), (2, "A#B")]
    );
}

#[test]
fn significant_lines_treats_indented_hash_as_comment() {
    assert_eq!(lines("\t  # indented\nx"), vec![(2, "x")]);
}

#[test]
fn significant_lines_counts_blank_and_comment_lines() {
    let source = "\n\n# one\n   \n\t\nvalue\n#two\nother";
    assert_eq!(lines(source), vec![(6, "value"), (8, "other")]);
}

#[test]
fn significant_lines_ignores_a_final_newline_and_empty_input() {
    assert_eq!(lines("x\n"), vec![(1, "x")]);
    assert!(lines("").is_empty());
    assert!(lines("\n\n").is_empty());
}

#[test]
fn significant_lines_trims_unicode_whitespace() {
    // U+3000 IDEOGRAPHIC SPACE and U+00A0 NO-BREAK SPACE are whitespace to
    // `str::trim`.
    assert_eq!(lines("\u{3000}\u{a0}é x\u{a0}"), vec![(1, "é x")]);
}

#[test]
fn significant_lines_has_no_continuation_or_quoting() {
    assert_eq!(
        lines("RUN a \\\n  b\n\"# quoted\""),
        vec![(1, "RUN a \\"), (2, "b"), (3, "\"# quoted\"")]
    );
}

// ---- valid_identifier ------------------------------------------------------

#[test]
fn valid_identifier_accepts_shell_style_names() {
    for name in ["_", "_1", "a", "Z", "CHANNEL_2", "snake_case", "A1b2"] {
        assert!(valid_identifier(name), "{name:?} should be valid");
    }
}

#[test]
fn valid_identifier_rejects_everything_else() {
    for name in [
        "", "1", "2CHANNEL", "a-b", "é", "aé", "a b", " a", "a.b", "a$",
    ] {
        assert!(!valid_identifier(name), "{name:?} should be invalid");
    }
}

// ---- parse_exec_array ------------------------------------------------------

#[test]
fn exec_array_parses_strings_with_surrounding_whitespace() {
    assert_eq!(
        parse_exec_array("  \n[ \"clang\" ,\n \"-c\", \"main.c\" ]\t ").unwrap(),
        vec!["clang", "-c", "main.c"]
    );
}

#[test]
fn exec_array_decodes_json_escapes() {
    assert_eq!(
        parse_exec_array(r#"["\u0041\n", "tab\there", "q\"uote", "é"]"#).unwrap(),
        vec!["A\n", "tab\there", "q\"uote", "é"]
    );
}

#[test]
fn exec_array_allows_empty_string_elements() {
    assert_eq!(parse_exec_array(r#"[""]"#).unwrap(), vec![String::new()]);
}

#[test]
fn exec_array_requires_json_array_syntax() {
    for raw in [r#""clang -c main.c""#, "clang -c main.c", "", "   ", "{}"] {
        let error = exec_error(raw);
        assert_eq!(
            error.to_string(),
            "exec-form arrays must use JSON array syntax",
            "input {raw:?}"
        );
    }
}

#[test]
fn exec_array_rejects_an_empty_array() {
    for raw in ["[]", "[ \n ]"] {
        assert_eq!(
            format!("{:#}", exec_error(raw)),
            "exec-form arrays must not be empty"
        );
    }
}

#[test]
fn exec_array_reports_serde_errors_under_a_fixed_message() {
    let cases = [
        r#"["a",]"#,
        r#"["a"] x"#,
        r#"["a", 1]"#,
        r#"[null]"#,
        r#"[["nested"]]"#,
        r#"[true]"#,
        r#"["unterminated"#,
    ];
    for raw in cases {
        let error = exec_error(raw);
        assert_eq!(
            error.to_string(),
            "invalid exec-form array",
            "input {raw:?}"
        );
        let chain = format!("{error:#}");
        let cause = error
            .source()
            .expect("serde error as the cause")
            .to_string();
        assert!(!cause.is_empty());
        assert_eq!(chain, format!("invalid exec-form array: {cause}"));
    }
}

#[test]
fn exec_array_serde_cause_names_the_problem() {
    let chain = format!("{:#}", exec_error(r#"["a"] x"#));
    assert!(chain.contains("trailing characters"), "{chain}");
    let chain = format!("{:#}", exec_error(r#"["a", 1]"#));
    assert!(chain.contains("expected a string"), "{chain}");
}

// ---- interpolate_braced_variables -----------------------------------------

#[test]
fn interpolation_replaces_each_braced_name() {
    assert_eq!(
        interpolate(
            "${CHANNEL}/${PROFILE}-${CHANNEL}",
            &[("CHANNEL", "stable"), ("PROFILE", "release")]
        ),
        "stable/release-stable"
    );
}

#[test]
fn interpolation_without_expansions_returns_the_input() {
    assert_eq!(interpolate("plain text", &[]), "plain text");
    assert_eq!(interpolate("", &[]), "");
}

#[test]
fn interpolation_keeps_dollar_forms_that_are_not_braced() {
    assert_eq!(interpolate("$A and $", &[("A", "x")]), "$A and $");
    assert_eq!(interpolate("cost: $5 $", &[]), "cost: $5 $");
}

#[test]
fn interpolation_has_no_double_dollar_escape() {
    assert_eq!(interpolate("$${A}", &[("A", "x")]), "$x");
}

#[test]
fn interpolation_keeps_a_stray_closing_brace() {
    assert_eq!(interpolate("a}b${A}}", &[("A", "x")]), "a}bx}");
}

#[test]
fn interpolation_braces_do_not_nest() {
    // The name runs to the first `}`: `A${B`, then a literal `}` follows.
    assert_eq!(interpolate("${A${B}}", &[("A${B", "v")]), "v}");
    assert_eq!(
        interpolate_error("${A${B}}", &[("A", "a"), ("B", "b")], "ARG"),
        "invalid ARG reference A${B"
    );
}

#[test]
fn interpolation_reports_an_unterminated_expansion() {
    for value in ["mode=${CHANNEL", "${", "ok ${A} then ${"] {
        assert_eq!(
            interpolate_error(value, &[("CHANNEL", "stable"), ("A", "x")], "ARG"),
            "unterminated ${NAME} expansion",
            "input {value:?}"
        );
    }
}

#[test]
fn interpolation_reports_undefined_identifiers_with_the_kind() {
    assert_eq!(
        interpolate_error("mode=${CHANNEL}", &[], "ARG"),
        "undefined ARG CHANNEL"
    );
    assert_eq!(
        interpolate_error("${HOME}", &[("OTHER", "x")], "ENV variable"),
        "undefined ENV variable HOME"
    );
}

#[test]
fn interpolation_reports_invalid_names_with_the_kind() {
    assert_eq!(
        interpolate_error("mode=${bad-name}", &[], "ARG"),
        "invalid ARG reference bad-name"
    );
    assert_eq!(
        interpolate_error("${}", &[], "ENV"),
        "invalid ENV reference "
    );
    assert_eq!(
        interpolate_error("${ A }", &[("A", "x")], "ARG"),
        "invalid ARG reference  A "
    );
}

#[test]
fn interpolation_lets_the_map_whitelist_non_identifier_names() {
    assert_eq!(
        interpolate("mode=${bad-name}", &[("bad-name", "mapped")]),
        "mode=mapped"
    );
    assert_eq!(interpolate("[${}]", &[("", "empty")]), "[empty]");
    assert_eq!(interpolate("[${ A }]", &[(" A ", "spaced")]), "[spaced]");
}

#[test]
fn interpolation_kind_only_affects_messages() {
    let values = vars(&[("A", "x")]);
    for kind in ["ARG", "ENV", ""] {
        assert_eq!(
            interpolate_braced_variables("<${A}>", &values, kind).unwrap(),
            "<x>"
        );
    }
}

#[test]
fn interpolation_does_not_expand_substituted_values() {
    assert_eq!(interpolate("${A}", &[("A", "${B}"), ("B", "no")]), "${B}");
    assert_eq!(interpolate("${A}", &[("A", "${")]), "${");
}

#[test]
fn interpolation_keeps_non_ascii_text_intact() {
    // Deliberate fix: upstream turned this into "Ã©xÃ¼".
    assert_eq!(interpolate("é${A}ü", &[("A", "x")]), "éxü");
    assert_eq!(
        interpolate("日本${A}語 — ${B}🚀", &[("A", "ß"), ("B", "ok")]),
        "日本ß語 — ok🚀"
    );
}

#[test]
fn interpolation_looks_up_non_ascii_names_exactly() {
    assert_eq!(interpolate("${é}", &[("é", "accent")]), "accent");
    assert_eq!(
        interpolate_error("${é}", &[], "ARG"),
        "invalid ARG reference é"
    );
}

#[test]
fn parser_functions_keep_upstream_signatures_and_root_exports() {
    // Upstream callers coerce these to fn pointers and import them from the
    // crate root as well as from `metalor::parser`.
    let parse: fn(&str) -> anyhow::Result<Vec<String>> = metalor::parse_exec_array;
    let interpolate: fn(&str, &BTreeMap<String, String>, &str) -> anyhow::Result<String> =
        metalor::interpolate_braced_variables;
    let identifier: fn(&str) -> bool = metalor::valid_identifier;
    assert_eq!(parse("[\"x\"]").unwrap(), vec!["x"]);
    assert_eq!(
        interpolate("${A}", &vars(&[("A", "1")]), "ARG").unwrap(),
        "1"
    );
    assert!(identifier("A"));
    let first: Option<metalor::SignificantLine<'_>> = metalor::significant_lines("x").next();
    assert_eq!(first.map(|line| line.number), Some(1));
}
