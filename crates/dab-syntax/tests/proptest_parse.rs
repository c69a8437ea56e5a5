//! Property tests of the blueprint parser (SPEC sections 1 and 3): whatever
//! the input, `parse` returns an AST and diagnostics instead of panicking,
//! every span lies inside the text on character boundaries, the parser only
//! ever reports E001 and E009, names in the AST are the text their spans
//! cover, recovery resumes at the next `IDENT.NewPipeline(`, leading blank
//! lines only shift spans, and other threads parsing at the same time change
//! nothing. Deep nesting is checked in a child process, because a stack
//! overflow aborts rather than panics.

#![allow(clippy::unwrap_used)]

use dab_diag::{Code, Diagnostic, FileId, Span};
use dab_syntax::ast::Blueprint;
use dab_syntax::parse;
use proptest::prelude::*;

/// Not 0, so that a span left at `Span::default()` shows up as a wrong file.
const FILE: FileId = FileId(3);

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 10_000,
        // ChaCha, the default, takes a fifth of the run time in debug builds.
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    }
}

/// Valid blueprints covering the features of SPEC section 1.
const SEEDS: &[&str] = &[
    // The SPEC seed.
    "// Ingestion\nmurron_server.NewPipeline().\n    In(MurronGRPC).\n    FilterType(MyEvent).\n    Out(MyEventQueue)\n\n// Sinks\nmy_event_worker.NewPipeline().In(MyEventQueue).\n    WithRateLimitPerSecond(1000).\n    WithSampleRate(5).\n    Out(SidecarClient)\n",
    // The short form.
    "ingest.NewPipeline().In(Stdin).FilterType(X).Out(Queue).WithRateLimit(1000).WithSampleRate(5)",
    // A Filter expression.
    "f.NewPipeline(\"prod\").In(Stdin).Filter(tags.env == \"prod\" && host != \"canary-1\" || !(pid in [1, 2]) && tags[\"k-1\"] >= \"a\").Out(Stdout)",
    // Named arguments.
    "a.NewPipeline(\"n\").In(Generator).WithRateLimit(0.5, burst = 3, on_limit = overflow, overflow = Spill).Out(Stdout, Blackhole, when_full = drop_newest)\nb.NewPipeline().In(Spill).Out(Blackhole)",
    // Comments and `;`.
    "/* block */ x.NewPipeline() // line\n  .In(Stdin) /* c */ .Out(Stdout); y.NewPipeline(\"p\").In(Stdin).FilterType(\"chat.message\", A).Out(Stdout);\n// trailing",
    // Literals: escapes, durations, negatives, lists.
    "t.NewPipeline(\"\\u{e9}\\\"\\\\\").In(Stdin).Op(250ms, 10s, -1, -2.5e3, true, [a, \"b\"]).Out(Stdout)",
];

/// Every problem with where a diagnostic points, or `None`.
fn span_problem(text: &str, span: Span) -> Option<String> {
    let (start, end) = (span.start as usize, span.end as usize);
    if span.file != FILE {
        return Some(format!("span {span:?} is in the wrong file"));
    }
    if !(start <= end && end <= text.len()) {
        return Some(format!("span {start}..{end} outside 0..{}", text.len()));
    }
    if !text.is_char_boundary(start) || !text.is_char_boundary(end) {
        return Some(format!("span {start}..{end} not on char boundaries"));
    }
    None
}

fn check_diagnostics(text: &str, diags: &[Diagnostic]) -> Result<(), TestCaseError> {
    for d in diags {
        prop_assert!(
            matches!(d.code, Code::E001 | Code::E009),
            "the parser reported {} ({}) for {text:?}",
            d.code,
            d.message
        );
        prop_assert!(!d.message.is_empty(), "empty message for {text:?}");
        let spans = std::iter::once(d.span).chain(d.labels.iter().map(|l| l.span));
        for span in spans {
            if let Some(problem) = span_problem(text, span) {
                return Err(TestCaseError::fail(format!(
                    "{problem}: {} {:?} for {text:?}",
                    d.code, d.message
                )));
            }
        }
    }
    Ok(())
}

