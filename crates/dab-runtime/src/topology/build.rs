//! The first half of a start or reload: builds every new piece (queues,
//! sinks, sources, pipelines) against the running state without touching
//! it, so a piece that fails to build changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use dab_api::connector::SourceStats;
use dab_api::{Batch, ConfigValue};
use dab_plan::model::{Endpoint, Pipeline, Role};
use dab_plan::Plan;
use tokio::sync::mpsc;

use crate::breaker::BreakerConfig;
use crate::metrics::{PipelineMetrics, QueueMetrics, SinkMetrics};
use crate::output::{memory_queue, OutputTx, QueueReader, QueueWriter};
use crate::pipeline::{By, Inlet, Output, PipelineTask, Screen, WindowPart};
use crate::rendezvous::Rendezvous;
use crate::sink::SinkTask;
use crate::window::WindowStage;

use super::state::{compile_ops, PipelineSlot, SinkSlot, SourceSlot, State};
use super::{ReloadReport, Running, StartError};

/// `batch_timeout` (ms) in a sink's binding turns on batching by time,
/// up to `batch_size` events (500 when not given).
fn coalesce_of(fields: &BTreeMap<String, ConfigValue>) -> Option<crate::sink::Coalesce> {
    let wait = match fields.get("batch_timeout") {
        Some(ConfigValue::Int(ms)) if *ms > 0 => Duration::from_millis(u64::try_from(*ms).ok()?),
        _ => return None,
    };
    let max_events = match fields.get("batch_size") {
        Some(ConfigValue::Int(n)) if *n > 0 => usize::try_from(*n).ok()?,
        _ => 500,
    };
    Some(crate::sink::Coalesce {
        max_events,
        max_wait: wait,
    })
}

/// A binding's fields, borrowed from the plan or made for the runtime.
type Fields<'a> = std::borrow::Cow<'a, BTreeMap<String, ConfigValue>>;

/// Input depth, in batches, of a Kafka sink (at least `channel_batches`).
const KAFKA_SINK_BATCHES: usize = 64;

/// A source to build: its name (a Kafka queue's reader is
/// `queue:pipeline`), kind and settings.
pub(super) struct SourceSpec<'a> {
    name: String,
    /// `None` for a built-in name with no kind, an error in `build`.
    kind: Option<&'a str>,
    fields: std::borrow::Cow<'a, BTreeMap<String, ConfigValue>>,
}

/// The connector kind behind each built-in name of `BUILTIN_NAMES`
/// (SPEC section 2).
const BUILTIN_KINDS: &[(&str, &str)] = &[
    ("Stdin", "stdin"),
    ("Generator", "generator"),
    ("Stdout", "stdout"),
    ("Blackhole", "blackhole"),
];

/// The kind of a built-in name. Callers turn `None` into
/// `StartError::UnknownBuiltin`, never into a default: a default sink would
/// quietly run something nobody asked for (and a Blackhole drops the data).
fn builtin_kind(name: &str) -> Option<&'static str> {
    BUILTIN_KINDS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, k)| *k)
}

/// Everything a reload builds before it changes anything.
pub(super) struct Staged {
    pub(super) report: ReloadReport,
    pub(super) queues: Vec<(String, QueueWriter, QueueReader)>,
    pub(super) sinks: Vec<(String, SinkSlot, SinkTask)>,
    pub(super) sources: Vec<StagedSource>,
    pub(super) pipelines: Vec<(String, PipelineSlot, PipelineTask)>,
}

pub(super) struct StagedSource {
    pub(super) key: String,
    pub(super) slot: SourceSlot,
    pub(super) source: Box<dyn dab_api::Source>,
    pub(super) tx: mpsc::Sender<Batch>,
    pub(super) rx: mpsc::Receiver<Batch>,
}

/// The input key of a pipeline, and, for a Kafka queue, its fields with
/// the pipeline's consumer group; for a disk queue, its fields with the
/// queue's name and the reader's (the pipeline id).
pub(super) fn input_of<'a>(plan: &'a Plan, p: &Pipeline) -> (String, Option<SourceSpec<'a>>) {
    input_named(plan, p, &p.config.input)
}

/// The input key (and source) of the stream of a pipeline's `Join`, its
/// second input.
pub(super) fn join_input_of<'a>(
    plan: &'a Plan,
    p: &Pipeline,
) -> Option<(String, Option<SourceSpec<'a>>)> {
    let stream = p.config.join()?.stream.as_str();
    Some(input_named(plan, p, stream))
}

