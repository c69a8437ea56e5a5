//! `Generator`: deterministic synthetic events (SPEC section 2). The same
//! seed gives the same hosts, pids, types, offsets and payloads; offsets are
//! real per (host, pid, type) sequences, so reliability checks downstream
//! see no gaps. Payloads come from a pool made once, so generating costs a
//! few reference-count bumps per event, not an allocation.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use dab_api::config::Fields;
use dab_api::connector::SourceStats;
use dab_api::{
    AckToken, Batch, BuildError, ConfigValue, ConnectorError, Event, Source, SourceContext,
    SourceFactory, Text,
};
use rand::{Rng, SeedableRng};

/// Events per batch.
const BATCH: usize = 1024;

#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    /// Events per second; `None` is as fast as the pipeline takes them.
    pub rate: Option<f64>,
    /// `None` never ends.
    pub count: Option<u64>,
    pub types: Vec<String>,
    pub payload_bytes: usize,
    pub seed: u64,
    pub hosts: Vec<String>,
    pub pids: u32,
}

impl GeneratorConfig {
    /// The defaults of the built-in `Generator` (SPEC section 2).
    pub fn builtin() -> GeneratorConfig {
        GeneratorConfig {
            rate: None,
            count: Some(1000),
            types: vec!["A".into(), "B".into()],
            payload_bytes: 100,
            seed: 1,
            hosts: vec!["gen-1".into()],
            pids: 1,
        }
    }

    pub fn from_fields(fields: &BTreeMap<String, ConfigValue>) -> GeneratorConfig {
        let f = Fields(fields);
        let d = GeneratorConfig::builtin();
        GeneratorConfig {
            rate: f.number("rate").filter(|r| *r > 0.0),
            // `count: 0` means unbounded.
            count: match f.int("count") {
                Some(0) => None,
                Some(n) => u64::try_from(n).ok(),
                None => d.count,
            },
            types: f
                .str_list("types")
                .map(|v| v.into_iter().map(str::to_owned).collect())
                .filter(|v: &Vec<String>| !v.is_empty())
                .unwrap_or(d.types),
            payload_bytes: f
                .int("payload_bytes")
                .and_then(|v| usize::try_from(v).ok())
                .unwrap_or(d.payload_bytes),
            seed: f.int("seed").map_or(d.seed, |s| s as u64),
            hosts: f
                .str_list("hosts")
                .map(|v| v.into_iter().map(str::to_owned).collect())
                .filter(|v: &Vec<String>| !v.is_empty())
                .unwrap_or(d.hosts),
            pids: f
                .int("pids")
                .and_then(|v| u32::try_from(v).ok())
                .filter(|p| *p > 0)
                .unwrap_or(d.pids),
        }
    }
}

#[derive(Debug)]
pub struct Generator {
    config: GeneratorConfig,
}

impl Generator {
    pub fn new(config: GeneratorConfig) -> Generator {
        Generator { config }
    }
}

/// Produces the event stream; separate from the task so benches and tests
/// can drive it directly.
#[derive(Debug)]
pub struct EventMaker {
    rng: rand::rngs::StdRng,
    hosts: Vec<Text>,
    types: Vec<Text>,
    pids: u32,
    payloads: Vec<Bytes>,
    /// Next offset per (host, pid, type) index.
    offsets: Vec<u64>,
    n: u64,
}

impl EventMaker {
    pub fn new(c: &GeneratorConfig) -> EventMaker {
        let mut rng = rand::rngs::StdRng::seed_from_u64(c.seed);
        let payloads = (0..64)
            .map(|_| {
                let s: String = (0..c.payload_bytes)
                    .map(|_| char::from(rng.random_range(b'a'..=b'z')))
                    .collect();
                Bytes::from(s)
            })
            .collect();
        let hosts: Vec<Text> = c.hosts.iter().map(|h| Text::from(h.as_str())).collect();
        let types: Vec<Text> = c.types.iter().map(|t| Text::from(t.as_str())).collect();
        let keys = hosts.len() * c.pids as usize * types.len();
        EventMaker {
            rng,
            hosts,
            types,
            pids: c.pids,
            payloads,
            offsets: vec![0; keys],
            n: 0,
        }
    }

    pub fn next_event(&mut self, timestamp: i64) -> Event {
        let t = (self.n % self.types.len() as u64) as usize;
        let h = self.rng.random_range(0..self.hosts.len());
        let p = self.rng.random_range(0..self.pids);
        let key = (h * self.pids as usize + p as usize) * self.types.len() + t;
        let offset = self.offsets[key];
        self.offsets[key] += 1;
        let payload = self.payloads[(self.n % self.payloads.len() as u64) as usize].clone();
        self.n += 1;
        Event {
            timestamp,
            host: self.hosts[h].clone(),
            ty: self.types[t].clone(),
            offset,
            pid: p + 1,
            message: payload,
            ..Event::default()
        }
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[async_trait]
impl Source for Generator {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ConnectorError> {
        let c = self.config;
        let mut maker = EventMaker::new(&c);
        let mut left = c.count;
        // With a rate, emit a slice of events every tick.
        let tick = Duration::from_millis(10);
        let per_tick = c.rate.map(|r| r * tick.as_secs_f64());
        let mut owed = 0.0f64;
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if left == Some(0) || ctx.shutdown.is_cancelled() {
                return Ok(());
            }
            let mut n = left.map_or(BATCH, |l| BATCH.min(l as usize));
            if let Some(pt) = per_tick {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                }
                owed += pt;
                let whole = owed.floor();
                owed -= whole;
                n = n.min(whole as usize);
                if n == 0 {
                    continue;
                }
            }
            let ts = now_ns();
            let events: Vec<Event> = (0..n).map(|i| maker.next_event(ts + i as i64)).collect();
            let bytes: usize = events.iter().map(Event::size_hint).sum();
            let batch = Batch::new(events, AckToken::untracked());
            tokio::select! {
                r = ctx.out.send(batch) => if r.is_err() { return Ok(()) },
                _ = ctx.shutdown.cancelled() => return Ok(()),
            }
            SourceStats::add(&ctx.stats.events, n as u64);
            SourceStats::add(&ctx.stats.bytes, bytes as u64);
            if let Some(l) = &mut left {
                *l -= n as u64;
            }
        }
    }
}

#[derive(Debug)]
pub struct GeneratorFactory;

impl SourceFactory for GeneratorFactory {
    fn kind(&self) -> &'static str {
        "generator"
    }

    fn build(
        &self,
        _name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Source>, BuildError> {
        Ok(Box::new(Generator::new(GeneratorConfig::from_fields(
            fields,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_events_and_offsets_are_sequences() {
        let c = GeneratorConfig {
            hosts: vec!["h1".into(), "h2".into()],
            pids: 2,
            ..GeneratorConfig::builtin()
        };
        let mut a = EventMaker::new(&c);
        let mut b = EventMaker::new(&c);
        let ea: Vec<Event> = (0..500).map(|_| a.next_event(0)).collect();
        let eb: Vec<Event> = (0..500).map(|_| b.next_event(0)).collect();
        assert_eq!(ea, eb);
        let mut next: std::collections::HashMap<(String, u32, String), u64> = Default::default();
        for e in &ea {
            let k = (e.host.to_string(), e.pid, e.ty.to_string());
            let want = next.entry(k).or_insert(0);
            assert_eq!(e.offset, *want, "gap or repeat in {e:?}");
            *want += 1;
        }
        assert_eq!(ea.iter().filter(|e| e.ty.as_str() == "A").count(), 250);
        assert_eq!(ea[0].message.len(), 100);
    }
}
