//! What runs now, keyed for reloads: the slots of pipelines, inputs,
//! sources and sinks, and the op state (dedup windows, rate-limit buckets)
//! that a rebuild of a pipeline carries over.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use dab_api::connector::SourceStats;
use dab_api::{Batch, ConfigValue};
use dab_plan::Plan;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::{InputMetrics, PipelineMetrics, SinkMetrics};
use crate::output::{OutputTx, QueueWriter};
use crate::stages::{compile_with, StageState};

/// One reader of an input: its pipeline's buffer and what to do when it
/// is full.
#[derive(Clone)]
pub(super) struct Reader {
    pub(super) tx: mpsc::Sender<Batch>,
    pub(super) when_full: dab_plan::model::WhenFull,
    /// Where a dropped copy is counted (`input_full`).
    pub(super) metrics: Arc<crate::metrics::PipelineMetrics>,
}

/// Readers of one input, by pipeline id, in plan order.
pub(super) type Readers = Vec<(String, Reader)>;

/// What runs now, keyed for reloads.
pub(super) struct State {
    pub(super) plan: Option<Plan>,
    pub(super) pipelines: HashMap<String, PipelineSlot>,
    /// By input key: a source's name, a memory queue's name, or
    /// `queue:pipeline` for a Kafka queue's reader.
    pub(super) inputs: HashMap<String, InputSlot>,
    pub(super) sinks: HashMap<String, SinkSlot>,
    pub(super) queues: HashMap<String, QueueWriter>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("pipelines", &self.pipelines.keys().collect::<Vec<_>>())
            .field("inputs", &self.inputs.keys().collect::<Vec<_>>())
            .field("sinks", &self.sinks.keys().collect::<Vec<_>>())
            .field("queues", &self.queues.keys().collect::<Vec<_>>())
            .finish()
    }
}

pub(super) struct PipelineSlot {
    pub(super) tx: mpsc::Sender<Batch>,
    /// The inlet of its `Join`'s stream, its second input.
    pub(super) join_tx: Option<mpsc::Sender<Batch>>,
    /// Cancelled when a reload replaces or removes the pipeline: its
    /// `Join` fails what it holds (the sources send it again to the
    /// pipeline that replaces it) instead of taking the closing of its
    /// inputs for their end.
    pub(super) retired: Option<CancellationToken>,
    pub(super) metrics: Arc<PipelineMetrics>,
    /// Its dedup windows and rate-limit buckets, by place (`None` for the
    /// pipeline's stages, `Some(target)` for an output's modifiers) and op,
    /// for a rebuild that keeps the op (SPEC section 5).
    pub(super) states: Vec<OpState>,
}

/// One op's state that a rebuild of its pipeline carries over.
pub(super) type OpState = (Option<String>, dab_plan::model::Stage, StageState);

/// Compiles `stages` (at `place`), each continuing the state of an equal op
/// at the same place in `prior`, which it takes; records the new states.
pub(super) fn compile_ops(
    place: Option<&str>,
    stages: &[dab_plan::model::Stage],
    sink_tx: impl Fn(&str) -> Option<OutputTx> + Copy,
    on_error: impl Fn() -> Option<OutputTx>,
    prior: &mut Vec<OpState>,
    states: &mut Vec<OpState>,
    tables: &[Box<dyn dab_api::table::TableFactory>],
) -> Result<Vec<crate::stages::Compiled>, String> {
    let mut out = Vec::with_capacity(stages.len());
    for s in stages {
        let carried = prior
            .iter()
            .position(|(at, op, _)| at.as_deref() == place && op == s)
            .map(|i| prior.remove(i).2);
        let c = compile_with(s, sink_tx, on_error(), carried, tables)?;
        if let Some(state) = c.state() {
            states.push((place.map(str::to_owned), s.clone(), state));
        }
        out.push(c);
    }
    Ok(out)
}

pub(super) struct InputSlot {
    pub(super) readers: watch::Sender<Readers>,
    pub(super) metrics: Arc<InputMetrics>,
    /// Set for sources (not for memory queues).
    pub(super) source: Option<SourceSlot>,
}

pub(super) struct SourceSlot {
    /// The binding it was built from; a different one means a new source.
    pub(super) spec: (String, BTreeMap<String, ConfigValue>),
    pub(super) stop: CancellationToken,
    pub(super) stats: Arc<SourceStats>,
    pub(super) connector: Option<Arc<dyn dab_api::metrics::ConnectorMetrics>>,
}

pub(super) struct SinkSlot {
    /// Kind, fields and the payload schema of the binding's `type`.
    pub(super) spec: (
        String,
        BTreeMap<String, ConfigValue>,
        Option<dab_api::PayloadSchema>,
    ),
    pub(super) tx: mpsc::Sender<Batch>,
    pub(super) metrics: Arc<SinkMetrics>,
    pub(super) connector: Option<Arc<dyn dab_api::metrics::ConnectorMetrics>>,
}
