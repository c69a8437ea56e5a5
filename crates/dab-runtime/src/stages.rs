//! A pipeline's stages, compiled for the runtime and applied a batch at a
//! time. Each op is built by its own module (`crate::ops`), found by name
//! in `crate::ops::builtin_ops`. The window
//! and join stages are built by the pipeline (`crate::window`,
//! `crate::join`), never here.

use std::sync::Arc;

use dab_api::metrics::ConnectorMetrics;
use dab_api::Batch;
use dab_plan::model::Stage;

use crate::metrics::PipelineMetrics;
use crate::ops::{ApplyCx, BuildCx, RunStage};
use crate::output::OutputTx;
use crate::reliability::Tracker;
use dab_api::table::TableFactory;

pub use crate::ops::dedup::DEDUP_MAX_PER_GENERATION;
pub use crate::ops::sample::SAMPLE_TAG;
pub use crate::ops::StageState;

/// A built stage: the op's runtime half, and the state a reload that keeps
/// the op hands to its successor.
pub struct Compiled {
    stage: Box<dyn RunStage>,
    state: Option<StageState>,
    label: String,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

/// Compiles a stage; `overflow` resolves the outputs an op writes to
/// beside the stream (`on_limit = overflow`, a route's target) and
/// `on_error` is the pipeline's `OnError` output. Fails when a stage
/// cannot be built (a table that does not load).
pub fn compile(
    s: &Stage,
    overflow: impl Fn(&str) -> Option<OutputTx>,
    on_error: Option<OutputTx>,
) -> Result<Compiled, String> {
    compile_with(s, overflow, on_error, None, &[])
}

/// Like `compile`, continuing `prior`: the state of the same op in the
/// pipeline a reload replaces (ignored when it is another op's), with the
/// registry's table feeds.
pub fn compile_with(
    s: &Stage,
    overflow: impl Fn(&str) -> Option<OutputTx>,
    on_error: Option<OutputTx>,
    prior: Option<StageState>,
    tables: &[Box<dyn TableFactory>],
) -> Result<Compiled, String> {
    let mut cx = BuildCx {
        outputs: &overflow,
        on_error,
        prior,
        state: None,
        tables,
    };
    let stage: Box<dyn RunStage> = match s {
        Stage::Op(o) => {
            let op = crate::ops::find(o.op())
                .ok_or_else(|| format!("`{}` is not an op this runtime has", o.op()))?;
            op.build(o.config(), &mut cx)?
        }
        // Built by the pipeline as its window stage (`crate::window`),
        // never as one of these.
        Stage::Aggregate(_) => {
            return Err(
                "`Window(...).Aggregate(...)` is a pipeline's window stage, not an op of an output"
                    .to_owned(),
            )
        }
        // Built by the pipeline as its join stage (`crate::join`).
        Stage::Join(_) => {
            return Err("`Join(...)` is a pipeline's join stage, not an op of an output".to_owned())
        }
    };
    Ok(Compiled {
        stage,
        state: cx.state,
        label: s.label(),
    })
}

impl Compiled {
    /// True for a `Route`, whose events out of the stage are fewer than in
    /// by what it took.
    pub fn routes(&self) -> bool {
        self.stage.routes()
    }

    /// What a reload that keeps this op hands to its successor.
    pub fn state(&self) -> Option<StageState> {
        self.state.clone()
    }

    /// The op's own samples, for ops that keep any, labelled with its
    /// pipeline and position (`PipelineMetrics::ops`).
    pub fn metrics(&self, pipeline: &str, stage: usize) -> Option<Arc<dyn ConnectorMetrics>> {
        self.stage.metrics(pipeline, stage)
    }

    /// Applies the stage; dropped events are counted by reason.
    pub async fn apply(&mut self, batch: &mut Batch, m: &PipelineMetrics) {
        self.apply_tracked(batch, m, None).await;
    }

    /// Like `apply`; events dropped on purpose are also reported to the
    /// reliability tracker, so they do not count as missing.
    pub async fn apply_tracked(
        &mut self,
        batch: &mut Batch,
        m: &PipelineMetrics,
        tracker: Option<&Tracker>,
    ) {
        let cx = ApplyCx {
            metrics: m,
            tracker,
        };
        self.stage.apply(batch, &cx).await;
    }
}
