//! A blueprint set and its bindings, from text to a checked plan: the one
//! code path that `dab validate`, `dab graph` and `dab run` share.

use dab_diag::{Diagnostic, SourceMap};

use crate::bindings::{load_bindings, Bindings, EnvLookup, FileLookup};
use crate::{parse_and_plan, Options, Plan};

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
    let mut map = SourceMap::new();
    for (name, text) in set.blueprints {
        map.add(name, text);
    }
    let mut diagnostics = Vec::new();
    let bindings = match set.bindings {
        Some((name, text)) => {
            let (b, d) = load_bindings(&mut map, &name, text, env, files);
            diagnostics.extend(d);
            b
        }
        None => Bindings::default(),
    };
    let (plan, d) = parse_and_plan(&map, &bindings, options);
    diagnostics.extend(d);
    dab_diag::sort(&mut diagnostics);
    CheckedSet {
        map,
        bindings,
        plan,
        diagnostics,
    }
}
