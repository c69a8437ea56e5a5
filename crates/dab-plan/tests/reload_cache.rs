//! A reload checks its set with the parse of unchanged files taken from a
//! `ParseCache` (`check_set_cached`). Whatever the edit, the result must be
//! what a fresh `check_set` of the same texts gives: the same plan, the
//! same diagnostics at the same places. Set-level checks (duplicate ids
//! across files, cycles through queues in other files, unknown types) must
//! see the whole set, cached files included. And the cache must really be
//! used: an edit to one file parses that file only, and checks only that
//! file's statements one by one; a change to the bindings checks them all.

#![allow(clippy::unwrap_used)]

use dab_plan::{check_set, check_set_cached, CheckedSet, ParseCache, SourceSet};
use proptest::prelude::*;

fn env(_: &str) -> Option<String> {
    None
}

/// Q0 to Q10 bound, so that a queue written at the end of the chain and read
/// by nobody is still a known name.
const BINDINGS: &str = "types:\n  A: {}\n  B: {}\nqueues:\n  Q0: { kind: memory }\n  Q8: { kind: memory }\n  Q10: { kind: memory }\n";

fn file(i: usize, variant: usize) -> String {
    let next = i + 1;
    match variant {
        // Reads the queue the previous file writes, writes the next one.
        0 => format!(
            "s{i}.NewPipeline(\"p\").In(Q{i}).FilterType(A).Out(Q{next})\n\
             s{i}.NewPipeline(\"q\").In(Stdin).Filter(tags.k == \"v\" && !(pid in [1, 2])).Out(Q{i})\n"
        ),
        // A different stage: rebuilt, still valid.
        1 => format!(
            "s{i}.NewPipeline(\"p\").In(Q{i}).FilterType(B).WithSampleRate(2).Out(Q{next})\n\
             s{i}.NewPipeline(\"q\").In(Stdin).Out(Q{i})\n"
        ),
        // A syntax error in one statement; the other still parses.
        2 => format!(
            "s{i}.NewPipeline(\"p\").In(Q{i}).FilterType(A.Out(Q{next})\n\
             s{i}.NewPipeline(\"q\").In(Stdin).Out(Q{i})\n"
        ),
        // The id of file 0's first pipeline again (E013 across files).
        3 => format!("s0.NewPipeline(\"p\").In(Stdin).Out(Q{i})\n"),
        // A cycle back to file 0 (E008 across files) and an unknown type (E014).
        4 => format!("s{i}.NewPipeline(\"p\").In(Q{i}).FilterType(C).Out(Q0)\n"),
        // An unknown op and an out-of-range literal.
        _ => format!("s{i}.NewPipeline(\"p\").In(Q{i}).Filtr(x).WithSampleRate(99999999999999999999).Out(Stdout)\n"),
    }
}

fn source(files: &[(usize, usize)]) -> SourceSet {
    SourceSet {
        blueprints: files
            .iter()
            .map(|&(i, v)| (format!("f{i:02}.dab"), file(i, v)))
            .collect(),
        bindings: Some(("dab.yaml".to_owned(), BINDINGS.to_owned())),
    }
}

fn shown(c: &CheckedSet) -> String {
    format!("{:?}\n{:?}", c.plan, c.diagnostics)
}

fn fresh(set: SourceSet) -> CheckedSet {
    check_set(
        set,
        &env,
        &|p| std::fs::read(p),
        &dab_runtime::ops::plan_options(),
    )
}

fn cached(set: SourceSet, cache: &mut ParseCache) -> CheckedSet {
    check_set_cached(
        set,
        &env,
        &|p| std::fs::read(p),
        &dab_runtime::ops::plan_options(),
        cache,
    )
}

#[test]
fn an_edit_to_one_file_parses_that_file_only_and_checks_the_same() {
    let mut files: Vec<(usize, usize)> = (0..8).map(|i| (i, 0)).collect();
    let mut cache = ParseCache::default();
    let first = cached(source(&files), &mut cache);
    assert_eq!(cache.parsed_last(), 8);
    assert_eq!(cache.checked_last(), 8);
    assert_eq!(shown(&first), shown(&fresh(source(&files))));
    assert!(!first.has_errors(), "{:?}", first.diagnostics);

    for (at, variant) in [
        (3, 1),
        (3, 2),
        (5, 3),
        (7, 4),
        (2, 5),
        (3, 0),
        (5, 0),
        (7, 0),
        (2, 0),
    ] {
        files[at].1 = variant;
        let reloaded = cached(source(&files), &mut cache);
        assert_eq!(cache.parsed_last(), 1, "edit {at} -> {variant}");
        assert_eq!(cache.checked_last(), 1, "edit {at} -> {variant}");
        assert_eq!(
            shown(&reloaded),
            shown(&fresh(source(&files))),
            "edit {at} -> {variant}"
        );
        // The set is broken exactly while a broken variant is in it.
        let broken = files.iter().any(|&(_, v)| v >= 2);
        assert_eq!(reloaded.has_errors(), broken, "edit {at} -> {variant}");
    }

    // Nothing changed: nothing parsed.
    let again = cached(source(&files), &mut cache);
    assert_eq!(cache.parsed_last(), 0);
    assert_eq!(cache.checked_last(), 0);
    assert_eq!(shown(&again), shown(&fresh(source(&files))));
}

