//! `--hdr-out FILE`: the measured histograms as an HdrHistogram interval log (one compressed V2
//! histogram per operation, tagged with the operation name, values in µs), readable by the
//! standard HdrHistogram log tools for plotting full percentile curves.

use crate::error::LoadgenError;
use crate::mix::Mix;
use crate::stats::Recorder;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Encodes the log for the active operations of `mix` into bytes.
pub fn encode(
    stats: &Recorder,
    mix: &Mix,
    warmup: Duration,
    measured: Duration,
) -> Result<Vec<u8>, LoadgenError> {
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let mut writer = IntervalLogWriterBuilder::new()
        .add_comment("ledger-loadgen latency histograms, values in microseconds, tag = operation")
        .with_start_time(SystemTime::now())
        .begin_log_with(&mut out, &mut serializer)
        .map_err(|e| LoadgenError::HdrEncode { message: e.to_string() })?;
    for kind in mix.active() {
        let tag = Tag::new(kind.name());
        writer
            .write_histogram(&stats.op(kind).latency_us, warmup, measured, tag)
            .map_err(|e| LoadgenError::HdrEncode { message: e.to_string() })?;
    }
    Ok(out)
}

/// Writes the log to `path`.
pub fn write(
    path: &Path,
    stats: &Recorder,
    mix: &Mix,
    warmup: Duration,
    measured: Duration,
) -> Result<(), LoadgenError> {
    let bytes = encode(stats, mix, warmup, measured)?;
    std::fs::write(path, bytes)
        .map_err(|source| LoadgenError::HdrWrite { path: path.display().to_string(), source })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::mix::OpKind;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    #[test]
    fn t80_log_has_one_tagged_histogram_per_active_op() {
        // Proves the interval log parses back with a tag per mixed-in op.
        let mut stats = Recorder::new();
        stats.op_mut(OpKind::Read).record_ok(Duration::from_micros(100));
        let mix = Mix::parse("read=9,write=1").unwrap();
        let bytes = encode(&stats, &mix, Duration::from_secs(1), Duration::from_secs(2)).unwrap();
        let tags: Vec<String> = IntervalLogIterator::new(&bytes)
            .filter_map(|entry| match entry.unwrap() {
                LogEntry::Interval(h) => h.tag().map(|t| t.as_str().to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(tags, vec!["read".to_string(), "write".to_string()]);
    }
}
