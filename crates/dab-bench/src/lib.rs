//! Pieces of the `dab-loadgen` benchmark tool that are worth testing on
//! their own: the NDJSON event lines it sends (send time in the `timestamp`
//! field, a per (host, pid, type) `offset` sequence), the parsing of that
//! timestamp back out of a received line, and a lock-free log-linear
//! latency histogram (about 0.1 % relative error).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (the clock the `timestamp` field uses;
/// sender and receiver run on the same machine, so they share it).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// CPU seconds (user + system) this process has used so far, from
/// `/proc/self/stat` (Linux; clock ticks assumed to be 1/100 s, the
/// kernel's USER_HZ on every mainstream architecture). `None` elsewhere.
pub fn cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; the fields after it do not.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Appends the decimal digits of `v`.
pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Makes the NDJSON event lines the sender writes, e.g.
/// `{"timestamp":…,"host":"loadgen-1","type":"A","offset":7,"pid":4242,
/// "message":"xxxx…","tags":{"env":"bench","region":"eu-west-1"}}`.
#[derive(Debug, Clone)]
pub struct LineMaker {
    host: String,
    types: Vec<String>,
    pid: u32,
    payload: Vec<u8>,
    /// Next offset per type (one host, one pid per maker).
    offsets: Vec<u64>,
    n: u64,
}

impl LineMaker {
    /// A maker whose lines are about `line_bytes` long (without the
    /// newline) while offsets have seven digits; `types` are used in turn.
    pub fn new(host: &str, pid: u32, types: &[String], line_bytes: usize) -> LineMaker {
        let types: Vec<String> = if types.is_empty() {
            vec!["A".to_owned()]
        } else {
            types.to_vec()
        };
        let mut m = LineMaker {
            host: host.to_owned(),
            offsets: vec![0; types.len()],
            types,
            pid,
            payload: Vec::new(),
            n: 0,
        };
        let mut probe = Vec::new();
        m.write_parts(1_732_320_000_000_000_000, 1_000_000, 0, &mut probe);
        let payload = line_bytes.saturating_sub(probe.len());
        // A log-like payload: letters, digits and spaces, nothing to escape.
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 /.=";
        m.payload = (0..payload)
            .map(|i| ALPHABET[(i * 7 + i / 5) % ALPHABET.len()])
            .collect();
        m
    }

    /// Appends one event line and its newline, stamped `timestamp_ns`.
    pub fn write_line(&mut self, timestamp_ns: u64, out: &mut Vec<u8>) {
        let t = (self.n % self.types.len() as u64) as usize;
        self.n += 1;
        let offset = self.offsets[t];
        self.offsets[t] += 1;
        self.write_parts(timestamp_ns, offset, t, out);
        out.push(b'\n');
    }

    fn write_parts(&self, ts: u64, offset: u64, t: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"timestamp\":");
        push_u64(out, ts);
        out.extend_from_slice(b",\"host\":\"");
        out.extend_from_slice(self.host.as_bytes());
        out.extend_from_slice(b"\",\"type\":\"");
        out.extend_from_slice(self.types[t].as_bytes());
        out.extend_from_slice(b"\",\"offset\":");
        push_u64(out, offset);
        out.extend_from_slice(b",\"pid\":");
        push_u64(out, u64::from(self.pid));
        out.extend_from_slice(b",\"message\":\"");
        out.extend_from_slice(&self.payload);
        out.extend_from_slice(b"\",\"tags\":{\"env\":\"bench\",\"region\":\"eu-west-1\"}}");
    }

    /// Lines written so far.
    pub fn count(&self) -> u64 {
        self.n
    }
}

/// The `timestamp` of an event line (fast path: the line starts with it,
/// as the sender writes it and as DAB passes untouched events on).
pub fn timestamp_of(line: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"timestamp\":";
    let start = if line.starts_with(b"{\"timestamp\":") {
        13
    } else {
        memchr::memmem::find(line, KEY)? + KEY.len()
    };
    let rest = line.get(start..)?;
    let rest = match rest.iter().position(|b| *b != b' ') {
        Some(i) => &rest[i..],
        None => return None,
    };
    let mut v: u64 = 0;
    let mut digits = 0;
    for &b in rest {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some(v)
}

/// Sub-buckets per power of two: 2^10, so a bucket is at most 1/1024 of
/// its value wide.
const SUB_BITS: u32 = 10;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) << SUB_BITS;

fn bucket(v: u64) -> usize {
    if v < (1 << (SUB_BITS + 1)) {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    ((shift as usize) << SUB_BITS) + (v >> shift) as usize
}

/// The middle of a bucket's range.
fn bucket_mid(i: usize) -> u64 {
    if i < (1 << (SUB_BITS + 1)) {
        return i as u64;
    }
    let shift = (i >> SUB_BITS) - 1;
    let top = (i - (shift << SUB_BITS)) as u64;
    (top << shift) + ((1u64 << shift) >> 1)
}

/// A concurrent histogram of non-negative values (nanoseconds here).
#[derive(Debug)]
pub struct Histogram {
    counts: Vec<AtomicU64>,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

/// Quantiles of a histogram, in the histogram's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Histogram {
    #[inline]
    pub fn record(&self, v: u64) {
        self.counts[bucket(v)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
    }

    pub fn summary(&self) -> Summary {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let q = |q: f64| -> u64 {
            if total == 0 {
                return 0;
            }
            let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return bucket_mid(i);
                }
            }
            0
        };
        Summary {
            count: total,
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: self.max.load(Ordering::Relaxed),
        }
    }
}

/// The median of some figures (the mean of the middle two for an even
/// count); `None` when there are none.
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_the_asked_size_and_parse_back() {
        let types = vec!["A".to_owned(), "B".to_owned()];
        let mut m = LineMaker::new("loadgen-1", 4242, &types, 250);
        let mut out = Vec::new();
        m.write_line(1_732_320_000_123_456_789, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        // Offset 0 has one digit where the probe had seven.
        assert_eq!(out.len() - 1, 250 - 6);
        assert_eq!(timestamp_of(&out), Some(1_732_320_000_123_456_789));
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("\"type\":\"A\",\"offset\":0,"), "{text}");
        let mut out = Vec::new();
        m.write_line(5, &mut out);
        m.write_line(6, &mut out);
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("\"type\":\"B\",\"offset\":0,"), "{text}");
        assert!(text.contains("\"type\":\"A\",\"offset\":1,"), "{text}");
        assert_eq!(m.count(), 3);
    }

    #[test]
    fn timestamp_anywhere_in_the_line() {
        assert_eq!(timestamp_of(br#"{"host":"h","timestamp": 42}"#), Some(42));
        assert_eq!(timestamp_of(br#"{"host":"h"}"#), None);
        assert_eq!(timestamp_of(br#"{"timestamp":"x"}"#), None);
    }

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut last = 0;
        for v in (0..5000u64).chain((1..60).map(|s| (1u64 << s) + 12345)) {
            let b = bucket(v);
            assert!(b >= last, "bucket of {v} went back");
            last = b;
            let mid = bucket_mid(b);
            let err = (mid as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err <= 1.0 / 1024.0, "{v} -> {mid}");
        }
        assert!(bucket(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles() {
        let h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        let near = |a: u64, b: u64| (a as f64 - b as f64).abs() / b as f64 <= 0.002;
        assert!(near(s.p50, 500_000), "{s:?}");
        assert!(near(s.p99, 990_000), "{s:?}");
        assert_eq!(s.max, 1_000_000);
    }

    #[test]
    fn cpu_time_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(cpu_secs().is_some_and(|s| s >= 0.0));
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
