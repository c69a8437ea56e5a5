//! The unit that crosses channels: events plus their acknowledgement share,
//! and where a sink should send the events a peer refuses for good.

use std::sync::Arc;

use crate::ack::AckToken;
use crate::event::Event;

/// Where events that a sink's peer refused for good go: the `OnError`
/// output of the pipeline that sent the batch (SPEC section 11). The
/// runtime implements it; a sink never sees it.
#[async_trait::async_trait]
pub trait Reroute: Send + Sync + std::fmt::Debug {
    /// Hands the batch on, waiting for room. `Err` gives it back when the
    /// target is gone.
    async fn send(&self, batch: Batch) -> Result<(), Batch>;
}

#[derive(Debug)]
pub struct Batch {
    pub events: Vec<Event>,
    pub ack: AckToken,
    /// The sending pipeline's `OnError` target, set on the way to a sink.
    pub on_error: Option<Arc<dyn Reroute>>,
    /// Set by a source on events it handed on too often without delivery
    /// (a Kafka batch past `max_redeliveries`): the reading pipeline sends
    /// the whole batch to its `OnError` output before any stage, or counts
    /// it dropped (`retries_exhausted`). Each event says why in `dab.error`.
    pub retries_exhausted: bool,
}

impl Batch {
    pub fn new(events: Vec<Event>, ack: AckToken) -> Batch {
        Batch {
            events,
            ack,
            on_error: None,
            retries_exhausted: false,
        }
    }

    /// A copy for another output; both must be settled.
    pub fn share(&self) -> Batch {
        Batch {
            events: self.events.clone(),
            ack: self.ack.share(),
            on_error: self.on_error.clone(),
            retries_exhausted: self.retries_exhausted,
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.events.iter().map(Event::size_hint).sum()
    }
}
