#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use dab_api::connector::{Confirmed, SourceContext, SourceStats};
use dab_api::{Batch, Event, Text};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;

#[derive(Debug)]
struct Open;

impl dab_api::connector::Admission for Open {
    fn admit(&self) -> bool {
        true
    }
}

fn fields(dir: &std::path::Path, extra: &[(&str, ConfigValue)]) -> BTreeMap<String, ConfigValue> {
    let mut f = BTreeMap::new();
    f.insert(
        "path".to_owned(),
        ConfigValue::Str(dir.display().to_string()),
    );
    for (k, v) in extra {
        f.insert((*k).to_owned(), v.clone());
    }
    f
}

fn reader_fields(
    dir: &std::path::Path,
    queue: &str,
    reader: &str,
    extra: &[(&str, ConfigValue)],
) -> BTreeMap<String, ConfigValue> {
    let mut f = fields(dir, extra);
    f.insert("queue".to_owned(), ConfigValue::Str(queue.to_owned()));
    f.insert("reader".to_owned(), ConfigValue::Str(reader.to_owned()));
    f
}

fn event(i: u64) -> Event {
    let mut ev = Event {
        timestamp: 1_700_000_000_000_000_000 + i as i64,
        host: Text::from(format!("host-{}", i % 3)),
        ty: Text::from("chat.message"),
        offset: i,
        pid: 42,
        message: bytes::Bytes::from(format!("{{\"n\":{i}}}")),
        ..Event::default()
    };
    ev.tags = vec![
        (Text::from("team"), Text::from("x")),
        (Text::from("dab.sample_rate"), Text::from("4")),
    ];
    ev
}

/// The event's value, whatever raw bytes it carries.
type Value = (
    i64,
    String,
    String,
    u64,
    u32,
    Vec<u8>,
    Vec<(String, String)>,
);

