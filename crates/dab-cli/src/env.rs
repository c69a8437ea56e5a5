//! The variables that `${VAR}` in bindings sees: the process environment,
//! then `--env-file` files, then `--env KEY=VALUE`, later ones winning.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};

pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    pub fn from_args(files: &[PathBuf], pairs: &[String]) -> anyhow::Result<Env> {
        let mut vars: HashMap<String, String> = std::env::vars().collect();
        for f in files {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read env file `{}`", f.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let line = line.strip_prefix("export ").unwrap_or(line);
                let Some((k, v)) = line.split_once('=') else {
                    bail!(
                        "{}:{}: expected KEY=VALUE, found `{line}`",
                        f.display(),
                        n + 1
                    );
                };
                vars.insert(k.trim().to_owned(), unquote(v.trim()).to_owned());
            }
        }
        for p in pairs {
            let Some((k, v)) = p.split_once('=') else {
                bail!("--env expects KEY=VALUE, found `{p}`");
            };
            vars.insert(k.to_owned(), v.to_owned());
        }
        Ok(Env { vars })
    }

    pub fn lookup(&self, key: &str) -> Option<String> {
        self.vars.get(key).cloned()
    }
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    v
}
