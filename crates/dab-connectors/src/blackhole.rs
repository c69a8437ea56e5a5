//! `Blackhole`: accepts and discards everything (benchmarks, dry runs). The
//! runtime's sink metrics still count what it took.

use std::collections::BTreeMap;

use async_trait::async_trait;
use dab_api::{BuildError, ConfigValue, Event, Sink, SinkError, SinkFactory, Written};

#[derive(Debug, Default)]
pub struct Blackhole;

#[async_trait]
impl Sink for Blackhole {
    async fn write(&mut self, _events: &[Event]) -> Result<Written, SinkError> {
        Ok(Written::all())
    }
}

#[derive(Debug)]
pub struct BlackholeFactory;

impl SinkFactory for BlackholeFactory {
    fn kind(&self) -> &'static str {
        "blackhole"
    }

    fn build(
        &self,
        _name: &str,
        _fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Sink>, BuildError> {
        Ok(Box::new(Blackhole))
    }
}
