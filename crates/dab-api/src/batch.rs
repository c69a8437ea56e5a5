//! The unit that crosses channels: events plus their acknowledgement share.

use crate::ack::AckToken;
use crate::event::Event;

#[derive(Debug)]
pub struct Batch {
    pub events: Vec<Event>,
    pub ack: AckToken,
}

impl Batch {
    pub fn new(events: Vec<Event>, ack: AckToken) -> Batch {
        Batch { events, ack }
    }

    /// A copy for another output; both must be settled.
    pub fn share(&self) -> Batch {
        Batch {
            events: self.events.clone(),
            ack: self.ack.share(),
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