/// The AST's spans are in range, in order, and its names are the text their
/// spans cover.
fn check_ast(text: &str, bp: &Blueprint) -> Result<(), TestCaseError> {
    prop_assert_eq!(bp.file, FILE);
    let mut previous_end = 0;
    for st in &bp.statements {
        for span in [st.span, st.head_span, st.service.span] {
            if let Some(problem) = span_problem(text, span) {
                return Err(TestCaseError::fail(format!("{problem} in {text:?}")));
            }
        }
        prop_assert!(
            st.span.start as usize >= previous_end,
            "overlap in {text:?}"
        );
        previous_end = st.span.end as usize;
        prop_assert_eq!(&text[st.service.span.range()], st.service.name.as_str());
        prop_assert_eq!(st.service.span.start, st.span.start);
        prop_assert!(st.head_span.start == st.span.start && st.head_span.end <= st.span.end);
        prop_assert!(!st.ops.is_empty(), "a statement without ops in {text:?}");
        let mut op_end = st.head_span.end;
        for op in &st.ops {
            prop_assert_eq!(&text[op.name.span.range()], op.name.name.as_str());
            prop_assert!(op.span.start >= op_end && op.span.end <= st.span.end);
            prop_assert!(text[op.span.range()].ends_with(')'));
            op_end = op.span.end;
            for arg in &op.args {
                prop_assert!(arg.span.start >= op.span.start && arg.span.end <= op.span.end);
                if let Some(key) = &arg.key {
                    prop_assert_eq!(&text[key.span.range()], key.name.as_str());
                }
            }
        }
    }
    Ok(())
}

fn check_parse(text: &str) -> Result<(Blueprint, Vec<Diagnostic>), TestCaseError> {
    let (bp, diags) = parse(FILE, text);
    check_diagnostics(text, &diags)?;
    check_ast(text, &bp)?;
    Ok((bp, diags))
}

/// Fragments that reach deep into the grammar when strung together.
#[rustfmt::skip]
const TOKENS: &[&str] = &[
    "a", "x1", "_", "svc", "NewPipeline", "In", "Out", "Filter", "FilterType", "tags", "host",
    "true", "false", "in", ".", ".", "(", "(", ")", ")", ",", "=", "==", "!=", "<", ">=", "!",
    "&&", "||", "[", "]", ";", "\"", "\"s\"", "\"\\u{d800}\"", "\"\\u{41}\"", "\\", "}", "//",
    "/*", "*/", "\n", " ", " ", "\t", "1", "-2", "1.5", "-1.5e3", "1e999", "1.0e999", "250ms",
    "-3s", "99999999999999999999", "99999999999999h", "é", "\u{feff}", "\r", "🙂", "\0",
];

fn token_soup() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(TOKENS), 0..40).prop_map(|t| t.concat())
}

/// Removes comment openers, which would legitimately hide what follows.
fn without_comment_openers(mut s: String) -> String {
    while s.contains("//") || s.contains("/*") {
        s = s.replace("//", "/ /").replace("/*", "/ *");
    }
    s
}

#[rustfmt::skip]
const GARBAGE: &[&str] = &[
    "(", ")", ".", ",", "=", ";", "\"", "/", "*", "[", "]", "!", "&", "|", "{", "}", "\\", "a",
    "In", "Out(", "NewPipeline", "x.", ".NewPipeline(", "\"open", "1", "-", "é", " ", "\n", "\t",
];

