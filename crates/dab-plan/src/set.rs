//! A blueprint set and its bindings, from text to a checked plan: the one
//! code path that `dab validate`, `dab graph` and `dab run` share.

use std::collections::HashMap;

use dab_diag::{Diagnostic, FileId, SourceMap};
use dab_syntax::ast::Blueprint;

use crate::bindings::{load_bindings, Bindings, EnvLookup, FileLookup};
use crate::{check_blueprint, parse_and_plan, plan_refs, Options, Plan, StatementCheck};

/// The texts of a set, already read from disk (the CLI does the I/O).
#[derive(Debug, Clone, Default)]
pub struct SourceSet {
    /// (path as given, text), in the order they are checked.
    pub blueprints: Vec<(String, String)>,
    /// The bindings file, if any.
    pub bindings: Option<(String, String)>,
}

/// The result of checking a set.
#[derive(Debug, Clone)]
pub struct CheckedSet {
    pub map: SourceMap,
    pub bindings: Bindings,
    pub plan: Plan,
    /// Sorted by file and position.
    pub diagnostics: Vec<Diagnostic>,
}

impl CheckedSet {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Checks a set; `env` and `files` are how the check sees the host (the
/// CLI passes the environment with `--env`, and `std::fs::read`).
pub fn check_set(
    set: SourceSet,
    env: EnvLookup<'_>,
    files: FileLookup<'_>,
    options: &Options,
) -> CheckedSet {
    check(set, env, files, options, None)
}

/// What one check of a set keeps for the next: each blueprint file's parse
/// (AST and syntax diagnostics), by file. A reload passes the same cache to
/// [`check_set_cached`] each time, so only the files that changed are
/// parsed again.
#[derive(Debug, Default)]
pub struct ParseCache {
    files: HashMap<String, Parsed>,
    /// Files the last check parsed, rather than took from here.
    parsed: usize,
    bindings: Option<LoadedBindings>,
    /// Whether the last check loaded the bindings file afresh.
    bindings_loaded: bool,
    /// Files whose statements the last check checked, rather than took
    /// from here.
    checked: usize,
}

/// The bindings file as last loaded, with every environment variable and
/// file the load looked up and what it found: the same text with the same
/// answers loads to the same result.
#[derive(Debug)]
struct LoadedBindings {
    name: String,
    text: String,
    id: FileId,
    env: Vec<(String, Option<String>)>,
    files: Vec<(String, FileRead)>,
    bindings: Bindings,
    diagnostics: Vec<Diagnostic>,
}

/// What a file lookup gave: the SHA-256 of the bytes (not the bytes: a
/// table file may be large, and the cache lives as long as `dab run`), or
/// the error as a diagnostic would show it.
#[derive(Debug, PartialEq, Eq)]
enum FileRead {
    Digest([u8; 32]),
    Failed(std::io::ErrorKind, String),
}

impl FileRead {
    fn of(r: &std::io::Result<Vec<u8>>) -> FileRead {
        use sha2::Digest as _;
        match r {
            Ok(b) => FileRead::Digest(sha2::Sha256::digest(b).into()),
            Err(e) => FileRead::Failed(e.kind(), e.to_string()),
        }
    }
}

/// The bindings of `name`, loaded into `map`, or taken from `cache` when
/// the text, its place in the map and every lookup the last load made are
/// unchanged.
fn bindings_cached(
    map: &mut SourceMap,
    name: String,
    text: String,
    env: EnvLookup<'_>,
    files: FileLookup<'_>,
    cache: &mut ParseCache,
) -> (Bindings, Vec<Diagnostic>) {
    let id = FileId(u32::try_from(map.files().count()).unwrap_or(u32::MAX));
    let hit = cache.bindings.as_ref().is_some_and(|b| {
        b.name == name
            && b.text == text
            && b.id == id
            && b.env.iter().all(|(k, v)| env(k) == *v)
            && b.files.iter().all(|(p, r)| FileRead::of(&files(p)) == *r)
    });
    cache.bindings_loaded = !hit;
    if let (true, Some(b)) = (hit, &cache.bindings) {
        map.add(name, text);
        return (b.bindings.clone(), b.diagnostics.clone());
    }
    let env_seen = std::cell::RefCell::new(Vec::new());
    let files_seen = std::cell::RefCell::new(Vec::new());
    let env_rec = |k: &str| {
        let v = env(k);
        env_seen.borrow_mut().push((k.to_owned(), v.clone()));
        v
    };
    let files_rec = |p: &str| {
        let r = files(p);
        files_seen
            .borrow_mut()
            .push((p.to_owned(), FileRead::of(&r)));
        r
    };
    let (bindings, diagnostics) = load_bindings(map, &name, text.clone(), &env_rec, &files_rec);
    cache.bindings = Some(LoadedBindings {
        name,
        text,
        id,
        env: env_seen.into_inner(),
        files: files_seen.into_inner(),
        bindings: bindings.clone(),
        diagnostics: diagnostics.clone(),
    });
    (bindings, diagnostics)
}

#[derive(Debug)]
struct Parsed {
    id: FileId,
    text: String,
    blueprint: Blueprint,
    diagnostics: Vec<Diagnostic>,
    /// Each statement's own check against the bindings the last check
    /// used; `None` once the bindings changed or before the first check.
    checks: Option<Vec<StatementCheck>>,
}

impl ParseCache {
    /// How many files the last check parsed, rather than took from here.
    pub fn parsed_last(&self) -> usize {
        self.parsed
    }

    /// Whether the last check loaded the bindings file, rather than took
    /// it from here.
    pub fn bindings_loaded_last(&self) -> bool {
        self.bindings_loaded
    }

    /// How many files' statements the last check checked one by one,
    /// rather than took from here (they are taken only when the file and
    /// the bindings are both unchanged).
    pub fn checked_last(&self) -> usize {
        self.checked
    }
}

/// [`check_set`], reusing the parse of every blueprint file whose name, text
/// and place in the set are what they were at the last check with `cache`.
/// Everything after parsing (bindings, names, cycles, types, the graph)
/// runs on the whole set, so the result is the same as [`check_set`]'s.
pub fn check_set_cached(
    set: SourceSet,
    env: EnvLookup<'_>,
    files: FileLookup<'_>,
    options: &Options,
    cache: &mut ParseCache,
) -> CheckedSet {
    check(set, env, files, options, Some(cache))
}

fn check(
    set: SourceSet,
    env: EnvLookup<'_>,
    files: FileLookup<'_>,
    options: &Options,
    cache: Option<&mut ParseCache>,
) -> CheckedSet {
    let mut map = SourceMap::new();
    for (name, text) in set.blueprints {
        map.add(name, text);
    }
    let mut diagnostics = Vec::new();
    let mut cache = cache;
    let bindings = match (set.bindings, cache.as_deref_mut()) {
        (Some((name, text)), Some(cache)) => {
            let (b, d) = bindings_cached(&mut map, name, text, env, files, cache);
            diagnostics.extend(d);
            b
        }
        (Some((name, text)), None) => {
            let (b, d) = load_bindings(&mut map, &name, text, env, files);
            diagnostics.extend(d);
            b
        }
        (None, cache) => {
            if let Some(cache) = cache {
                cache.bindings = None;
            }
            Bindings::default()
        }
    };
    let (plan, d) = match cache {
        None => parse_and_plan(&map, &bindings, options),
        Some(cache) => parse_and_plan_cached(&map, &bindings, options, cache),
    };
    diagnostics.extend(d);
    dab_diag::sort(&mut diagnostics);
    CheckedSet {
        map,
        bindings,
        plan,
        diagnostics,
    }
}

fn parse_and_plan_cached(
    map: &SourceMap,
    bindings: &Bindings,
    options: &Options,
    cache: &mut ParseCache,
) -> (Plan, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut parsed: Vec<(String, Parsed)> = Vec::new();
    // Statement checks depend on the bindings; a fresh load (or no file)
    // may differ from the one they were made with.
    let bindings_same = bindings.file.is_some() && !cache.bindings_loaded;
    let mut checks = Vec::new();
    cache.parsed = 0;
    cache.checked = 0;
    for (id, file) in map.files() {
        if Some(id) == bindings.file {
            continue;
        }
        let mut p = match cache.files.remove(&file.name) {
            // Spans carry the file's id, so a file that moved in the set
            // is parsed again.
            Some(p) if p.id == id && p.text == file.text => p,
            _ => {
                cache.parsed += 1;
                let (blueprint, diagnostics) = dab_syntax::parse(id, &file.text);
                Parsed {
                    id,
                    text: file.text.clone(),
                    blueprint,
                    diagnostics,
                    checks: None,
                }
            }
        };
        let reuse = bindings_same && p.checks.is_some();
        if !reuse {
            cache.checked += 1;
            p.checks = Some(check_blueprint(&p.blueprint, bindings, &options.ops));
        }
        checks.extend(p.checks.iter().flatten().cloned());
        diags.extend(p.diagnostics.iter().cloned());
        parsed.push((file.name.clone(), p));
    }
    let blueprints: Vec<&Blueprint> = parsed.iter().map(|(_, p)| &p.blueprint).collect();
    let (plan, d) = plan_refs(&blueprints, checks, bindings, options);
    diags.extend(d);
    cache.files = parsed.into_iter().collect();
    (plan, diags)
}
