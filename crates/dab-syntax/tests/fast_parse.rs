//! The hand-written parser (`src/fast.rs`) against pest: `parse` and
//! `parse_pest_only` must give the same AST, spans included, and the same
//! diagnostics, on valid statements written with every kind of white space
//! and comment between tokens, on those statements broken by an edit, and
//! on every blueprint in the repository and the conformance suite.

#![allow(clippy::unwrap_used)]

use dab_diag::FileId;
use dab_syntax::{parse, parse_fast_only, parse_pest_only};
use proptest::prelude::*;

const FILE: FileId = FileId(2);

fn same(text: &str) -> Result<(), TestCaseError> {
    let fast = format!("{:?}", parse(FILE, text));
    let pest = format!("{:?}", parse_pest_only(FILE, text));
    prop_assert_eq!(fast, pest, "for {:?}", text);
    Ok(())
}

/// What may stand between two tokens: pest's implicit skip.
fn trivia() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        6 => Just(String::new()),
        3 => Just(" ".to_owned()),
        1 => Just("\n  ".to_owned()),
        1 => Just("\t\r\n".to_owned()),
        1 => Just("\u{feff}".to_owned()),
        1 => Just("// c ) ( \"\n".to_owned()),
        1 => Just("/* ) \n */".to_owned()),
        1 => Just("/**/".to_owned()),
    ];
    proptest::collection::vec(piece, 0..3).prop_map(|p| p.concat())
}

/// Tokens joined with trivia between each two.
fn joined(tokens: Vec<String>) -> impl Strategy<Value = String> {
    let n = tokens.len();
    proptest::collection::vec(trivia(), n).prop_map(move |gaps| {
        let mut out = String::new();
        for (t, g) in tokens.iter().zip(gaps) {
            out.push_str(t);
            out.push_str(&g);
        }
        out
    })
}

/// Items with commas between them, and one after when `trailing`.
fn comma_separated(items: &[Vec<String>], trailing: bool) -> Vec<String> {
    let mut v = Vec::new();
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            v.push(",".to_owned());
        }
        v.extend(it.iter().cloned());
    }
    if trailing && !items.is_empty() {
        v.push(",".to_owned());
    }
    v
}

fn leaf() -> impl Strategy<Value = Vec<String>> {
    let one = |s: &str| vec![s.to_owned()];
    prop_oneof![
        Just(one("x")),
        Just(one("tags")),
        Just(vec!["tags".into(), ".".into(), "env".into()]),
        Just(vec![
            "tags".into(),
            "[".into(),
            "\"k-1\"".into(),
            "]".into()
        ]),
        Just(vec![
            "a".into(),
            ".".into(),
            "b".into(),
            ".".into(),
            "c".into()
        ]),
        Just(one("\"s\"")),
        Just(one("\"\\u{e9}\\n\\t\\\"\\\\\"")),
        Just(one("\"\\u{d800}\"")),
        Just(one("\"\"")),
        Just(one("1")),
        Just(one("-2")),
        Just(one("99999999999999999999")),
        Just(one("1.5")),
        Just(one("-2.5e3")),
        Just(one("1.0E+2")),
        Just(one("1.0e999")),
        Just(one("250ms")),
        Just(one("10s")),
        Just(one("5m")),
        Just(one("-3h")),
        Just(one("99999999999999h")),
        Just(one("true")),
        Just(one("false")),
        Just(one("truex")),
        Just(one("in_x")),
        Just(one("_y")),
    ]
}

fn expr() -> impl Strategy<Value = Vec<String>> {
    leaf().prop_recursive(4, 24, 3, |inner| {
        let cmp = prop_oneof![
            Just("=="),
            Just("!="),
            Just("<"),
            Just("<="),
            Just(">"),
            Just(">="),
            Just("in")
        ];
        prop_oneof![
            (inner.clone(), cmp, inner.clone()).prop_map(|(a, op, b)| {
                let mut v = a;
                v.push(op.to_owned());
                v.extend(b);
                v
            }),
            (
                inner.clone(),
                prop_oneof![Just("&&"), Just("||")],
                inner.clone()
            )
                .prop_map(|(a, op, b)| {
                    let mut v = a;
                    v.push(op.to_owned());
                    v.extend(b);
                    v
                }),
            inner.clone().prop_map(|a| {
                let mut v = vec!["!".to_owned()];
                v.extend(a);
                v
            }),
            inner.clone().prop_map(|a| {
                let mut v = vec!["(".to_owned()];
                v.extend(a);
                v.push(")".to_owned());
                v
            }),
            (
                proptest::collection::vec(inner.clone(), 0..3),
                any::<bool>()
            )
                .prop_map(|(items, comma)| {
                    let mut v = vec!["[".to_owned()];
                    v.extend(comma_separated(&items, comma));
                    v.push("]".to_owned());
                    v
                }),
            // A call as a value: `Count()`, `Sum(fields.x)`, `P(x, 0.5,)`.
            (
                prop_oneof![Just("Count"), Just("Sum"), Just("x")],
                proptest::collection::vec(inner, 0..3),
                any::<bool>()
            )
                .prop_map(|(name, items, comma)| {
                    let mut v = vec![name.to_owned(), "(".to_owned()];
                    v.extend(comma_separated(&items, comma));
                    v.push(")".to_owned());
                    v
                }),
        ]
    })
}

