//! Reading a blueprint set from disk: paths to files, and the bindings file
//! that goes with them (SPEC section 2: `--config`, else `dab.yaml` beside the
//! first path, unless `--no-config`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use dab_diag::{Code, Diagnostic, Span};
use dab_plan::bindings::{EnvLookup, FileLookup};
use dab_plan::{check_set, check_set_cached, CheckedSet, Options, ParseCache, SourceSet};

use crate::args::ConfigArgs;
use crate::env::Env;

/// All `*.dab` files named by `paths`, directories walked in sorted order.
pub fn blueprint_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta =
            std::fs::metadata(p).with_context(|| format!("cannot read `{}`", p.display()))?;
        if meta.is_dir() {
            walk(p, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        bail!("no *.dab files found in {}", shown.join(", "));
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory `{}`", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot read directory `{}`", dir.display()))?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "dab") {
            out.push(path);
        }
    }
    Ok(())
}

/// The bindings file to use, if any.
pub fn bindings_path(first: &Path, explicit: Option<&Path>, no_config: bool) -> Option<PathBuf> {
    if no_config {
        return None;
    }
    if let Some(p) = explicit {
        return Some(p.to_owned());
    }
    let dir = if first.is_dir() {
        first
    } else {
        first.parent().unwrap_or(Path::new("."))
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let candidate = dir.join("dab.yaml");
    candidate.is_file().then_some(candidate)
}

/// A file's text; invalid UTF-8 is replaced, and where it starts is returned
/// so that it becomes a diagnostic with its place, not a refusal to check.
fn read(path: &Path) -> anyhow::Result<(String, Option<usize>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => (s, None),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            (String::from_utf8_lossy(e.as_bytes()).into_owned(), Some(at))
        }
    })
}

fn encoding_error(set: &mut CheckedSet, name: &str, at: usize, code: Code) {
    let Some((id, _)) = set.map.files().find(|(_, f)| f.name == name) else {
        return;
    };
    let span = Span::new(id, at, at + 3);
    set.diagnostics.push(
        Diagnostic::new(code, span, "invalid UTF-8")
            .with_label_here("not UTF-8 text")
            .with_help(
                "save the file as UTF-8; it was checked with the bad bytes replaced by U+FFFD",
            ),
    );
    dab_diag::sort(&mut set.diagnostics);
}

fn display(p: &Path) -> String {
    p.strip_prefix("./").unwrap_or(p).display().to_string()
}

/// Reads and checks a set: the one path that validate, graph and run share.
pub fn load_and_check(
    paths: &[PathBuf],
    config: Option<&Path>,
    cfg: &ConfigArgs,
    options: &Options,
) -> anyhow::Result<CheckedSet> {
    load_and_check_cached(paths, config, cfg, options, None)
}

/// [`load_and_check`], with the parse of unchanged files taken from `cache`
/// (`dab run` keeps one for its reloads). The result is the same.
pub fn load_and_check_cached(
    paths: &[PathBuf],
    config: Option<&Path>,
    cfg: &ConfigArgs,
    options: &Options,
    cache: Option<&mut ParseCache>,
) -> anyhow::Result<CheckedSet> {
    let files = blueprint_files(paths)?;
    let mut set = SourceSet::default();
    let mut bad_encoding = Vec::new();
    for f in &files {
        let (text, bad) = read(f)?;
        if let Some(at) = bad {
            bad_encoding.push((display(f), at, Code::E001));
        }
        set.blueprints.push((display(f), text));
    }
    let first = paths.first().map_or(Path::new("."), PathBuf::as_path);
    let mut registry = Vec::new();
    if let Some(b) = bindings_path(first, config, cfg.no_config) {
        registry = registry_files(&b)?;
        let (text, bad) = read(&b)?;
        if let Some(at) = bad {
            bad_encoding.push((display(&b), at, Code::E015));
        }
        set.bindings = Some((display(&b), text));
    }
    let env = Env::from_args(&cfg.env_file, &cfg.env)?;
    let (env, files): (EnvLookup<'_>, FileLookup<'_>) = (&|k| env.lookup(k), &|p| std::fs::read(p));
    let mut checked = match cache {
        Some(cache) => check_set_cached(set, env, files, options, cache),
        None => check_set(set, env, files, options),
    };
    for (name, at, code) in bad_encoding {
        encoding_error(&mut checked, &name, at, code);
    }
    if !registry.is_empty() {
        dab_plan::registry::check_registry(&mut checked, registry);
    }
    Ok(checked)
}

/// The schema registry beside the bindings file: every
/// `schemas/<Type>/*.yaml`, in name order (dab-plan's `registry` checks
/// the names and contents).
fn registry_files(bindings: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let dir = bindings
        .parent()
        .unwrap_or(Path::new("."))
        .join(REGISTRY_DIR);
    let mut out = Vec::new();
    let Ok(types) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    let mut type_dirs: Vec<PathBuf> = types
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    type_dirs.sort();
    for t in type_dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&t)
            .with_context(|| format!("cannot read the schema registry {}", t.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for f in files {
            let (text, _) = read(&f)?;
            out.push((display(&f), text));
        }
    }
    Ok(out)
}

/// The schema registry's folder, beside the bindings file.
pub const REGISTRY_DIR: &str = "schemas";
