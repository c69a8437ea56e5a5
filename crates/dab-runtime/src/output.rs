//! Where a pipeline's batches go: a bounded channel (a sink's input, or a
//! reader pipeline's input) or a memory queue bounded in events and bytes.
//! `send` waits for room (back pressure); `try_send` never waits, for
//! `when_full = drop_newest`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use dab_api::Batch;
use tokio::sync::{mpsc, Semaphore};

use crate::metrics::QueueMetrics;

/// The writing end of an in-process queue. When every writer is gone the
/// queue's reader drains what is left and ends.
#[derive(Debug, Clone)]
pub struct QueueWriter {
    tx: mpsc::UnboundedSender<(Batch, Permits)>,
    /// One permit per event of room; taken by writers, given back by the
    /// reader once a batch has moved on.
    room: Arc<Semaphore>,
    capacity: u32,
    /// One permit per KiB of event bytes, the same way.
    kib_room: Arc<Semaphore>,
    kib_capacity: u32,
    metrics: Arc<QueueMetrics>,
}

/// What a queued batch holds of the queue's room.
#[derive(Debug, Clone, Copy)]
struct Permits {
    events: u32,
    kib: u32,
}

/// The reading end: the runtime's fan-out task owns it.
#[derive(Debug)]
pub struct QueueReader {
    rx: mpsc::UnboundedReceiver<(Batch, Permits)>,
    room: Arc<Semaphore>,
    kib_room: Arc<Semaphore>,
    metrics: Arc<QueueMetrics>,
}

/// A queue holding at most `capacity` events and `capacity_bytes` bytes of
/// events (rounded up to KiB).
pub fn memory_queue(
    capacity: u32,
    capacity_bytes: u64,
    metrics: Arc<QueueMetrics>,
) -> (QueueWriter, QueueReader) {
    let capacity = capacity.max(1);
    let kib_capacity = u32::try_from(capacity_bytes.div_ceil(1024))
        .unwrap_or(u32::MAX)
        .clamp(1, Semaphore::MAX_PERMITS as u32);
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(capacity as usize));
    let kib_room = Arc::new(Semaphore::new(kib_capacity as usize));
    (
        QueueWriter {
            tx,
            room: room.clone(),
            capacity,
            kib_room: kib_room.clone(),
            kib_capacity,
            metrics: metrics.clone(),
        },
        QueueReader {
            rx,
            room,
            kib_room,
            metrics,
        },
    )
}

impl QueueReader {
    /// Forced stop: closes the queue to writers and takes out what it
    /// holds, so that it can be failed and counted.
    pub fn close_and_drain(mut self) -> Vec<Batch> {
        self.rx.close();
        let mut out = Vec::new();
        while let Ok((batch, _)) = self.rx.try_recv() {
            self.metrics
                .depth_events
                .fetch_sub(batch.len() as u64, Ordering::Relaxed);
            out.push(batch);
        }
        out
    }

    pub async fn recv(&mut self) -> Option<Batch> {
        let (batch, permits) = self.rx.recv().await?;
        self.metrics
            .depth_events
            .fetch_sub(batch.len() as u64, Ordering::Relaxed);
        self.room.add_permits(permits.events as usize);
        self.kib_room.add_permits(permits.kib as usize);
        Some(batch)
    }
}

impl QueueWriter {
    fn permits_for(&self, b: &Batch) -> Permits {
        // A batch larger than the queue takes the whole queue, not forever.
        Permits {
            events: u32::try_from(b.len())
                .unwrap_or(u32::MAX)
                .clamp(1, self.capacity),
            kib: u32::try_from(b.bytes().div_ceil(1024))
                .unwrap_or(u32::MAX)
                .clamp(1, self.kib_capacity),
        }
    }

    async fn send(&self, b: Batch) -> Result<(), Batch> {
        let n = self.permits_for(&b);
        match self.room.acquire_many(n.events).await {
            Ok(p) => p.forget(),
            Err(_) => return Err(b),
        }
        match self.kib_room.acquire_many(n.kib).await {
            Ok(p) => p.forget(),
            Err(_) => {
                self.room.add_permits(n.events as usize);
                return Err(b);
            }
        }
        self.push(b, n)
    }

    fn try_send(&self, b: Batch) -> Result<(), Batch> {
        let n = self.permits_for(&b);
        match self.room.try_acquire_many(n.events) {
            Ok(p) => p.forget(),
            Err(_) => return Err(b),
        }
        match self.kib_room.try_acquire_many(n.kib) {
            Ok(p) => p.forget(),
            Err(_) => {
                self.room.add_permits(n.events as usize);
                return Err(b);
            }
        }
        self.push(b, n)
    }

    fn push(&self, b: Batch, n: Permits) -> Result<(), Batch> {
        let len = b.len() as u64;
        match self.tx.send((b, n)) {
            Ok(()) => {
                self.metrics.events.add(len);
                self.metrics.depth_events.fetch_add(len, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::SendError((b, n))) => {
                self.room.add_permits(n.events as usize);
                self.kib_room.add_permits(n.kib as usize);
                Err(b)
            }
        }
    }

    /// A gauge of how full the queue is, which does not keep it open.
    pub fn fill_gauge(&self) -> FillGauge {
        FillGauge {
            room: self.room.clone(),
            capacity: self.capacity,
            kib_room: self.kib_room.clone(),
            kib_capacity: self.kib_capacity,
        }
    }
}

/// How full a memory queue is, for admission control.
#[derive(Debug, Clone)]
pub struct FillGauge {
    room: Arc<Semaphore>,
    capacity: u32,
    kib_room: Arc<Semaphore>,
    kib_capacity: u32,
}

impl FillGauge {
    /// The fuller of the two bounds, 0.0 to 1.0.
    pub fn fill(&self) -> f64 {
        let events = 1.0 - self.room.available_permits() as f64 / f64::from(self.capacity);
        let bytes = 1.0 - self.kib_room.available_permits() as f64 / f64::from(self.kib_capacity);
        events.max(bytes)
    }
}

/// One output of a pipeline.
#[derive(Debug, Clone)]
pub enum OutputTx {
    Channel(mpsc::Sender<Batch>),
    Queue(QueueWriter),
}

impl OutputTx {
    /// Waits for room. `Err` gives the batch back when the reader is gone.
    pub async fn send(&self, b: Batch) -> Result<(), Batch> {
        match self {
            OutputTx::Channel(tx) => tx.send(b).await.map_err(|e| e.0),
            OutputTx::Queue(q) => q.send(b).await,
        }
    }

    /// Never waits. `Err` gives the batch back when there is no room.
    pub fn try_send(&self, b: Batch) -> Result<(), Batch> {
        match self {
            OutputTx::Channel(tx) => tx.try_send(b).map_err(|e| match e {
                mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => b,
            }),
            OutputTx::Queue(q) => q.try_send(b),
        }
    }
}

#[async_trait::async_trait]
impl dab_api::batch::Reroute for OutputTx {
    async fn send(&self, b: Batch) -> Result<(), Batch> {
        OutputTx::send(self, b).await
    }
}
