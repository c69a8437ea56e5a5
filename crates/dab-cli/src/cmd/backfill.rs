//! `dab backfill PATH... --pipeline ID --from TIME --to TIME` (SPEC
//! section 8): runs one pipeline whose input is a Kafka source or queue
//! over the messages of a past time range, writes its sinks, shows its
//! progress and ends.
//!
//! The range becomes offsets with the broker's offsets-for-times (the
//! messages' Kafka timestamps): per partition, the first offset at or after
//! `--from` up to the first at or after `--to`. The input is then read with
//! those partitions assigned (no group membership, nothing committed), and
//! the source ends once every partition is read to its end and every batch
//! is settled. Running it twice leaves the same files: a parquet sink names
//! files by the offsets they hold and skips what committed files already
//! hold (docs/runtime.md).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use dab_api::ConfigValue;
use dab_connectors::kafka::{BoundRange, KafkaSourceConfig, BACKFILL_FIELD};
use dab_plan::model::{Endpoint, Role};
use dab_runtime::{Registry, RunOptions};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::args::{BackfillArgs, Format};
use crate::cmd::validate::report_to;
use crate::input::load_and_check;

/// How long one metadata or offsets request may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// Milliseconds since the epoch of an RFC 3339 time.
fn millis(flag: &str, text: &str) -> anyhow::Result<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .with_context(|| {
            format!("{flag} `{text}` is not an RFC 3339 time such as 2024-01-01T00:00:00Z")
        })
}

pub fn run(a: BackfillArgs) -> anyhow::Result<ExitCode> {
    crate::cmd::run::init_logs(a.log_format);
    let (from, to) = (millis("--from", &a.from)?, millis("--to", &a.to)?);
    if to <= from {
        bail!("--to {} is not after --from {}", a.to, a.from);
    }
    let set = load_and_check(
        &a.paths,
        a.config.config.as_deref(),
        &a.config,
        &dab_runtime::ops::plan_options(),
    )?;
    if set.has_errors() {
        report_to(&mut std::io::stderr().lock(), &set, Format::Human)?;
        return Ok(ExitCode::from(1));
    }
    let mut plan = set.plan;
    let Some(p) = plan.pipeline(&a.pipeline) else {
        let ids: Vec<&str> = plan.pipelines.iter().map(|p| p.id.as_str()).collect();
        bail!(
            "no pipeline `{}` in the set; its pipelines are: {}",
            a.pipeline,
            ids.join(", ")
        );
    };
    if let Some(j) = p.config.join() {
        bail!(
            "pipeline `{}` joins `{}`: backfill replays one input's range, and a join \
             would wait on its second stream, read live, without end; not supported",
            a.pipeline,
            j.stream
        );
    }
    let input = p.config.input.clone();
    let (mut fields, queue) = match plan.endpoints.get(&input) {
        Some(Endpoint::Bound {
            role: role @ (Role::Source | Role::Queue),
            kind,
            fields,
            ..
        }) if kind == "kafka" => (fields.clone(), *role == Role::Queue),
        _ => bail!(
            "pipeline `{}` reads `{input}`, which is not a Kafka source or queue: \
             backfill replays a Kafka topic's retained messages",
            a.pipeline
        ),
    };
    let cfg =
        KafkaSourceConfig::from_fields(&input, &fields).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ranges = offsets_for_range(&cfg, &input, from, to)?;
    let total: i64 = ranges.iter().map(|r| r.end - r.start).sum();
    for r in &ranges {
        tracing::info!(topic = %r.topic, partition = r.partition, start = r.start, end = r.end, "backfill range");
    }
    eprintln!(
        "dab backfill: pipeline `{}`, {} messages in {} partitions of {:?}",
        a.pipeline,
        total,
        ranges.len(),
        cfg.topics
    );

    // This pipeline only, its input read over the ranges.
    fields.insert(
        BACKFILL_FIELD.to_owned(),
        ConfigValue::Str(BoundRange::encode(&ranges)),
    );
    fields.insert(
        "group".to_owned(),
        ConfigValue::Str(format!("dab.backfill.{}", a.pipeline)),
    );
    if queue {
        // A queue's messages are DAB's own (as `dab run` reads them).
        fields.insert(
            "reserved_names".to_owned(),
            ConfigValue::Str("keep".to_owned()),
        );
    }
    plan.endpoints.insert(
        input.clone(),
        Endpoint::Bound {
            role: Role::Source,
            kind: "kafka".to_owned(),
            fields,
            schema: None,
        },
    );
    plan.pipelines.retain(|q| q.id == a.pipeline);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(
        plan,
        &input,
        u64::try_from(total).unwrap_or(0),
        a.quiet,
    ))
}