fn arg() -> impl Strategy<Value = Vec<String>> {
    (
        prop_oneof![Just(None), Just(Some("burst")), Just(Some("on_limit"))],
        expr(),
    )
        .prop_map(|(key, e)| {
            let mut v = Vec::new();
            if let Some(k) = key {
                v.push(k.to_owned());
                v.push("=".to_owned());
            }
            v.extend(e);
            v
        })
}

fn op() -> impl Strategy<Value = Vec<String>> {
    (
        prop_oneof![Just("In"), Just("Filter"), Just("Out"), Just("Op_2")],
        proptest::collection::vec(arg(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(name, args, comma)| {
            let mut v = vec![".".to_owned(), name.to_owned(), "(".to_owned()];
            v.extend(comma_separated(&args, comma));
            v.push(")".to_owned());
            v
        })
}

fn statement() -> impl Strategy<Value = Vec<String>> {
    (
        prop_oneof![Just(None), Just(Some("\"p-1\"")), Just(Some("\"\""))],
        proptest::collection::vec(op(), 1..4),
        any::<bool>(),
    )
        .prop_map(|(name, ops, semi)| {
            let mut v: Vec<String> = ["svc", ".", "NewPipeline", "("]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            if let Some(n) = name {
                v.push(n.to_owned());
            }
            v.push(")".to_owned());
            for o in ops {
                v.extend(o);
            }
            if semi {
                v.push(";".to_owned());
            }
            v
        })
}

fn file() -> impl Strategy<Value = String> {
    (trivia(), proptest::collection::vec(statement(), 1..3)).prop_flat_map(|(lead, stmts)| {
        let tokens: Vec<String> = stmts.into_iter().flatten().collect();
        joined(tokens).prop_map(move |body| format!("{lead}{body}"))
    })
}

#[rustfmt::skip]
const EDITS: &[&str] = &[
    "", "(", ")", ".", ",", "=", "==", "!", "!=", "&&", "|", "\"", "\\", "[", "]", ";", "/*", "//",
    "x", "1", "-", "e", "ms", "in", "true", " ", "\n", "é", "\u{feff}", "{", "}",
];

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3_000,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    #[test]
    fn valid_statements_parse_the_same(text in file()) {
        same(&text)?;
        // And pest is not what parsed them: the fast path covers valid text
        // (a statement pest rejects would be E001).
        let (_, diags) = parse_pest_only(FILE, &text);
        if !diags.iter().any(|d| d.code == dab_diag::Code::E001) {
            let fast = parse_fast_only(FILE, &text).map(|r| format!("{r:?}"));
            let pest = format!("{:?}", parse_pest_only(FILE, &text));
            prop_assert_eq!(fast, Some(pest), "for {:?}", text);
        }
    }

    #[test]
    fn edited_statements_parse_the_same(
        text in file(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0..3usize, proptest::sample::select(EDITS)), 1..3),
    ) {
        let mut text = text;
        for (at, cut, insert) in edits {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            let mut j = (i + cut).min(text.len());
            while !text.is_char_boundary(j) {
                j += 1;
            }
            text.replace_range(i..j, insert);
        }
        same(&text)?;
    }
}

/// Every `*.dab` under `dir`.
fn dab_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "target" || n == ".git") {
                continue;
            }
            dab_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "dab") {
            out.push(p);
        }
    }
}

#[test]
fn every_blueprint_in_the_repository_parses_the_same() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    dab_files(&root, &mut files);
    dab_files(std::path::Path::new("/work/shared/conformance"), &mut files);
    assert!(files.len() > 20, "found only {} blueprints", files.len());
    for f in files {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        same(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let (_, diags) = parse_pest_only(FILE, &text);
        if !diags.iter().any(|d| d.code == dab_diag::Code::E001) {
            assert!(
                parse_fast_only(FILE, &text).is_some(),
                "{}: valid, but the fast path gave up",
                f.display()
            );
        }
    }
}

#[test]
fn known_corners_parse_the_same() {
    for text in [
        "a.NewPipeline().Filter(x || y && z == 1 ).Out(B)",
        "a.NewPipeline().Filter(x || y ).Out(B)",
        "a.NewPipeline().Filter( tags . k  [ \"x\" ] == 1 , k = v  ).Out(B)",
        "a.NewPipeline().Filter(! ! x in [1, 2,] ).Out(B) ;",
        "a.NewPipeline().Op(1.5e, 5msx, 1., k = = 1)",
        "a.NewPipeline().Op(x.in)",
        "a.NewPipeline().Op(\"\\u{1234567}\")",
        "a.NewPipeline().Op(k == 1, k=1)",
        "a.NewPipeline().Op(a) /* open",
        "a.NewPipeline() . Op ( ) // end",
        "\u{feff}a.NewPipeline().In(X)",
        "junk a.NewPipeline().In(X)",
    ] {
        same(text).unwrap();
    }
}