fn value(ev: &Event) -> Value {
    (
        ev.timestamp,
        ev.host.to_string(),
        ev.ty.to_string(),
        ev.offset,
        ev.pid,
        ev.message.to_vec(),
        ev.tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

struct Reader {
    rx: mpsc::Receiver<Batch>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), dab_api::connector::ConnectorError>>,
}

fn start_reader(f: &BTreeMap<String, ConfigValue>) -> Reader {
    let source = DiskSourceFactory.build("Q:p", f).unwrap();
    let (tx, rx) = mpsc::channel(4);
    let stop = CancellationToken::new();
    let ctx = SourceContext {
        name: "Q:p".to_owned(),
        out: tx,
        shutdown: stop.clone(),
        stats: Arc::new(SourceStats::default()),
        admission: Arc::new(Open),
    };
    let task = tokio::spawn(source.run(ctx));
    Reader { rx, stop, task }
}

async fn next(r: &mut Reader) -> Batch {
    tokio::time::timeout(Duration::from_secs(10), r.rx.recv())
        .await
        .expect("a batch within 10 s")
        .expect("the reader is running")
}

/// The records the queue holds acknowledged, once they reach `want` (the
/// acknowledgement is written at the next sync), or after 5 s.
async fn acked_records(owner: &owner::Owner, want: u64) -> u64 {
    let mut n = 0;
    for _ in 0..500 {
        n = owner.metrics.snapshot().records_acked;
        if n == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    n
}

#[tokio::test]
async fn events_round_trip_acks_follow_durability_and_a_failed_batch_comes_again() {
    let dir = tempfile::tempdir().unwrap();
    let interval = [("fsync", ConfigValue::Int(20))];
    let f = fields(dir.path(), &interval);
    let mut sink = DiskSinkFactory.build("Q", &f).unwrap();
    assert!(sink.confirms_writes());
    let events: Vec<Event> = (0..100).map(event).collect();
    let mut pending = sink.write_confirmed(&events).await.unwrap();
    assert!(pending.rejected.is_empty());
    match tokio::time::timeout(Duration::from_secs(10), pending.confirm.recv()).await {
        Ok(Confirmed::Delivered { rejected }) => assert!(rejected.is_empty()),
        other => panic!("not confirmed: {other:?}"),
    }

    let rf = reader_fields(dir.path(), "Q", "svc/p", &interval);
    let mut reader = start_reader(&rf);
    let first = next(&mut reader).await;
    let got: Vec<_> = first.events.iter().map(value).collect();
    let want: Vec<_> = events.iter().map(value).collect();
    assert_eq!(got, want, "every field and tag survives the queue");
    // Failed: the same events come again.
    first.ack.fail();
    let again = next(&mut reader).await;
    assert_eq!(again.events.iter().map(value).collect::<Vec<_>>(), want);
    again.ack.complete();
    // The acknowledgement reaches the queue (written at the next sync).
    let owner = owner::Owner::get("Q", &DiskConfig::from_fields("Q", &f).unwrap(), None).unwrap();
    assert_eq!(acked_records(&owner, 100).await, 100);
    reader.stop.cancel();
    reader.task.await.unwrap().unwrap();
    drop((sink, owner));

    // Reopened: the reader's position held, so nothing comes again until
    // something new is written.
    let mut sink = DiskSinkFactory.build("Q", &f).unwrap();
    let mut reader = start_reader(&rf);
    let more: Vec<Event> = (100..110).map(event).collect();
    sink.write(&more).await.unwrap();
    let b = next(&mut reader).await;
    assert_eq!(
        b.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
        (100..110).collect::<Vec<_>>()
    );
    b.ack.complete();
    reader.stop.cancel();
    reader.task.await.unwrap().unwrap();
}

/// With `max_redeliveries: 1` a batch that fails is sent again once, then
/// once more marked `retries_exhausted` (for `OnError`); when even that
/// fails it is counted and acknowledged past, so the queue moves on.
/// Without a limit it keeps coming.
#[tokio::test]
async fn a_batch_that_keeps_failing_is_given_up_on_after_max_redeliveries() {
    let dir = tempfile::tempdir().unwrap();
    let opts = [
        ("fsync", ConfigValue::Int(20)),
        ("max_redeliveries", ConfigValue::Int(1)),
    ];
    let f = fields(dir.path(), &opts);
    let mut sink = DiskSinkFactory.build("Q", &f).unwrap();
    sink.write(&(0..10).map(event).collect::<Vec<_>>())
        .await
        .unwrap();
    let rf = reader_fields(dir.path(), "Q", "p", &opts);
    let mut reader = start_reader(&rf);
    let first = next(&mut reader).await;
    assert!(!first.retries_exhausted);
    first.ack.fail();
    let second = next(&mut reader).await;
    assert!(!second.retries_exhausted, "one redelivery first");
    second.ack.fail();
    let last = next(&mut reader).await;
    assert!(
        last.retries_exhausted,
        "then given up on, marked for OnError"
    );
    assert_eq!(last.len(), 10);
    last.ack.fail();
    // Acknowledged past: the queue's records are all acknowledged.
    let owner = owner::Owner::get("Q", &DiskConfig::from_fields("Q", &f).unwrap(), None).unwrap();
    assert_eq!(acked_records(&owner, 10).await, 10);
    reader.stop.cancel();
    reader.task.await.unwrap().unwrap();
    drop((sink, owner));

    // No limit (the default): failed three times, it still comes, unmarked.
    let dir = tempfile::tempdir().unwrap();
    let opts = [("fsync", ConfigValue::Int(20))];
    let f = fields(dir.path(), &opts);
    let mut sink = DiskSinkFactory.build("Q2", &f).unwrap();
    sink.write(&[event(1)]).await.unwrap();
    let mut reader = start_reader(&reader_fields(dir.path(), "Q2", "p", &opts));
    for _ in 0..3 {
        let b = next(&mut reader).await;
        assert!(!b.retries_exhausted);
        b.ack.fail();
    }
    let b = next(&mut reader).await;
    assert!(!b.retries_exhausted);
    b.ack.complete();
    reader.stop.cancel();
    reader.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_full_queue_holds_the_write_until_a_reader_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let opts = [
        ("fsync", ConfigValue::Str("always".to_owned())),
        ("max_bytes", ConfigValue::Int(1 << 20)),
        ("segment_bytes", ConfigValue::Int(64 << 10)),
    ];
    let f = fields(dir.path(), &opts);
    let mut sink = DiskSinkFactory.build("Full", &f).unwrap();
    let big = |i: u64| {
        let mut ev = event(i);
        ev.message = bytes::Bytes::from(vec![b'x'; 4000]);
        ev
    };
    // About 1.2 MiB: more than max_bytes.
    let events: Vec<Event> = (0..300).map(big).collect();
    let rf = reader_fields(dir.path(), "Full", "r", &opts);
    let mut reader = start_reader(&rf);
    let write = tokio::spawn(async move {
        let w = sink.write(&events).await;
        (w.map(|w| w.rejected.len()), sink)
    });
    // The first records arrive while the write is held back.
    let mut seen = 0;
    let mut held_back = false;
    while seen < 300 {
        let b = next(&mut reader).await;
        if !write.is_finished() {
            held_back = true;
        }
        seen += b.events.len();
        b.ack.complete();
        let usage: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert!(usage <= 1 << 20, "usage {usage} over max_bytes");
    }
    assert!(held_back, "the write was never held back");
    let (w, _sink) = tokio::time::timeout(Duration::from_secs(20), write)
        .await
        .expect("the write ends once readers made room")
        .unwrap();
    assert_eq!(w.unwrap(), 0);
    reader.stop.cancel();
    reader.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn drop_newest_refuses_what_does_not_fit_and_two_queues_cannot_share_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let opts = [
        ("fsync", ConfigValue::Str("always".to_owned())),
        ("max_bytes", ConfigValue::Int(1 << 20)),
        ("when_full", ConfigValue::Str("drop_newest".to_owned())),
    ];
    let f = fields(dir.path(), &opts);
    let mut sink = DiskSinkFactory.build("Drop", &f).unwrap();
    let events: Vec<Event> = (0..400)
        .map(|i| {
            let mut ev = event(i);
            ev.message = bytes::Bytes::from(vec![b'y'; 4000]);
            ev
        })
        .collect();
    let w = sink.write(&events).await.unwrap();
    assert!(!w.rejected.is_empty(), "nothing refused");
    assert!(w.rejected.len() < 400, "everything refused");
    // The newest are refused: the indices are the tail of the write.
    let first = w.rejected[0].index;
    assert_eq!(
        w.rejected.iter().map(|r| r.index).collect::<Vec<_>>(),
        (first..400).collect::<Vec<_>>()
    );
    assert!(
        w.rejected[0].reason.contains("full"),
        "{}",
        w.rejected[0].reason
    );
    match DiskSinkFactory.build("Other", &f) {
        Err(e) => assert!(e.reason.contains("cannot share"), "{}", e.reason),
        Ok(_) => panic!("a second queue opened the same directory"),
    }
}

#[test]
fn settings_are_read_with_defaults() {
    let dir = std::path::Path::new("/tmp/q");
    let c = DiskConfig::from_fields("Q", &fields(dir, &[])).unwrap();
    assert_eq!(
        (c.max_bytes, c.segment_bytes, c.fsync, c.when_full),
        (
            DEFAULT_MAX_BYTES,
            DEFAULT_SEGMENT_BYTES,
            FsyncPolicy::Interval(DEFAULT_FSYNC),
            WhenFull::Block
        )
    );
    let small = DiskConfig::from_fields(
        "Q",
        &fields(dir, &[("max_bytes", ConfigValue::Int(1 << 20))]),
    )
    .unwrap();
    assert_eq!(small.segment_bytes, 256 << 10);
    let bad = DiskConfig::from_fields(
        "Q",
        &fields(
            dir,
            &[
                ("max_bytes", ConfigValue::Int(1 << 20)),
                ("segment_bytes", ConfigValue::Int(1 << 20)),
            ],
        ),
    );
    assert!(bad.is_err());
    assert_eq!(reader_name("svc/name"), "svc.name");
}

#[test]
fn opening_drops_the_positions_of_readers_no_pipeline_has() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DiskConfig::from_fields("R", &fields(dir.path(), &[])).unwrap();
    let both = ["svc/a".to_owned(), "b".to_owned()].map(|r| reader_name(&r));
    drop(owner::Owner::get("R", &cfg, Some(&both)).unwrap());
    let pos = |r: &str| dir.path().join("readers").join(format!("{r}.pos"));
    assert!(pos("svc.a").exists() && pos("b").exists());
    // Without a list, nothing is dropped.
    drop(owner::Owner::get("R", &cfg, None).unwrap());
    assert!(pos("b").exists());
    drop(owner::Owner::get("R", &cfg, Some(&["svc.a".to_owned()])).unwrap());
    assert!(pos("svc.a").exists(), "a reader the set has is kept");
    assert!(!pos("b").exists(), "a reader the set lacks is dropped");
}