/// Every input of a pipeline: its `In`, then its `Join`'s stream.
pub(super) fn inputs_of<'a>(
    plan: &'a Plan,
    p: &Pipeline,
) -> impl Iterator<Item = (String, Option<SourceSpec<'a>>)> {
    std::iter::once(input_of(plan, p)).chain(join_input_of(plan, p))
}

/// [`input_of`] for one of the names a pipeline reads.
fn input_named<'a>(plan: &'a Plan, p: &Pipeline, name: &str) -> (String, Option<SourceSpec<'a>>) {
    let empty: &'static BTreeMap<String, ConfigValue> = empty_fields();
    match plan.endpoints.get(name) {
        Some(Endpoint::Bound {
            kind, fields, role, ..
        }) if *role == Role::Queue && kind == "disk" => {
            // One reader per reading pipeline, named after it; the queue's
            // owner in this process serves them all.
            let key = format!("{name}:{}", p.id);
            let mut fields = disk_fields(plan, name, fields);
            fields.insert("queue".to_owned(), ConfigValue::Str(name.to_owned()));
            fields.insert("reader".to_owned(), ConfigValue::Str(p.id.clone()));
            (
                key.clone(),
                Some(SourceSpec {
                    name: key,
                    kind: Some("disk"),
                    fields: std::borrow::Cow::Owned(fields),
                }),
            )
        }
        Some(Endpoint::Bound {
            kind, fields, role, ..
        }) if *role == Role::Queue && kind == "kafka" => {
            let key = format!("{name}:{}", p.id);
            let mut fields = fields.clone();
            fields.insert(
                "group".to_owned(),
                ConfigValue::Str(format!("dab.{name}.{}", p.id)),
            );
            // A queue's messages are DAB's own: their `dab.*` tags (sample
            // rate, error) mean what they say.
            fields.insert(
                "reserved_names".to_owned(),
                ConfigValue::Str("keep".to_owned()),
            );
            (
                key.clone(),
                Some(SourceSpec {
                    name: key,
                    kind: Some("kafka"),
                    fields: std::borrow::Cow::Owned(fields),
                }),
            )
        }
        Some(Endpoint::Bound {
            role: Role::Source,
            kind,
            fields,
            ..
        }) => (
            name.to_owned(),
            Some(SourceSpec {
                name: name.to_owned(),
                kind: Some(kind.as_str()),
                fields: std::borrow::Cow::Borrowed(fields),
            }),
        ),
        Some(Endpoint::Builtin { role: Role::Source }) => (
            name.to_owned(),
            Some(SourceSpec {
                name: name.to_owned(),
                kind: builtin_kind(name),
                fields: std::borrow::Cow::Borrowed(empty),
            }),
        ),
        _ => (name.to_owned(), None),
    }
}

/// A disk queue's fields with `readers`: the ids of the set's pipelines
/// that read it. The queue's first opening in this process drops the
/// positions of readers no pipeline has any more, which would otherwise
/// hold its segments forever.
fn disk_fields(
    plan: &Plan,
    name: &str,
    fields: &BTreeMap<String, ConfigValue>,
) -> BTreeMap<String, ConfigValue> {
    let mut readers: Vec<&str> = plan
        .pipelines
        .iter()
        .filter(|p| p.config.reads().any(|r| r == name))
        .map(|p| p.id.as_str())
        .collect();
    readers.sort_unstable();
    readers.dedup();
    let mut fields = fields.clone();
    fields.insert(
        "readers".to_owned(),
        ConfigValue::List(
            readers
                .into_iter()
                .map(|r| ConfigValue::Str(r.to_owned()))
                .collect(),
        ),
    );
    fields
}

fn empty_fields() -> &'static BTreeMap<String, ConfigValue> {
    static EMPTY: std::sync::OnceLock<BTreeMap<String, ConfigValue>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(BTreeMap::new)
}