fn garbage() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(GARBAGE), 0..16)
        .prop_map(|g| without_comment_openers(g.concat()))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_parse_with_valid_spans_and_codes(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let text = String::from_utf8_lossy(&bytes);
        check_parse(&text)?;
    }

    #[test]
    fn arbitrary_strings_parse_with_valid_spans_and_codes(text in any::<String>()) {
        check_parse(&text)?;
    }

    #[test]
    fn token_soup_parses_with_valid_spans_and_codes(text in token_soup()) {
        check_parse(&text)?;
    }

    /// SPEC section 1: "After a syntax error, parsing resumes at the next
    /// `IDENT.NewPipeline(`". Garbage after a valid set must neither hide the
    /// statement after it nor the statements before the last.
    #[test]
    fn recovery_resumes_at_the_next_statement(
        seed in proptest::sample::select(SEEDS),
        junk in garbage(),
    ) {
        let (seed_bp, _) = parse(FILE, seed);
        let seed_ids: Vec<String> = seed_bp.statements.iter().map(|s| s.id()).collect();
        let tail = "zz.NewPipeline().In(Stdin).Out(Stdout)";
        let text = format!("{seed}{junk}\n{tail}");
        let (bp, diags) = check_parse(&text)?;
        let ids: Vec<String> = bp.statements.iter().map(|s| s.id()).collect();
        let kept = &seed_ids[..seed_ids.len() - 1];
        prop_assert!(ids.starts_with(kept), "earlier statements lost: {ids:?} for {text:?}");
        prop_assert_eq!(ids.last().map(String::as_str), Some("zz"), "for {:?}", text);
        let last = &bp.statements[bp.statements.len() - 1];
        let ops: Vec<&str> = last.ops.iter().map(|o| o.name.name.as_str()).collect();
        prop_assert_eq!(ops, ["In", "Out"]);
        let tail_start = text.len() - tail.len();
        prop_assert_eq!(last.span.range(), tail_start..text.len());
        prop_assert!(
            diags.iter().all(|d| (d.span.start as usize) < tail_start),
            "a diagnostic inside the valid last statement: {diags:#?} for {text:?}"
        );
    }

    /// White space and comments before the first statement change nothing but
    /// the offsets; that includes a byte order mark, which the grammar counts
    /// as white space and editors on Windows write.
    #[test]
    fn leading_blank_lines_only_shift_spans(
        text in prop_oneof![token_soup(), proptest::sample::select(SEEDS).prop_map(String::from)],
        prefix in proptest::sample::select(&["\n", "  \n\t", "// c\n", "/* c */ ", "\u{feff}"][..]),
    ) {
        let (bp, diags) = parse(FILE, &text);
        let shifted = format!("{prefix}{text}");
        let (bp2, diags2) = check_parse(&shifted)?;
        let shift = |s: Span| (s.start as usize + prefix.len(), s.end as usize + prefix.len());
        let ids: Vec<String> = bp.statements.iter().map(|s| s.id()).collect();
        let ids2: Vec<String> = bp2.statements.iter().map(|s| s.id()).collect();
        prop_assert_eq!(ids, ids2, "for {:?}", text);
        for (a, b) in bp.statements.iter().zip(&bp2.statements) {
            prop_assert_eq!(shift(a.span), (b.span.start as usize, b.span.end as usize));
        }
        let d1: Vec<_> = diags.iter().map(|d| (d.code, d.message.clone(), shift(d.span))).collect();
        let d2: Vec<_> = diags2
            .iter()
            .map(|d| (d.code, d.message.clone(), (d.span.start as usize, d.span.end as usize)))
            .collect();
        prop_assert_eq!(d1, d2, "for {:?} with prefix {:?}", text, prefix);
    }
}

#[test]
fn seeds_are_valid() {
    for seed in SEEDS {
        let (bp, diags) = parse(FILE, seed);
        assert!(diags.is_empty(), "{seed:?}: {diags:#?}");
        assert!(!bp.statements.is_empty(), "{seed:?}");
    }
}

