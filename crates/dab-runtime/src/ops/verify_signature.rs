//! `VerifySignature(key = Name)`: keeps events whose HMAC-SHA256 signature
//! verifies; the others go to `OnError` or are dropped and counted. The
//! key's bytes were read when the set was checked
//! (`dab_plan::model::Secret`), so `run` never meets a key `validate`
//! did not.

use async_trait::async_trait;
use dab_api::signature::Signer;
use dab_api::Batch;
use dab_plan::model::Secret;
use dab_plan::ops::{ArgValue, CheckCx, Code, Diagnostic, Op as Call, OpClass};
use dab_plan::ops::{OpConfig, OpSpec, Param, ParamType};

use super::{ApplyCx, BuildCx, OpModule, RunStage};
use crate::metrics::DropReason;
use crate::output::OutputTx;

#[derive(Debug)]
pub struct VerifySignature;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub key: String,
    /// The key's bytes, read when the set was checked.
    pub secret: Secret,
}

static SPEC: OpSpec = OpSpec {
    name: "VerifySignature",
    class: OpClass::Stage,
    positional: &[],
    variadic: false,
    named: &[Param {
        name: "key",
        ty: ParamType::Name,
        doc: "a key declared under `keys:` in the bindings file (required)",
    }],
    other_named: None,
    doc: "Keep events whose HMAC-SHA256 signature verifies; the others go to `OnError` or are dropped and counted",
};

impl OpModule for VerifySignature {
    type Config = Config;

    fn spec(&self) -> &'static OpSpec {
        &SPEC
    }

    fn check(&self, cx: &mut CheckCx<'_>, op: &Call, args: Vec<ArgValue>) -> Option<Config> {
        let Some(ArgValue::Name(key)) = args.into_iter().next() else {
            cx.diags.push(
                Diagnostic::new(Code::E007, op.span, "`VerifySignature` needs `key = Name`")
                    .with_label_here("missing `key`")
                    .with_help("name a key declared under `keys:` in the bindings file; keys are never written in blueprints"),
            );
            return None;
        };
        let keys = &cx.bindings.keys;
        let Some(decl) = keys.iter().find(|k| k.name == key.name) else {
            let mut d =
                Diagnostic::new(Code::E010, key.span, format!("unknown key `{}`", key.name))
                    .with_label_here("not under `keys:`")
                    .with_suggestion(&key.name, keys.iter().map(|k| k.name.as_str()));
            if d.help.is_none() {
                d = d.with_help(format!(
                    "declare it in the bindings file: `keys: {{ {}: {{ env: VARIABLE }} }}`",
                    key.name
                ));
            }
            cx.diags.push(d);
            return None;
        };
        // A key that could not be read was reported where it is declared;
        // the set has an error and never runs.
        let Some(secret) = decl.secret.clone() else {
            cx.unavailable();
            return None;
        };
        Some(Config {
            key: key.name,
            secret,
        })
    }

    fn build(&self, c: &Config, cx: &mut BuildCx<'_>) -> Result<Box<dyn RunStage>, String> {
        Ok(Box::new(Run {
            signer: Signer::new(c.secret.bytes()),
            on_error: cx.on_error(),
        }))
    }
}

impl OpConfig for Config {
    fn label(&self) -> String {
        format!("VerifySignature(key = {})", self.key)
    }
}

struct Run {
    signer: Signer,
    on_error: Option<OutputTx>,
}

#[async_trait]
impl RunStage for Run {
    async fn apply(&mut self, batch: &mut Batch, cx: &ApplyCx<'_>) {
        let mut bad = Vec::new();
        let mut good = Vec::with_capacity(batch.events.len());
        for e in batch.events.drain(..) {
            if self.signer.verify(&e) {
                good.push(e);
            } else {
                bad.push(e);
            }
        }
        batch.events = good;
        if bad.is_empty() {
            return;
        }
        let n = bad.len() as u64;
        cx.metrics.failed(n);
        match &self.on_error {
            Some(target) => cx.send_aside(batch, bad, target).await,
            None => cx.metrics.dropped(DropReason::BadSignature, n),
        }
    }
}