impl Running {
    pub(super) fn build(
        &self,
        plan: &Plan,
        selected: &[&Pipeline],
        st: &State,
    ) -> Result<Staged, StartError> {
        let opts = &self.opts;
        let cap = opts.channel_batches.max(1);
        let endpoint = |name: &str| plan.endpoints.get(name);
        let old = st.plan.as_ref();
        let diff = old.map(|o| dab_plan::diff(o, plan));
        let mut report = ReloadReport::default();
        let mut rebuild: Vec<&Pipeline> = Vec::new();
        for p in selected {
            match (st.pipelines.contains_key(&p.id), &diff) {
                (false, _) => {
                    report.added.push(p.id.clone());
                    rebuild.push(p);
                }
                (true, Some(d)) => match d.rebuilt.iter().find(|(id, _)| *id == p.id) {
                    Some((_, why)) => {
                        report.rebuilt.push((p.id.clone(), why.clone()));
                        rebuild.push(p);
                    }
                    None => report.kept.push(p.id.clone()),
                },
                (true, None) => report.kept.push(p.id.clone()),
            }
        }
        let selected_ids: std::collections::HashSet<&str> =
            selected.iter().map(|p| p.id.as_str()).collect();
        for id in st.pipelines.keys() {
            if !selected_ids.contains(id.as_str()) {
                report.removed.push(id.clone());
            }
        }
        report.removed.sort();

        // Memory queues used by the selected pipelines that do not exist yet.
        let mut queues = Vec::new();
        // Queues outside this process's memory (Kafka, disk): by name, their
        // kind and fields. Writers get a sink of that kind, readers a source.
        let mut external_queues: HashMap<&str, (&str, Fields<'_>)> = HashMap::new();
        let used = selected
            .iter()
            .flat_map(|p| p.config.reads().chain(p.config.writes()));
        for name in used {
            let Some(ep) = endpoint(name) else { continue };
            if ep.role() != Role::Queue {
                continue;
            }
            if let Endpoint::Bound { kind, fields, .. } = ep {
                if kind == "kafka" {
                    external_queues
                        .insert(name, (kind.as_str(), std::borrow::Cow::Borrowed(fields)));
                    continue;
                }
                if kind == "disk" {
                    let fields = disk_fields(plan, name, fields);
                    external_queues.insert(name, (kind.as_str(), std::borrow::Cow::Owned(fields)));
                    continue;
                }
            }
            if !ep.is_memory_queue() {
                let kind = match ep {
                    Endpoint::Bound { kind, .. } => kind.clone(),
                    _ => "?".into(),
                };
                return Err(StartError::UnknownKind {
                    name: name.to_owned(),
                    role: "queue",
                    kind,
                });
            }
            if st.queues.contains_key(name) || queues.iter().any(|(n, _, _)| n == name) {
                continue;
            }
            let field = |key: &str| match ep {
                Endpoint::Bound { fields, .. } => match fields.get(key) {
                    Some(ConfigValue::Int(c)) => u64::try_from(*c).ok(),
                    _ => None,
                },
                _ => None,
            };
            let capacity = field("capacity").map_or(opts.default_queue_capacity, |c| {
                u32::try_from(c).unwrap_or(u32::MAX)
            });
            let capacity_bytes = field("capacity_bytes").unwrap_or(opts.default_queue_bytes);
            let qm = Arc::new(QueueMetrics {
                name: name.to_owned(),
                capacity_events: u64::from(capacity),
                ..QueueMetrics::default()
            });
            self.metrics.queues.push(qm.clone());
            let (w, r) = memory_queue(capacity, capacity_bytes, qm);
            queues.push((name.to_owned(), w, r));
        }

        // Sinks (and Kafka queues written) by pipelines being built.
        let mut sinks: Vec<(String, SinkSlot, SinkTask)> = Vec::new();
        for p in &rebuild {
            for name in p.config.writes() {
                let Some(ep) = endpoint(name) else { continue };
                let (kind, fields, schema) = match (external_queues.get(name), ep) {
                    (Some((kind, fields)), _) => (*kind, &**fields, None),
                    (None, _) if ep.role() != Role::Sink => continue,
                    (
                        None,
                        Endpoint::Bound {
                            kind,
                            fields,
                            schema,
                            ..
                        },
                    ) => (kind.as_str(), fields, schema.as_ref()),
                    (None, _) => (
                        builtin_kind(name)
                            .ok_or_else(|| StartError::UnknownBuiltin(name.to_owned()))?,
                        empty_fields(),
                        None,
                    ),
                };
                let spec = (kind.to_owned(), fields.clone(), schema.cloned());
                let unchanged = st.sinks.get(name).is_some_and(|s| s.spec == spec);
                if unchanged || sinks.iter().any(|(n, _, _)| n == name) {
                    continue;
                }
                let factory = self
                    .registry
                    .sinks
                    .iter()
                    .find(|f| f.kind() == kind)
                    .ok_or_else(|| StartError::UnknownKind {
                        name: name.to_owned(),
                        role: if external_queues.contains_key(name) {
                            "queue"
                        } else {
                            "sink"
                        },
                        kind: kind.to_owned(),
                    })?;
                let sink = factory.build_typed(name, fields, schema)?;
                let connector = sink.metrics();
                // A Kafka sink's flush waits a broker round trip for every
                // delivery report; a deeper input keeps the pipelines
                // flowing meanwhile (a bandwidth-delay product, about
                // 16 MiB of 250-byte events).
                let depth = if kind == "kafka" || kind == "disk" {
                    cap.max(KAFKA_SINK_BATCHES)
                } else {
                    cap
                };
                let (tx, rx) = mpsc::channel(depth);
                // A sink rebuilt under the same name keeps counting in the
                // same series, the old instance's last writes included.
                let sm = st.sinks.get(name).map_or_else(
                    || {
                        Arc::new(SinkMetrics {
                            name: name.to_owned(),
                            abandoned: self.metrics.abandoned.clone(),
                            ..SinkMetrics::default()
                        })
                    },
                    |old| old.metrics.clone(),
                );
                let task = SinkTask {
                    sink,
                    input: rx,
                    metrics: sm.clone(),
                    force: self.force.clone(),
                    reliability: self.reliability.clone(),
                    coalesce: coalesce_of(fields),
                    breaker: BreakerConfig::from_fields(fields),
                };
                sinks.push((
                    name.to_owned(),
                    SinkSlot {
                        spec,
                        tx,
                        metrics: sm,
                        connector,
                    },
                    task,
                ));
            }
        }

        // Sources: new ones, and ones whose binding changed.
        let mut sources: Vec<StagedSource> = Vec::new();
        for (key, spec) in selected.iter().flat_map(|p| inputs_of(plan, p)) {
            let Some(spec) = spec else { continue };
            let kind = spec
                .kind
                .ok_or_else(|| StartError::UnknownBuiltin(spec.name.clone()))?;
            // Compared in place: most pipelines share a running source, and
            // a copy of its fields for each would cost more than the rest.
            let unchanged = st
                .inputs
                .get(&key)
                .and_then(|i| i.source.as_ref())
                .is_some_and(|s| s.spec.0 == kind && s.spec.1 == *spec.fields);
            if unchanged || sources.iter().any(|s| s.key == key) {
                continue;
            }
            let wanted = (kind.to_owned(), spec.fields.clone().into_owned());
            let factory = self
                .registry
                .sources
                .iter()
                .find(|f| f.kind() == kind)
                .ok_or_else(|| StartError::UnknownKind {
                    name: spec.name.clone(),
                    role: "source",
                    kind: kind.to_owned(),
                })?;
            let source = factory.build(&spec.name, &spec.fields)?;
            let connector = source.metrics();
            let (tx, rx) = mpsc::channel(cap);
            sources.push(StagedSource {
                key,
                slot: SourceSlot {
                    spec: wanted,
                    stop: self.shutdown.child_token(),
                    stats: Arc::new(SourceStats::default()),
                    connector,
                },
                source,
                tx,
                rx,
            });
        }

        // Pipelines: compiled against the sinks and queues they will have.
        let sink_tx = |name: &str| -> Option<OutputTx> {
            if let Some((_, slot, _)) = sinks.iter().find(|(n, _, _)| n == name) {
                return Some(OutputTx::Channel(slot.tx.clone()));
            }
            if let Some(slot) = st.sinks.get(name) {
                return Some(OutputTx::Channel(slot.tx.clone()));
            }
            if let Some(w) = st.queues.get(name) {
                return Some(OutputTx::Queue(w.clone()));
            }
            queues
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, w, _)| OutputTx::Queue(w.clone()))
        };
        let mut pipelines = Vec::new();
        for p in &rebuild {
            let c = &p.config;
            let mut labels: Vec<String> = c.stages.iter().map(|s| s.label()).collect();
            for o in &c.outputs {
                labels.extend(
                    o.modifiers
                        .iter()
                        .map(|m| format!("{} -> {}", m.label(), o.target)),
                );
            }
            let window_at = c
                .stages
                .iter()
                .position(|s| matches!(s, dab_plan::model::Stage::Aggregate(_)));
            let mut pm = PipelineMetrics::new(
                &p.id,
                labels,
                c.outputs.iter().map(|o| o.target.clone()).collect(),
            )
            .with_total(self.metrics.abandoned.clone());
            if window_at.is_some() {
                pm.window = Some(crate::metrics::WindowMetrics::default());
            }
            let on_error = || c.on_error.as_deref().and_then(sink_tx);
            let bad_key = |e: String| StartError::Stage {
                pipeline: p.id.clone(),
                reason: e,
            };
            // The dedup windows and rate-limit buckets of the pipeline this
            // one replaces, for the ops that did not change.
            let mut prior = st
                .pipelines
                .get(&p.id)
                .map(|old| old.states.clone())
                .unwrap_or_default();
            let mut states = Vec::new();
            let join_at = c
                .stages
                .iter()
                .position(|s| matches!(s, dab_plan::model::Stage::Join(_)));
            let before = &c.stages[..window_at.or(join_at).unwrap_or(c.stages.len())];
            let tables = &self.registry.tables;
            // Each op continues the state of an equal op at its place.
            let mut compile = |place: Option<&str>, ops: &[dab_plan::model::Stage]| {
                compile_ops(
                    place,
                    ops,
                    sink_tx,
                    on_error,
                    &mut prior,
                    &mut states,
                    tables,
                )
                .map_err(bad_key)
            };
            let stages = compile(None, before)?;
            // The ops after a window or a join, which see its outputs.
            let mut post = match window_at.or(join_at) {
                Some(k) => compile(None, &c.stages[k + 1..])?,
                None => Vec::new(),
            };
            let window = match window_at.map(|k| (k, &c.stages[k])) {
                Some((k, dab_plan::model::Stage::Aggregate(w))) => {
                    let late = match &w.window.late {
                        Some(name) => Some(sink_tx(name).ok_or_else(|| {
                            bad_key(format!("the late target `{name}` was not built"))
                        })?),
                        None => None,
                    };
                    let mut stage = WindowStage::new(&p.id, k, w, late, opts.state.as_ref())
                        .map_err(bad_key)?;
                    let (key, input) = input_of(plan, p);
                    let stats = sources
                        .iter()
                        .find(|s| s.key == key)
                        .map(|s| s.slot.stats.clone())
                        .or_else(|| {
                            st.inputs
                                .get(&key)
                                .and_then(|i| i.source.as_ref())
                                .map(|s| s.stats.clone())
                        });
                    // State per partition, mirrored to a changelog beside
                    // the source, where the source kind has one (Kafka).
                    let changelog = match (&opts.state, &input, &stats) {
                        (Some(s), Some(spec), Some(_)) if s.partitioned => self
                            .registry
                            .changelogs
                            .iter()
                            .find(|f| Some(f.kind()) == spec.kind),
                        _ => None,
                    };
                    if let (Some(factory), Some(spec)) = (changelog, &input) {
                        let topic = changelog_topic(&p.id);
                        // Off the async workers: it waits for the broker.
                        let opened = std::thread::scope(|s| {
                            s.spawn(|| factory.open(&spec.fields, &topic)).join()
                        })
                        .map_err(|_| bad_key("opening the changelog panicked".to_owned()))?
                        .map_err(|e| bad_key(format!("its window changelog: {e}")))?;
                        if let Some(stats) = &stats {
                            stage.partition_state(opened, stats.clone());
                        }
                    }
                    if let Some(stats) = stats {
                        stage.follow_partitions(stats);
                    }
                    Some(Box::new(WindowPart {
                        stage,
                        index: k,
                        post: std::mem::take(&mut post),
                        spec: (**w).clone(),
                        pipeline: p.id.clone(),
                        shutdown: self.shutdown.clone(),
                    }))
                }
                _ => None,
            };
            let (join, join_tx, retired) = match join_at.map(|k| (k, &c.stages[k])) {
                Some((k, dab_plan::model::Stage::Join(spec))) => {
                    let (tx, rx) = mpsc::channel(cap);
                    let retired = tokio_util::sync::CancellationToken::new();
                    let part = crate::join::JoinPart {
                        stage: crate::join::JoinStage::new(spec),
                        index: k,
                        right: Inlet::Channel(rx),
                        right_screen: Screen {
                            on_error: on_error(),
                        },
                        post: std::mem::take(&mut post),
                        shutdown: self.shutdown.clone(),
                        retired: retired.clone(),
                    };
                    (Some(Box::new(part)), Some(tx), Some(retired))
                }
                _ => (None, None, None),
            };
            // The samples of ops that keep their own, by stage position.
            let post_ops = window.iter().flat_map(|w| {
                w.post
                    .iter()
                    .enumerate()
                    .map(move |(j, s)| (w.index + 1 + j, s))
            });
            let join_post = join.iter().flat_map(|j| {
                j.post
                    .iter()
                    .enumerate()
                    .map(move |(i, s)| (j.index + 1 + i, s))
            });
            let mut ops: Vec<_> = stages
                .iter()
                .enumerate()
                .chain(post_ops)
                .chain(join_post)
                .filter_map(|(i, s)| s.metrics(&p.id, i))
                .collect();
            if let Some(j) = &join {
                ops.push(j.stage.metrics(&p.id, j.index));
            }
            let pm = Arc::new(pm.with_ops(ops));
            let mut outputs = Vec::new();
            // The outputs' names, in order: what `by` hashes over.
            let mut out_names = Vec::new();
            for o in &c.outputs {
                let Some(tx) = sink_tx(&o.target) else {
                    continue;
                };
                out_names.push(o.target.clone());
                let modifiers = compile(Some(&o.target), &o.modifiers)?;
                outputs.push(Output {
                    reroute: c.on_error.as_deref() != Some(o.target.as_str()),
                    tx,
                    modifiers,
                });
            }
            // A disk queue's records could be undecodable only if damaged;
            // they are screened the same way.
            let kafka_input = external_queues.contains_key(c.input.as_str())
                || matches!(endpoint(&c.input), Some(Endpoint::Bound { kind, .. }) if kind == "kafka");
            let screen = kafka_input.then(|| Screen {
                on_error: on_error(),
            });
            let (tx, rx) = mpsc::channel(cap);
            pipelines.push((
                p.id.clone(),
                PipelineSlot {
                    tx,
                    join_tx,
                    retired,
                    metrics: pm.clone(),
                    states,
                },
                PipelineTask {
                    input: Inlet::Channel(rx),
                    screen,
                    stages,
                    outputs,
                    when_full: c.when_full,
                    by: (!c.by.is_empty()).then(|| By {
                        keys: c.by.clone(),
                        hash: Rendezvous::new(out_names.iter().map(String::as_str)),
                    }),
                    metrics: pm,
                    force: self.force.clone(),
                    reliability: self.reliability.clone(),
                    on_error: on_error().map(|t| Arc::new(t) as Arc<dyn dab_api::batch::Reroute>),
                    window,
                    join,
                },
            ));
        }
        Ok(Staged {
            report,
            queues,
            sinks,
            sources,
            pipelines,
        })
    }
}