/// A parse gives the same diagnostics whatever other threads parse at the
/// same time (tests run in parallel; `dab run` reloads while it runs).
#[test]
fn parsing_is_deterministic_across_threads() {
    // Short, so that many parses overlap; each takes the error path.
    const INPUTS: [&str; 3] = ["host||x", "a.NewPipeline().In(", "x.NewPipeline(1)"];
    let alone: Vec<Vec<Diagnostic>> = INPUTS.iter().map(|t| parse(FILE, t).1).collect();
    let threads: Vec<_> = (0..2)
        .map(|offset| {
            let alone = alone.clone();
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    let k = (i + offset) % INPUTS.len();
                    let (_, diags) = parse(FILE, INPUTS[k]);
                    if diags != alone[k] {
                        return Some((INPUTS[k], diags, alone[k].clone()));
                    }
                }
                None
            })
        })
        .collect();
    for t in threads {
        if let Some((input, concurrent, alone)) = t.join().unwrap() {
            panic!("{input:?} parsed beside another thread: {concurrent:#?}\nalone: {alone:#?}");
        }
    }
}

/// Nesting depths to try: every depth up to 512, then sparser up to 100,000.
fn depths() -> impl Iterator<Item = usize> {
    (1..=512)
        .chain((600..=5_000).step_by(100))
        .chain([7_000, 10_000, 14_000, 20_000, 50_000, 100_000])
}

/// Ways to nest an expression: (opening, innermost, closing).
const NESTINGS: [(&str, &str, &str); 5] = [
    ("(", "host == \"x\"", ")"),
    ("[", "x", "]"),
    ("!", "host == \"x\"", ""),
    ("host == \"x\" && ", "pid > 1", ""),
    ("(", "x", ""),
];

fn nested(shape: (&str, &str, &str), n: usize) -> String {
    let (open, inner, close) = shape;
    format!(
        "a.NewPipeline().In(Stdin).Filter({}{inner}{}).Out(Stdout)",
        open.repeat(n),
        close.repeat(n)
    )
}

/// Parses one shape of `NESTINGS` (index in `DAB_NESTING_CHILD`) at every
/// depth, in this thread's 2 MiB stack like any test. Runs only as a child
/// of `deep_nesting_never_overflows_the_stack`.
#[test]
#[ignore = "run in a child process by deep_nesting_never_overflows_the_stack"]
fn deep_nesting_child() {
    let Some(shape) = std::env::var("DAB_NESTING_CHILD")
        .ok()
        .and_then(|i| i.parse::<usize>().ok())
        .and_then(|i| NESTINGS.get(i))
    else {
        return;
    };
    for n in depths() {
        // Printed first: if the stack overflows, the last line names the input.
        eprintln!("parsing depth {n}");
        let (bp, diags) = parse(FILE, &nested(*shape, n));
        // Either parsed, or refused with a diagnostic: never silently empty.
        assert!(
            bp.statements.len() == 1 || diags.iter().any(|d| d.code == Code::E001),
            "depth {n}: no statement and no E001"
        );
    }
    eprintln!("parsed every depth");
}

/// SPEC section 3: "any byte string given to the parser ... yields a
/// diagnostic". A stack overflow aborts the process instead of panicking, so
/// each shape runs in a child process and this test reads how it ended.
#[test]
fn deep_nesting_never_overflows_the_stack() {
    let exe = std::env::current_exe().unwrap();
    let mut failures = Vec::new();
    for (i, shape) in NESTINGS.iter().enumerate() {
        let out = std::process::Command::new(&exe)
            .args(["--exact", "deep_nesting_child", "--ignored", "--nocapture"])
            .env("DAB_NESTING_CHILD", i.to_string())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rfind(|l| l.starts_with("parsing depth ") || *l == "parsed every depth")
            .unwrap_or("");
        if !(out.status.success() && last == "parsed every depth") {
            let depth = last
                .trim_start_matches("parsing depth ")
                .parse()
                .unwrap_or(0);
            let why = stderr
                .lines()
                .find(|l| l.contains("overflow") || l.contains("panicked"))
                .unwrap_or("");
            let example = nested(*shape, depth.min(3));
            failures.push(format!(
                "{example:?} nested {depth} deep: {} ({why})",
                out.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
