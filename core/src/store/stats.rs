//! The pool's counters and histograms, kept in Redis (`{wp:P}:stats`) by the scripts that end
//! executions, start them and register VMs, by the leader, and by the agents' heartbeats, so
//! that every replica's `/metrics` shows the same pool-wide figures.
//!
//! The field formats and the histogram buckets are `redis/common.lua`'s (`count`, `observe`,
//! `BUCKETS_MS`): this module reads that file's bucket list rather than keep a copy.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use fred::prelude::*;

use super::{Store, StoreError, StoreResult};

/// The histogram bucket bounds (ms), as `redis/common.lua` declares them.
pub static BUCKETS_MS: LazyLock<Vec<u64>> =
    LazyLock::new(|| parse_buckets(include_str!("../../../redis/common.lua")).unwrap_or_default());

fn parse_buckets(lua: &str) -> Option<Vec<u64>> {
    let line = lua
        .lines()
        .find(|l| l.starts_with("local BUCKETS_MS = {"))?;
    let inner = line.split_once('{')?.1.split_once('}')?.0;
    inner.split(',').map(|n| n.trim().parse().ok()).collect()
}

/// One histogram: the count in each bucket (not cumulative) and the sum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations at or below each bound of [`BUCKETS_MS`] (and above the one before).
    pub buckets: Vec<u64>,
    /// Observations above the last bound.
    pub above: u64,
    pub sum_ms: u64,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum::<u64>() + self.above
    }
}

/// Every figure of the stats hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Counter name and label values (`executions|finished|ok`) → value.
    pub counters: BTreeMap<String, u64>,
    /// Histogram name (`run_time`) → buckets.
    pub histograms: BTreeMap<String, Histogram>,
}

/// Reads the stats hash. A field this build cannot read is logged and counted
/// ([`StoreError::corrupt`]) and left out: one odd field does not hide the others.
pub async fn read(store: &Store) -> StoreResult<Stats> {
    let fields: std::collections::HashMap<String, String> =
        store.client().hgetall(&store.keys.stats).await?;
    Ok(parse(fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
}

fn parse<'a>(fields: impl Iterator<Item = (&'a str, &'a str)>) -> Stats {
    let mut stats = Stats::default();
    for (field, value) in fields {
        if let Err(problem) = add(&mut stats, field, value) {
            let _ = StoreError::corrupt(format!("stats field {field:?}"), problem);
        }
    }
    stats
}

fn add(stats: &mut Stats, field: &str, value: &str) -> Result<(), String> {
    let n: u64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a count"))?;
    if let Some(counter) = field.strip_prefix("c|") {
        stats.counters.insert(counter.to_string(), n);
        return Ok(());
    }
    let Some((name, bucket)) = field.strip_prefix("h|").and_then(|h| h.rsplit_once('|')) else {
        return Err("neither a counter (c|) nor a histogram (h|)".into());
    };
    let h = stats.histograms.entry(name.to_string()).or_default();
    h.buckets.resize(BUCKETS_MS.len(), 0);
    match bucket {
        "sum" => h.sum_ms = n,
        "inf" => h.above = n,
        le => {
            let le: u64 = le.parse().map_err(|_| format!("bucket {le:?}"))?;
            let i = BUCKETS_MS
                .iter()
                .position(|b| *b == le)
                .ok_or_else(|| format!("no bucket {le} in redis/common.lua"))?;
            h.buckets[i] = n;
        }
    }
    Ok(())
}

/// Adds `n` to counter `name` (with its label values: `reconcile_actions|create`).
pub async fn count(store: &Store, name: &str, n: u64) -> StoreResult<()> {
    let _: i64 = store
        .client()
        .hincrby(&store.keys.stats, format!("c|{name}"), n as i64)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buckets_are_read_from_common_lua() {
        assert!(BUCKETS_MS.len() > 5, "{:?}", *BUCKETS_MS);
        assert!(BUCKETS_MS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            parse_buckets("local BUCKETS_MS = { 1, 2 }\n"),
            Some(vec![1, 2])
        );
    }

    #[test]
    fn fields_become_counters_and_histograms_and_odd_ones_are_left_out() {
        let first = BUCKETS_MS[0].to_string();
        let fields = [
            ("c|executions|finished|ok".to_string(), "3".to_string()),
            (format!("h|run_time|{first}"), "2".into()),
            ("h|run_time|inf".into(), "1".into()),
            ("h|run_time|sum".into(), "70000".into()),
            ("h|run_time|7".into(), "1".into()),
            ("x|odd".into(), "1".into()),
            ("c|broken".into(), "many".into()),
        ];
        let before = crate::store::corrupt_reads();
        let stats = parse(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(stats.counters.get("executions|finished|ok"), Some(&3));
        assert_eq!(stats.counters.len(), 1);
        let h = &stats.histograms["run_time"];
        assert_eq!(
            (h.buckets[0], h.above, h.sum_ms, h.count()),
            (2, 1, 70_000, 3)
        );
        assert_eq!(
            crate::store::corrupt_reads() - before,
            3,
            "each odd field counted"
        );
    }
}