/// The changelog topic of a windowed pipeline's state: named by the
/// pipeline alone, so every process running the pipeline (whatever its
/// consumer group) shares it.
pub fn changelog_topic(pipeline: &str) -> String {
    format!("dab.changelog.{pipeline}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every built-in name maps to a kind the built-in connector lists
    /// register, in the role the plan gives the name.
    #[test]
    fn every_builtin_name_has_a_registered_kind() {
        let sources: Vec<&str> = dab_connectors::builtin_sources()
            .iter()
            .map(|f| f.kind())
            .collect();
        let sinks: Vec<&str> = dab_connectors::builtin_sinks()
            .iter()
            .map(|f| f.kind())
            .collect();
        assert_eq!(BUILTIN_KINDS.len(), dab_plan::model::BUILTIN_NAMES.len());
        for (name, role) in dab_plan::model::BUILTIN_NAMES {
            let kind = builtin_kind(name).unwrap_or_else(|| panic!("`{name}` has no kind"));
            let registered = match role {
                Role::Source => &sources,
                Role::Sink => &sinks,
                Role::Queue => panic!("`{name}` is a built-in queue"),
            };
            assert!(
                registered.contains(&kind),
                "`{name}` maps to `{kind}`, not among {registered:?}"
            );
        }
    }

    #[test]
    fn an_unknown_builtin_name_has_no_kind() {
        for name in ["Stderr", "blackhole", "", "Blackholes"] {
            assert_eq!(builtin_kind(name), None, "{name}");
        }
        assert_eq!(
            StartError::UnknownBuiltin("Stderr".to_owned()).to_string(),
            "`Stderr` is not a built-in connector of this build of dab"
        );
    }
}
