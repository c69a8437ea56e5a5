//! Pluggable ops: each module is one op, its validation half
//! (`dab_plan::ops::OpCheck`: signature, semantic checks, lowering to its
//! own config) beside its runtime half ([`Op::build`] into a
//! [`RunStage`], applied a batch at a time). [`builtin_ops`] is the one
//! list: `dab-cli` hands it to the check (`plan_ops`, through
//! `dab_plan::Options::ops`) and the runtime builds a pipeline's stages
//! from it (`crate::stages::compile_with`).
//!
//! Adding an op is one file here and one line in [`builtin_ops`]; nothing
//! generic changes (`tests::Shout` below is such an op, kept for tests).
//! A stateful op asks its [`BuildCx`] for its state: a reload that keeps
//! the op (an equal config at the same place) hands the predecessor's
//! state to the successor, shared with the draining old pipeline.
//!
//! The planner still lays out `In`, `Out`, `OnError`, `Window` /
//! `Aggregate` and `Join` itself (`dab_plan::ops::builtin_operators`), and
//! the topology builds the window and join stages.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use dab_api::metrics::ConnectorMetrics;
use dab_api::{Batch, Event};
use dab_plan::ops::{ArgValue, CheckCx, Op as Call, OpCheck, OpConfig, OpSpec, OpStage, Ops};

use crate::metrics::{DropReason, PipelineMetrics, Undelivered};
use crate::output::OutputTx;
use crate::reliability::Tracker;

pub mod dedup;
pub mod enrich;
pub mod filter;
pub mod filter_type;
pub mod rate_limit;
pub mod remove_tag;
pub mod route;
pub mod sample;
pub mod set_tag;
pub mod verify_signature;

/// The built-in pluggable ops: the one list. An op is one line here.
static OPS: &[&dyn Op] = &[
    &Plug(filter_type::FilterType),
    &Plug(filter::Filter),
    &Plug(route::Route),
    &Plug(set_tag::SetTag),
    &Plug(remove_tag::RemoveTag),
    &Plug(sample::WithSampleRate),
    &Plug(rate_limit::RateLimit(&rate_limit::PER_SECOND)),
    &Plug(rate_limit::RateLimit(&rate_limit::SHORT)),
    &Plug(verify_signature::VerifySignature),
    &Plug(dedup::Dedup),
    &Plug(enrich::Enrich),
    #[cfg(test)]
    &Plug(tests::Shout),
];

/// The built-in pluggable ops.
pub fn builtin_ops() -> &'static [&'static dyn Op] {
    OPS
}

/// The validation halves of [`builtin_ops`], for `dab_plan::Options::ops`.
pub fn plan_ops() -> Ops {
    Ops::new(builtin_ops().iter().map(|o| *o as &'static dyn OpCheck))
}

/// Check options with the built-in ops and no `--service`.
pub fn plan_options() -> dab_plan::Options {
    dab_plan::Options {
        service: None,
        ops: plan_ops(),
    }
}

/// The op named `name` in [`builtin_ops`].
pub fn find(name: &str) -> Option<&'static dyn Op> {
    builtin_ops()
        .iter()
        .copied()
        .find(|o| o.spec().name == name)
}

/// One op, both halves, typed: what an op module implements. [`Plug`]
/// turns it into an entry of [`builtin_ops`].
pub trait OpModule: Send + Sync + 'static {
    /// The op's lowered config, compared by a reload.
    type Config: OpConfig;

    /// Its signature, which the generic checks hold the arguments to.
    fn spec(&self) -> &'static OpSpec;

    /// Its own checks beyond the signature (diagnostics through `cx`) and
    /// its config; `None` when it has errors.
    fn check(&self, cx: &mut CheckCx<'_>, op: &Call, args: Vec<ArgValue>) -> Option<Self::Config>;

    /// Builds the running stage; state, outputs and `OnError` come from
    /// `cx`.
    fn build(
        &self,
        config: &Self::Config,
        cx: &mut BuildCx<'_>,
    ) -> Result<Box<dyn RunStage>, String>;
}

/// An [`OpModule`] as an entry of the op list.
#[derive(Debug)]
pub struct Plug<T>(pub T);

impl<T: OpModule> OpCheck for Plug<T> {
    fn spec(&self) -> &'static OpSpec {
        self.0.spec()
    }

    fn check(&self, cx: &mut CheckCx<'_>, op: &Call, args: Vec<ArgValue>) -> Option<OpStage> {
        let config = self.0.check(cx, op, args)?;
        Some(OpStage::new(self.0.spec().name, config))
    }
}

impl<T: OpModule> Op for Plug<T> {
    fn build(
        &self,
        config: &dyn OpConfig,
        cx: &mut BuildCx<'_>,
    ) -> Result<Box<dyn RunStage>, String> {
        let name = self.0.spec().name;
        let config = (config as &dyn Any)
            .downcast_ref()
            .ok_or_else(|| format!("`{name}` was given another op's config"))?;
        self.0.build(config, cx)
    }
}

