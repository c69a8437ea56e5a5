//! The circuit breaker of one sink (SPEC section 11): closed while the
//! sink works or fails now and then; open after `after` failures in a
//! row, when the driver leaves the peer alone for `cooldown`; half-open
//! once the cool-down is over, when the next attempt (rewind and write
//! again what is held, then flush) is the probe: a delivery closes the
//! breaker, a failure opens it again for another cool-down.
//!
//! The breaker never drops or fails an event: while it is open the driver
//! holds what it has, takes nothing new (back pressure reaches the
//! sources) and acknowledges nothing, so "acknowledged means delivered"
//! stands. What it saves is the peer (no connection attempts, requests or
//! flushes while open) and the operator's attention: its state is the
//! metric `dab_sink_breaker_state` and turns `/readyz` to 503.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use std::collections::BTreeMap;

use dab_api::ConfigValue;

use crate::metrics::Counter;

/// Failures in a row that open the breaker when the binding says nothing.
pub const DEFAULT_AFTER: u32 = 5;
/// How long an open breaker leaves the peer alone, by default.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(5);

/// A sink's breaker settings (`breaker_after`, `breaker_cooldown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub after: u32,
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            after: DEFAULT_AFTER,
            cooldown: DEFAULT_COOLDOWN,
        }
    }
}

impl BreakerConfig {
    /// From a sink binding's fields; the bindings check already held them
    /// to their bounds, so anything else falls back to the default.
    pub fn from_fields(fields: &BTreeMap<String, ConfigValue>) -> BreakerConfig {
        let d = BreakerConfig::default();
        let int = |k: &str| match fields.get(k) {
            Some(ConfigValue::Int(v)) if *v > 0 => u64::try_from(*v).ok(),
            _ => None,
        };
        BreakerConfig {
            after: int("breaker_after")
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(d.after),
            cooldown: int("breaker_cooldown").map_or(d.cooldown, Duration::from_millis),
        }
    }
}

/// The three states, as the metric shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    pub const ALL: [BreakerState; 3] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ];

    pub fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    fn from_u8(v: u8) -> BreakerState {
        match v {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

/// What the metrics and `/readyz` read of a breaker: its state and how
/// many times it entered each state.
#[derive(Debug, Default)]
pub struct BreakerGauge {
    state: AtomicU8,
    /// Entries into closed, open and half-open, in `BreakerState::ALL` order.
    pub transitions: [Counter; 3],
}

impl BreakerGauge {
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Relaxed))
    }

    fn set(&self, s: BreakerState) {
        self.state.store(s as u8, Ordering::Relaxed);
        self.transitions[s as usize].add(1);
    }

    pub fn transitions_to(&self, s: BreakerState) -> u64 {
        self.transitions[s as usize].get()
    }
}

/// What the driver should do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Still closed: back off (the n-th failure in a row) and try again.
    BackOff(u32),
    /// Open: leave the peer alone this long, then probe.
    Cooldown(Duration),
}

/// The driver's side of a breaker: failures in a row and the state.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    failures: u32,
    state: BreakerState,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            failures: 0,
            state: BreakerState::Closed,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    fn enter(&mut self, s: BreakerState, gauge: &BreakerGauge) {
        if self.state != s {
            self.state = s;
            gauge.set(s);
        }
    }

    /// A failure: counts it and says how long to wait. A failure in
    /// half-open (the probe) or the `after`-th in a row opens the breaker.
    pub fn failed(&mut self, gauge: &BreakerGauge) -> Wait {
        self.failures = self.failures.saturating_add(1);
        let opens = self.state != BreakerState::Closed || self.failures >= self.config.after;
        if opens {
            self.enter(BreakerState::Open, gauge);
            Wait::Cooldown(self.config.cooldown)
        } else {
            Wait::BackOff(self.failures)
        }
    }

    /// The cool-down is over: the next attempt is the probe.
    pub fn cooled(&mut self, gauge: &BreakerGauge) {
        if self.state == BreakerState::Open {
            self.enter(BreakerState::HalfOpen, gauge);
        }
    }

    /// The sink delivered (a good flush, a write confirmed delivered):
    /// failures are forgotten and the breaker closes. Returns true when
    /// this closed it.
    pub fn delivered(&mut self, gauge: &BreakerGauge) -> bool {
        self.failures = 0;
        let was = self.state;
        self.enter(BreakerState::Closed, gauge);
        was != BreakerState::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(after: u32) -> BreakerConfig {
        BreakerConfig {
            after,
            cooldown: Duration::from_millis(300),
        }
    }

    #[test]
    fn opens_after_n_failures_probes_and_closes_on_delivery() {
        let g = BreakerGauge::default();
        let mut b = Breaker::new(cfg(3));
        assert_eq!(b.failed(&g), Wait::BackOff(1));
        assert_eq!(b.failed(&g), Wait::BackOff(2));
        assert_eq!(g.state(), BreakerState::Closed);
        assert_eq!(b.failed(&g), Wait::Cooldown(Duration::from_millis(300)));
        assert_eq!(g.state(), BreakerState::Open);
        b.cooled(&g);
        assert_eq!(g.state(), BreakerState::HalfOpen);
        // The probe fails: open again at once, another cool-down.
        assert_eq!(b.failed(&g), Wait::Cooldown(Duration::from_millis(300)));
        assert_eq!(g.state(), BreakerState::Open);
        b.cooled(&g);
        assert!(b.delivered(&g));
        assert_eq!(g.state(), BreakerState::Closed);
        assert!(!b.delivered(&g));
        // Counted per state entered: open twice, half-open twice, closed once.
        assert_eq!(g.transitions_to(BreakerState::Open), 2);
        assert_eq!(g.transitions_to(BreakerState::HalfOpen), 2);
        assert_eq!(g.transitions_to(BreakerState::Closed), 1);
        // After closing, it takes `after` failures in a row again.
        assert_eq!(b.failed(&g), Wait::BackOff(1));
    }

    #[test]
    fn fields_set_the_thresholds_and_defaults_fill_the_rest() {
        let mut f = BTreeMap::new();
        assert_eq!(BreakerConfig::from_fields(&f), BreakerConfig::default());
        f.insert("breaker_after".to_owned(), ConfigValue::Int(2));
        f.insert("breaker_cooldown".to_owned(), ConfigValue::Int(750));
        assert_eq!(
            BreakerConfig::from_fields(&f),
            BreakerConfig {
                after: 2,
                cooldown: Duration::from_millis(750)
            }
        );
    }
}