#[test]
fn files_that_move_in_the_set_are_parsed_again() {
    let files: Vec<(usize, usize)> = (0..5).map(|i| (i, 0)).collect();
    let mut cache = ParseCache::default();
    cached(source(&files), &mut cache);
    // A file removed from the front moves every later one.
    let fewer = &files[1..];
    let r = cached(source(fewer), &mut cache);
    assert_eq!(cache.parsed_last(), 4);
    assert_eq!(shown(&r), shown(&fresh(source(fewer))));
    // Removed from the end: nothing moves.
    let r = cached(source(&fewer[..3]), &mut cache);
    assert_eq!(cache.parsed_last(), 0);
    assert_eq!(shown(&r), shown(&fresh(source(&fewer[..3]))));
    // Added at the end.
    let r = cached(source(fewer), &mut cache);
    assert_eq!(cache.parsed_last(), 1);
    assert_eq!(shown(&r), shown(&fresh(source(fewer))));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    /// Any sequence of edits (a file's variant changed, a file added or
    /// removed): after each, the cached check equals a fresh one.
    #[test]
    fn any_edit_sequence_checks_as_fresh(
        edits in proptest::collection::vec((0..10usize, 0..7usize), 1..12)
    ) {
        let mut files: Vec<(usize, usize)> = (0..6).map(|i| (i, 0)).collect();
        let mut cache = ParseCache::default();
        cached(source(&files), &mut cache);
        for (at, variant) in edits {
            if variant == 6 {
                // Add or remove file `at`.
                match files.iter().position(|&(i, _)| i == at) {
                    Some(p) => { files.remove(p); }
                    None => { files.push((at, 0)); files.sort_unstable(); }
                }
            } else if let Some(f) = files.iter_mut().find(|f| f.0 == at) {
                f.1 = variant;
            }
            let r = cached(source(&files), &mut cache);
            prop_assert_eq!(shown(&r), shown(&fresh(source(&files))));
        }
    }
}

/// The bindings file is loaded again when its text changes, and when an
/// environment variable or a file it looked up gives something else; else
/// the last load is reused. Each way, the result is a fresh check's.
#[test]
fn bindings_are_loaded_again_when_their_text_env_or_files_change() {
    let dir = std::env::temp_dir().join(format!("dab-plan-reload-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("a.key");
    std::fs::write(&key, "one\n").unwrap();
    let bindings = |extra: &str| {
        format!(
            "{BINDINGS}sinks:\n  S: {{ kind: file, path: \"${{OUT:-/tmp/x}}\" }}\nkeys:\n  K: {{ file: \"{}\" }}\n  M: {{ file: \"{}/missing.key\" }}\n{extra}",
            key.display(),
            dir.display()
        )
    };
    let blueprints = |n: usize| -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("f{i:02}.dab"), file(i, 0)))
            .chain(std::iter::once((
                "g.dab".to_owned(),
                "g.NewPipeline().In(Stdin).VerifySignature(key = K).Out(S)\n".to_owned(),
            )))
            .collect()
    };
    let set = |n: usize, b: &str| SourceSet {
        blueprints: blueprints(n),
        bindings: Some(("dab.yaml".to_owned(), b.to_owned())),
    };
    let out = std::cell::RefCell::new(None::<String>);
    let env_fn = |k: &str| {
        if k == "OUT" {
            out.borrow().clone()
        } else {
            None
        }
    };
    let check = |s: SourceSet, cache: Option<&mut ParseCache>| {
        let files = |p: &str| std::fs::read(p);
        match cache {
            Some(c) => check_set_cached(s, &env_fn, &files, &dab_runtime::ops::plan_options(), c),
            None => check_set(s, &env_fn, &files, &dab_runtime::ops::plan_options()),
        }
    };
    let mut cache = ParseCache::default();
    let b0 = bindings("");
    // (what, the change, blueprint files, bindings text, loaded again?)
    type Step<'a> = (&'a str, Box<dyn Fn() + 'a>, usize, String, bool);
    let steps: Vec<Step<'_>> = vec![
        ("first", Box::new(|| {}), 8, b0.clone(), true),
        ("nothing changed", Box::new(|| {}), 8, b0.clone(), false),
        (
            "the text changed",
            Box::new(|| {}),
            8,
            bindings("# a comment\n"),
            true,
        ),
        (
            "same text again",
            Box::new(|| {}),
            8,
            bindings("# a comment\n"),
            false,
        ),
        (
            "an env var changed",
            Box::new(|| *out.borrow_mut() = Some("/tmp/y".into())),
            8,
            bindings("# a comment\n"),
            true,
        ),
        (
            "the key file changed",
            Box::new(|| std::fs::write(&key, "two\n").unwrap()),
            8,
            bindings("# a comment\n"),
            true,
        ),
        (
            "the key file emptied",
            Box::new(|| std::fs::write(&key, "\n").unwrap()),
            8,
            bindings("# a comment\n"),
            true,
        ),
        (
            "the missing file appeared",
            Box::new(|| std::fs::write(dir.join("missing.key"), "m\n").unwrap()),
            8,
            bindings("# a comment\n"),
            true,
        ),
        (
            "unchanged",
            Box::new(|| {}),
            8,
            bindings("# a comment\n"),
            false,
        ),
        // One blueprint file fewer: the bindings file (last in the map) moved.
        (
            "the bindings moved",
            Box::new(|| {}),
            7,
            bindings("# a comment\n"),
            true,
        ),
    ];
    for (what, change, n, b, loaded) in steps {
        change();
        let reloaded = check(set(n, &b), Some(&mut cache));
        assert_eq!(cache.bindings_loaded_last(), loaded, "{what}");
        // New bindings: every file's statements are checked against them.
        let checked = if loaded { n + 1 } else { 0 };
        assert_eq!(cache.checked_last(), checked, "{what}");
        let fresh = check(set(n, &b), None);
        assert_eq!(shown(&reloaded), shown(&fresh), "{what}");
        assert_eq!(
            format!("{:?}", reloaded.bindings),
            format!("{:?}", fresh.bindings),
            "{what}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