/// The runtime half of an op in the list, untyped: [`Plug`] implements it
/// for every [`OpModule`].
pub trait Op: OpCheck {
    /// Builds the stage from the config its check made.
    fn build(
        &self,
        config: &dyn OpConfig,
        cx: &mut BuildCx<'_>,
    ) -> Result<Box<dyn RunStage>, String>;
}

/// A built op in a running pipeline, applied to each batch (a dynamic
/// call per batch, never per event).
#[async_trait]
pub trait RunStage: Send {
    /// Applies the op to `batch`; events it drops on purpose are counted by
    /// reason and reported to the tracker (`ApplyCx::keep_where`).
    async fn apply(&mut self, batch: &mut Batch, cx: &ApplyCx<'_>);

    /// True for an op that sends some events elsewhere (a `Route`): the
    /// events out of the stage are fewer than in by what it took, counted
    /// `routed`.
    fn routes(&self) -> bool {
        false
    }

    /// The op's own samples, labelled with its pipeline and position.
    fn metrics(&self, _pipeline: &str, _stage: usize) -> Option<Arc<dyn ConnectorMetrics>> {
        None
    }
}

/// The state an op keeps across a reload that leaves it unchanged.
pub type StageState = Arc<dyn Any + Send + Sync>;

/// What building an op may take: the senders of the pipeline's outputs and
/// `OnError`, and its state handle.
pub struct BuildCx<'a> {
    pub(crate) outputs: &'a dyn Fn(&str) -> Option<OutputTx>,
    pub(crate) on_error: Option<OutputTx>,
    pub(crate) prior: Option<StageState>,
    pub(crate) state: Option<StageState>,
    /// The registry's table feeds (`Registry::with_tables`), for an op
    /// that reads a table kept current by a connector.
    pub tables: &'a [Box<dyn dab_api::table::TableFactory>],
}

impl std::fmt::Debug for BuildCx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildCx")
            .field("carried", &self.prior.is_some())
            .finish_non_exhaustive()
    }
}

impl BuildCx<'_> {
    /// The sender of a sink or queue the op writes to (`SideOutput`).
    pub fn output(&self, name: &str) -> Option<OutputTx> {
        (self.outputs)(name)
    }

    /// The pipeline's `OnError` output, if it has one.
    pub fn on_error(&mut self) -> Option<OutputTx> {
        self.on_error.take()
    }

    /// The op's state: its predecessor's, when a reload keeps the op,
    /// else `init()`. Kept for the next reload.
    pub fn state<T: Any + Send + Sync>(&mut self, init: impl FnOnce() -> T) -> Arc<T> {
        let state = self.carried().unwrap_or_else(|| Arc::new(init()));
        self.keep(state)
    }

    /// Like [`BuildCx::state`], with an `init` that may fail (a table that
    /// does not load) and hands out a state already shared (a table's
    /// reloader holds it weakly).
    pub fn try_state<T: Any + Send + Sync, E>(
        &mut self,
        init: impl FnOnce() -> Result<Arc<T>, E>,
    ) -> Result<Arc<T>, E> {
        let state = match self.carried() {
            Some(s) => s,
            None => init()?,
        };
        Ok(self.keep(state))
    }

    /// The predecessor's state, if it is a `T`.
    fn carried<T: Any + Send + Sync>(&mut self) -> Option<Arc<T>> {
        self.prior.take().and_then(|p| p.downcast::<T>().ok())
    }

    fn keep<T: Any + Send + Sync>(&mut self, state: Arc<T>) -> Arc<T> {
        self.state = Some(Arc::clone(&state) as StageState);
        state
    }
}

/// What applying an op may use: the pipeline's metrics and the
/// reliability tracker.
pub struct ApplyCx<'a> {
    pub metrics: &'a PipelineMetrics,
    pub tracker: Option<&'a Tracker>,
}

impl std::fmt::Debug for ApplyCx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyCx").finish_non_exhaustive()
    }
}

impl ApplyCx<'_> {
    /// `retain`, with the dropped events reported to the tracker first
    /// (moved aside, not cloned; without one this is a plain `retain`) and
    /// counted dropped for `reason`.
    pub fn keep_where(
        &self,
        events: &mut Vec<Event>,
        reason: DropReason,
        mut keep: impl FnMut(&Event) -> bool,
    ) {
        let before = events.len();
        match self.tracker {
            None => events.retain(|e| keep(e)),
            Some(t) => {
                let (kept, dropped): (Vec<_>, Vec<_>) = events.drain(..).partition(|e| keep(e));
                *events = kept;
                if !dropped.is_empty() {
                    t.dropped(&dropped);
                }
            }
        }
        self.metrics.dropped(reason, (before - events.len()) as u64);
    }

    /// Sends `events` out of the batch to `target` with a share of its
    /// acknowledgement (the source hears "delivered" once both parts are);
    /// a target that is gone fails them, counted.
    pub async fn send_aside(&self, batch: &Batch, events: Vec<Event>, target: &OutputTx) {
        if events.is_empty() {
            return;
        }
        if let Err(b) = target.send(Batch::new(events, batch.ack.share())).await {
            self.metrics
                .undelivered
                .add(Undelivered::ReaderGone, b.len() as u64);
            b.ack.fail();
        }
    }
}

#[cfg(test)]
mod tests;