/// Per partition of the source's topics: the first offset at or after
/// `from` to the first at or after `to` (the partition's end when no
/// message is that late).
fn offsets_for_range(
    cfg: &KafkaSourceConfig,
    name: &str,
    from: i64,
    to: i64,
) -> anyhow::Result<Vec<BoundRange>> {
    let consumer: BaseConsumer = cfg
        .client_config(name)
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot make a Kafka client")?;
    let mut out = Vec::new();
    for topic in &cfg.topics {
        let meta = consumer
            .fetch_metadata(Some(topic), BROKER_TIMEOUT)
            .with_context(|| format!("cannot read the metadata of topic `{topic}`"))?;
        let partitions: Vec<i32> = meta
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            bail!("topic `{topic}` has no partitions (does it exist?)");
        }
        let at = |ms: i64| -> anyhow::Result<Vec<(i32, Offset)>> {
            let mut list = TopicPartitionList::new();
            for p in &partitions {
                list.add_partition_offset(topic, *p, Offset::Offset(ms))?;
            }
            let found = consumer
                .offsets_for_times(list, BROKER_TIMEOUT)
                .with_context(|| format!("offsets-for-times of topic `{topic}`"))?;
            Ok(found
                .elements()
                .iter()
                .map(|e| (e.partition(), e.offset()))
                .collect())
        };
        let (starts, ends) = (at(from)?, at(to)?);
        for p in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, *p, BROKER_TIMEOUT)
                .with_context(|| format!("watermarks of `{topic}` partition {p}"))?;
            let resolve = |list: &[(i32, Offset)]| match list.iter().find(|(q, _)| q == p) {
                Some((_, Offset::Offset(o))) => (*o).clamp(low, high),
                _ => high,
            };
            let (start, end) = (resolve(&starts), resolve(&ends));
            out.push(BoundRange {
                topic: topic.clone(),
                partition: *p,
                start,
                end: end.max(start),
            });
        }
    }
    Ok(out)
}

async fn serve(
    plan: dab_plan::Plan,
    input: &str,
    total: u64,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let registry = Registry::new(
        dab_connectors::builtin_sources(),
        dab_connectors::builtin_sinks(),
    )
    .with_tables(dab_connectors::builtin_tables())
    .with_changelogs(dab_connectors::builtin_changelogs());
    let running = Arc::new(dab_runtime::start(
        &plan,
        &registry,
        &RunOptions::default(),
    )?);
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} messages ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let read = || {
        running
            .metrics
            .sources
            .snapshot()
            .iter()
            .filter(|(n, _)| n == input)
            .map(|(_, s)| s.events.load(std::sync::atomic::Ordering::Relaxed))
            .sum::<u64>()
    };
    let mut tenth = 0;
    let done = running.wait();
    tokio::pin!(done);
    loop {
        tokio::select! {
            () = &mut done => break,
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                let n = read();
                bar.set_position(n.min(total));
                if quiet && total > 0 && n * 10 / total > tenth {
                    tenth = n * 10 / total;
                    eprintln!("dab backfill: {n}/{total} messages");
                }
            }
        }
    }
    bar.set_position(read().min(total));
    bar.finish();
    let failures = running.failures();
    for f in &failures {
        eprintln!("dab: {f}");
    }
    let abandoned = running.abandoned();
    if abandoned > 0 {
        eprintln!("dab: {abandoned} events abandoned");
        return Ok(ExitCode::from(3));
    }
    if failures.is_empty() {
        eprintln!("dab backfill: done, {} messages read", read());
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}
