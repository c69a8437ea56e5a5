//! Metrics a connector keeps beyond [`SourceStats`](crate::connector::SourceStats)
//! (consumer lag per partition, commits, produce latency), handed to the
//! runtime as samples. The runtime groups samples by name, so a family's
//! HELP and TYPE lines appear once however many connectors report it.

/// Counter or gauge, as Prometheus names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleKind {
    Counter,
    Gauge,
    /// Samples named `<family>_bucket` (with an `le` label), `_sum`, `_count`.
    Histogram,
}

impl SampleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SampleKind::Counter => "counter",
            SampleKind::Gauge => "gauge",
            SampleKind::Histogram => "histogram",
        }
    }
}

/// One value of one metric family.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The family: HELP and TYPE lines are written once per family.
    pub family: &'static str,
    /// The sample's own name: the family's, or a histogram's
    /// `_bucket`/`_sum`/`_count` name.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: SampleKind,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

impl Sample {
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Sample {
        Sample {
            family: name,
            name,
            help,
            kind: SampleKind::Counter,
            labels: Vec::new(),
            value: value as f64,
        }
    }

    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Sample {
        Sample {
            family: name,
            name,
            help,
            kind: SampleKind::Gauge,
            labels: Vec::new(),
            value,
        }
    }

    /// The samples of a histogram: cumulative `counts` per upper bound in
    /// `bounds` (seconds), then `+Inf`, `_sum` and `_count`.
    pub fn histogram(
        family: &'static str,
        names: [&'static str; 3],
        help: &'static str,
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
        labels: &[(&'static str, String)],
    ) -> Vec<Sample> {
        let mk = |name, value: f64, le: Option<String>| {
            let mut labels = labels.to_vec();
            if let Some(le) = le {
                labels.push(("le", le));
            }
            Sample {
                family,
                name,
                help,
                kind: SampleKind::Histogram,
                labels,
                value,
            }
        };
        let mut out = Vec::with_capacity(bounds.len() + 3);
        let mut total = 0;
        for (b, c) in bounds.iter().zip(counts) {
            total += c;
            out.push(mk(names[0], total as f64, Some(b.to_string())));
        }
        total += counts.get(bounds.len()).copied().unwrap_or(0);
        out.push(mk(names[0], total as f64, Some("+Inf".to_owned())));
        out.push(mk(names[1], sum, None));
        out.push(mk(names[2], total as f64, None));
        out
    }

    pub fn label(mut self, key: &'static str, value: impl Into<String>) -> Sample {
        self.labels.push((key, value.into()));
        self
    }
}

/// A connector's own metrics, read on every scrape.
pub trait ConnectorMetrics: Send + Sync + std::fmt::Debug {
    fn samples(&self, out: &mut Vec<Sample>);
}
