//! The writers' side of a disk queue: one record per event, in DAB's
//! protobuf codec, appended through the queue's owner. A write is taken
//! once appended and confirmed once durable (`Sink::confirms_writes`).

use std::sync::Arc;

use bytes::BytesMut;
use dab_api::connector::{
    Confirm, Confirmed, ConnectorError, Pending, Rejection, Sink, SinkError, Written,
};
use dab_api::metrics::ConnectorMetrics;
use dab_api::Event;
use dab_diskq::FRAME_HEADER;
use tokio::sync::oneshot;

use super::metrics::DiskQueueMetrics;
use super::owner::{Append, Owner};
use super::DiskConfig;
use crate::codec::proto;

pub(super) struct DiskSink {
    owner: Arc<Owner>,
    /// The largest record a segment holds.
    max_record: usize,
    metrics: Arc<DiskQueueMetrics>,
    buf: BytesMut,
}

impl DiskSink {
    pub(super) fn new(owner: Arc<Owner>, cfg: &DiskConfig) -> DiskSink {
        let metrics = Arc::new(DiskQueueMetrics::new(Arc::clone(&owner.metrics)));
        DiskSink {
            max_record: usize::try_from(cfg.segment_bytes)
                .unwrap_or(usize::MAX)
                .saturating_sub(FRAME_HEADER),
            owner,
            metrics,
            buf: BytesMut::new(),
        }
    }

    fn gone(&self) -> SinkError {
        SinkError::transient(ConnectorError::Other(format!(
            "disk queue `{}`: its thread has stopped",
            self.owner.queue
        )))
    }
}

#[async_trait::async_trait]
impl Sink for DiskSink {
    /// Appends and waits until the events are durable (the driver uses
    /// `write_confirmed`; this is the same write, confirmed in place).
    async fn write(&mut self, events: &[Event]) -> Result<Written, SinkError> {
        let mut pending = self.write_confirmed(events).await?;
        match pending.confirm.recv().await {
            Confirmed::Delivered { .. } => Ok(Written {
                rejected: pending.rejected,
            }),
            Confirmed::Failed(e) => Err(SinkError::transient(e)),
        }
    }

    fn confirms_writes(&self) -> bool {
        true
    }

    async fn write_confirmed(&mut self, events: &[Event]) -> Result<Pending, SinkError> {
        let mut records = Vec::with_capacity(events.len());
        // The event index of each record.
        let mut index = Vec::with_capacity(events.len());
        let mut rejected = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            proto::encode(ev, &mut self.buf);
            let rec = self.buf.split().freeze();
            if rec.len() > self.max_record {
                rejected.push(Rejection {
                    index: i,
                    reason: format!(
                        "event of {} bytes does not fit a segment of the disk queue `{}` (segment_bytes)",
                        rec.len(),
                        self.owner.queue
                    ),
                });
                continue;
            }
            records.push(rec);
            index.push(i);
        }
        let (taken, answer) = oneshot::channel();
        let (confirmer, confirm) = Confirm::channel();
        self.owner.append(Append {
            records,
            taken,
            confirm: confirmer,
        });
        // Waiting here while the queue is full is the back pressure: the
        // driver takes no more input meanwhile.
        let refused = match answer.await {
            Ok(Ok(refused)) => refused,
            Ok(Err(e)) => return Err(SinkError::transient(ConnectorError::Other(e))),
            Err(_) => return Err(self.gone()),
        };
        for r in refused {
            if let Some(&i) = index.get(r) {
                rejected.push(Rejection {
                    index: i,
                    reason: format!(
                        "disk queue `{}` is full (when_full: drop_newest)",
                        self.owner.queue
                    ),
                });
            }
        }
        rejected.sort_by_key(|r| r.index);
        Ok(Pending { rejected, confirm })
    }

    fn metrics(&self) -> Option<Arc<dyn ConnectorMetrics>> {
        Some(self.metrics.clone())
    }
}
