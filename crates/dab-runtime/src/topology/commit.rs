//! The second half of a start or reload: starts what `build` made, hands
//! inputs their new readers and retires what was replaced. Cannot fail.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use dab_api::connector::Admission;
use dab_api::{Batch, SourceContext};
use dab_plan::model::Pipeline;
use dab_plan::Plan;
use tokio::sync::{mpsc, watch};

use crate::admission::RuntimeAdmission;
use crate::metrics::{InputMetrics, Metrics, UndeliveredCounts};
use crate::output::{QueueReader, QueueWriter};
use crate::pipeline::Inlet;

use super::build::{input_of, inputs_of, join_input_of, Staged, StagedSource};
use super::route::route;
use super::state::{InputSlot, Reader, Readers, SinkSlot, SourceSlot, State};
use super::{finish, ReloadReport, Running};

impl Running {
    /// Starts what `build` made and retires what it replaces. Cannot fail.
    pub(super) fn commit(
        &self,
        plan: &Plan,
        selected: &[&Pipeline],
        st: &mut State,
        staged: Staged,
    ) -> ReloadReport {
        let Staged {
            report,
            queues,
            sinks,
            sources,
            pipelines,
        } = staged;
        let m = &self.metrics;
        let channel =
            |owner: String, tx: &mpsc::Sender<Batch>| m.channels.push((owner, tx.downgrade()));

        // New memory queues; their readers become inputs below.
        let mut queue_readers: HashMap<String, QueueReader> = HashMap::new();
        for (name, w, r) in queues {
            st.queues.insert(name.clone(), w);
            queue_readers.insert(name, r);
        }
        // Sinks: the new ones start; a replaced one drains what the
        // pipelines it served still send, then ends.
        for (name, slot, task) in sinks {
            if !m
                .sinks
                .snapshot()
                .iter()
                .any(|x| Arc::ptr_eq(x, &slot.metrics))
            {
                m.sinks.push(slot.metrics.clone());
            }
            if let Some(c) = &slot.connector {
                m.connectors.push(c.clone());
            }
            channel(format!("sink:{name}"), &slot.tx);
            self.health
                .spawn(&self.tracker, format!("sink `{name}`"), task.run());
            let shared = slot.metrics.clone();
            if let Some(old) = st.sinks.insert(name, slot) {
                retire_sink(m, &old, Arc::ptr_eq(&old.metrics, &shared));
            }
        }
        // Pipelines: new ones start; replaced and removed ones drain.
        for (id, slot, task) in pipelines {
            m.pipelines.push(slot.metrics.clone());
            channel(format!("pipeline:{id}"), &slot.tx);
            if let Some(tx) = &slot.join_tx {
                channel(format!("pipeline:{id}:join"), tx);
            }
            self.health
                .spawn(&self.tracker, format!("pipeline `{id}`"), task.run());
            if let Some(old) = st.pipelines.insert(id, slot) {
                retire_pipeline(m, &old);
            }
        }
        for id in &report.removed {
            if let Some(old) = st.pipelines.remove(id) {
                retire_pipeline(m, &old);
            }
        }
        // Sources whose binding changed stop; their routers hand what is
        // left to the pipelines they served.
        let mut new_sources: HashMap<String, StagedSource> =
            sources.into_iter().map(|s| (s.key.clone(), s)).collect();
        for key in new_sources.keys() {
            if let Some(old) = st.inputs.remove(key) {
                retire_input(m, old);
            }
            self.health.source_cleared(key);
        }
        // Inputs: each gets the readers the new plan gives it.
        let mut readers: BTreeMap<String, Readers> = BTreeMap::new();
        for p in selected {
            let Some(slot) = st.pipelines.get(&p.id) else {
                continue;
            };
            let (key, _) = input_of(plan, p);
            readers.entry(key).or_default().push((
                p.id.clone(),
                Reader {
                    tx: slot.tx.clone(),
                    when_full: p.config.input_when_full,
                    metrics: slot.metrics.clone(),
                },
            ));
            // A `Join`'s stream: the pipeline reads it through a second
            // inlet, always waited for (`block`).
            if let (Some((key, _)), Some(tx)) = (join_input_of(plan, p), &slot.join_tx) {
                readers.entry(key).or_default().push((
                    p.id.clone(),
                    Reader {
                        tx: tx.clone(),
                        when_full: dab_plan::model::WhenFull::Block,
                        metrics: slot.metrics.clone(),
                    },
                ));
            }
        }
        // Memory queues nobody here reads still get a router, which fails
        // what is written to them (W001, or read by a service run elsewhere).
        for name in st.queues.keys() {
            readers.entry(name.clone()).or_default();
        }
        let queue_gauges: Vec<_> = st.queues.values().map(QueueWriter::fill_gauge).collect();
        for (key, list) in readers {
            if let Some(slot) = st.inputs.get(&key) {
                slot.readers.send_replace(list);
                continue;
            }
            let (wtx, wrx) = watch::channel(list);
            let im = Arc::new(InputMetrics {
                name: key.clone(),
                undelivered: UndeliveredCounts::new(m.abandoned.clone()),
            });
            if let Some(staged) = new_sources.remove(&key) {
                self.spawn_source(&key, staged.source, &staged.slot, staged.tx, &queue_gauges);
                m.inputs.push(im.clone());
                self.health.spawn(
                    &self.tracker,
                    format!("router of `{key}`"),
                    route(
                        Inlet::Channel(staged.rx),
                        wrx,
                        im.clone(),
                        self.force.clone(),
                    ),
                );
                st.inputs.insert(
                    key,
                    InputSlot {
                        readers: wtx,
                        metrics: im,
                        source: Some(staged.slot),
                    },
                );
            } else if let Some(q) = queue_readers.remove(&key) {
                m.inputs.push(im.clone());
                self.health.spawn(
                    &self.tracker,
                    format!("router of `{key}`"),
                    route(Inlet::Queue(q), wrx, im.clone(), self.force.clone()),
                );
                st.inputs.insert(
                    key,
                    InputSlot {
                        readers: wtx,
                        metrics: im,
                        source: None,
                    },
                );
            }
        }
        // Inputs no pipeline reads any more: sources stop; memory queues
        // that nothing writes either are dropped once drained.
        let keep: std::collections::HashSet<String> = selected
            .iter()
            .flat_map(|p| inputs_of(plan, p).map(|(key, _)| key))
            .chain(st.queues.keys().cloned())
            .collect();
        let gone: Vec<String> = st
            .inputs
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(old) = st.inputs.remove(&key) {
                retire_input(m, old);
            }
            self.health.source_cleared(&key);
        }
        // Sinks and queues nothing writes any more.
        let written: std::collections::HashSet<&str> =
            selected.iter().flat_map(|p| p.config.writes()).collect();
        let unused: Vec<String> = st
            .sinks
            .keys()
            .filter(|k| !written.contains(k.as_str()))
            .cloned()
            .collect();
        for name in unused {
            if let Some(old) = st.sinks.remove(&name) {
                retire_sink(m, &old, false);
            }
        }
        let read: std::collections::HashSet<&str> =
            selected.iter().flat_map(|p| p.config.reads()).collect();
        st.queues
            .retain(|name, _| written.contains(name.as_str()) || read.contains(name.as_str()));
        m.channels.retain(|(_, w)| w.upgrade().is_some());
        report
    }

    fn spawn_source(
        &self,
        name: &str,
        source: Box<dyn dab_api::Source>,
        slot: &SourceSlot,
        out: mpsc::Sender<Batch>,
        queue_gauges: &[crate::output::FillGauge],
    ) {
        let m = &self.metrics;
        m.sources.push((name.to_owned(), slot.stats.clone()));
        if let Some(c) = &slot.connector {
            m.connectors.push(c.clone());
        }
        m.channels.push((format!("source:{name}"), out.downgrade()));
        let admission: Arc<dyn Admission> = Arc::new(RuntimeAdmission {
            rss: self.rss.clone(),
            max_rss: self.opts.max_rss_bytes,
            out: out.downgrade(),
            queues: queue_gauges.to_vec(),
            high_water: self.opts.queue_high_water,
        });
        let ctx = SourceContext {
            name: name.to_owned(),
            out,
            shutdown: slot.stop.clone(),
            stats: slot.stats.clone(),
            admission,
        };
        let failures = self.failures.clone();
        let health = self.health.clone();
        let stop = slot.stop.clone();
        let stop_all = self.shutdown.clone();
        // A source that a reload started (the first start is `plan: None`)
        // and that fails (a port in use) must not stop everything else.
        let fatal = self.state_is_first.load(Ordering::Acquire);
        let metrics = self.metrics.clone();
        let stats = slot.stats.clone();
        let live = self.live_sources.clone();
        let state = self.state.clone();
        let tracker = self.tracker.clone();
        let name = name.to_owned();
        if source.announces_serving() {
            self.health.source_announcing(&name, slot.stats.clone());
        }
        live.fetch_add(1, Ordering::AcqRel);
        self.tracker.spawn(async move {
            let ended = source.run(ctx).await;
            health.source_ended(&name, &stats);
            // What the source read but could not hand on is lost for good:
            // it counts towards the forced-stop total (and exit status).
            metrics
                .abandoned
                .add(stats.abandoned.load(Ordering::Relaxed));
            // A source a reload started that failed is no end of input:
            // the process waits for a reload that fixes its binding.
            let by_itself = ended.is_ok() || fatal;
            if let Err(e) = ended {
                // A source a reload retired says nothing about the one
                // that replaced it under the same name.
                let retired = stop.is_cancelled() && !stop_all.is_cancelled();
                if !retired {
                    health.source_failed(&name, e.to_string());
                }
                if fatal {
                    tracing::error!(source = %name, error = %e, "source failed; shutting down");
                    if let Ok(mut f) = failures.lock() {
                        f.push(format!("source `{name}`: {e}"));
                    }
                    stop_all.cancel();
                } else {
                    metrics.reload.failed.add(1);
                    tracing::error!(source = %name, error = %e, "source started by a reload failed; the rest keeps running; fix the binding and reload");
                }
            }
            // The last source ended by itself (finite input): drain and end.
            if live.fetch_sub(1, Ordering::AcqRel) == 1 && by_itself {
                finish(&state, &tracker);
            }
        });
    }
}

fn retire_sink(m: &Metrics, old: &SinkSlot, metrics_live_on: bool) {
    if !metrics_live_on {
        m.sinks.retain(|s| !Arc::ptr_eq(s, &old.metrics));
    }
    if let Some(c) = &old.connector {
        m.connectors.retain(|x| !Arc::ptr_eq(x, c));
    }
}

fn retire_pipeline(m: &Metrics, old: &super::state::PipelineSlot) {
    m.pipelines.retain(|p| !Arc::ptr_eq(p, &old.metrics));
    if let Some(r) = &old.retired {
        r.cancel();
    }
}

fn retire_input(m: &Metrics, old: InputSlot) {
    m.inputs.retain(|i| !Arc::ptr_eq(i, &old.metrics));
    if let Some(s) = old.source {
        s.stop.cancel();
        m.sources.retain(|(_, st)| !Arc::ptr_eq(st, &s.stats));
        if let Some(c) = &s.connector {
            m.connectors.retain(|x| !Arc::ptr_eq(x, c));
        }
    }
}
