//! The host's disk: what its images and build cache take (`GET /system/df`), asked in the
//! background once the daemon is checked and logged as one line when the answer arrives, while the
//! run goes on.
//!
//! No API of the daemon (neither `/info` nor `/system/df`, up to API 1.52 at least) tells the free
//! space of the host's disk, so the agent cannot warn that it runs low: the line shows what the
//! images and the build cache take, which is what grows (and what `--keep-storage` bounds).

use std::time::Duration;

use serde::Deserialize;

use crate::docker::daemon::Daemon;
use crate::error::Error;
use crate::output::human_bytes;

/// What the images and the build cache take on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskUse {
    /// Bytes of the image layers (shared layers once).
    pub images: u64,
    pub image_count: usize,
    /// Bytes of the build cache records.
    pub build_cache: u64,
}

/// `/system/df`'s answer, the fields the line needs, in both of the daemon's shapes: the lists of
/// API 1.25..1.51 (`LayersSize`, `Images`, `BuildCache`) and the totals of later ones.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    layers_size: Option<u64>,
    images: Option<Vec<serde_json::Value>>,
    image_usage: Option<Totals>,
    #[serde(flatten)]
    build_cache: CacheAnswer,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Totals {
    #[serde(default)]
    total_size: u64,
    #[serde(default)]
    total_count: usize,
}

/// One record of BuildKit's cache as `/system/df` lists it.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CacheRecord {
    /// For the budget's "freed" (which records a prune deleted); the disk line needs none.
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    shared: bool,
}

/// `/system/df`'s build cache: the list of API 1.25..1.51, or the totals of later ones (with the
/// items when the daemon gives them).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CacheAnswer {
    build_cache: Option<Vec<CacheRecord>>,
    build_cache_usage: Option<CacheUsage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CacheUsage {
    #[serde(default)]
    total_size: u64,
    items: Option<Vec<CacheRecord>>,
}

impl CacheAnswer {
    /// What the build cache takes (shared records counted once, in the record that owns them, as
    /// `docker system df` does), and its records when the daemon lists them.
    fn measured(self) -> (u64, Option<Vec<CacheRecord>>) {
        match (self.build_cache, self.build_cache_usage) {
            (Some(records), _) => (counted_size(&records, None), Some(records)),
            (None, Some(CacheUsage { items: Some(records), .. })) => (counted_size(&records, None), Some(records)),
            (None, Some(CacheUsage { total_size, items: None })) => (total_size, None),
            (None, None) => (0, None),
        }
    }
}

/// Reads the build cache from `/system/df`'s JSON body: its size, and its records when listed.
pub fn read_build_cache(body: &[u8]) -> Result<(u64, Option<Vec<CacheRecord>>), serde_json::Error> {
    Ok(serde_json::from_slice::<CacheAnswer>(body)?.measured())
}

/// The size of the records (of those in `only`, if given), shared ones not counted.
pub fn counted_size(records: &[CacheRecord], only: Option<&std::collections::HashSet<String>>) -> u64 {
    records
        .iter()
        .filter(|record| !record.shared && only.is_none_or(|only| only.contains(&record.id)))
        .map(|record| record.size)
        .sum()
}

impl DiskUse {
    /// Reads `/system/df` from its JSON body.
    pub fn from_json(body: &[u8]) -> Result<DiskUse, serde_json::Error> {
        let answer: Answer = serde_json::from_slice(body)?;
        let (images, image_count) = match answer.image_usage {
            Some(totals) => (totals.total_size, totals.total_count),
            None => (answer.layers_size.unwrap_or(0), answer.images.map_or(0, |images| images.len())),
        };
        let (build_cache, _) = answer.build_cache.measured();
        Ok(DiskUse { images, image_count, build_cache })
    }

    /// The log line, e.g. `host disk: images 8.9 GB (730), build cache 4.2 GB`.
    pub fn summary(&self) -> String {
        format!(
            "host disk: images {} ({}), build cache {}",
            human_bytes(self.images),
            self.image_count,
            human_bytes(self.build_cache)
        )
    }
}

/// Asks the daemon what its images and build cache take. The images and the build cache only
/// (`type=`, API 1.42): a daemon that knows the filter skips sizing every container and volume;
/// an older one ignores it.
pub async fn disk_use(daemon: &Daemon) -> Result<DiskUse, Error> {
    // Unversioned: the daemon reads it in its own API version, so one that knows `type=` honours it.
    let body = daemon.call(http::Method::GET, "/system/df?type=image&type=build-cache", "the disk use").await?;
    DiskUse::from_json(&body).map_err(|error| Error::Internal(format!("/system/df answered what it cannot: {error}")))
}

/// The disk use of one host, asked on a stream of its own beside the run's other requests. The
/// task logs the line itself when the answer comes; [`DiskUseWatch::settle`] ends the wait.
pub struct DiskUseWatch {
    target: String,
    task: tokio::task::JoinHandle<()>,
}

impl DiskUseWatch {
    /// Starts asking. `prefix` goes before the line (a host's address when the run has several).
    /// Must be called inside the runtime.
    pub fn start(daemon: Daemon, prefix: String) -> DiskUseWatch {
        let target = daemon.target.clone();
        let task = tokio::spawn(async move {
            match disk_use(&daemon).await {
                Ok(disk) => tracing::info!("{prefix}{}", disk.summary()),
                // Never a failed run, nor a warning: the line is information only.
                Err(error) => tracing::debug!("{}: no disk use: {error}", daemon.target),
            }
        });
        DiskUseWatch { target, task }
    }

    /// The daemon asked.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Waits at most `wait` for the line (zero: only checks whether it came), then gives up on it
    /// with a debug line: the run never waits longer for it.
    pub async fn settle(self, wait: Duration) {
        let DiskUseWatch { target, mut task } = self;
        if task.is_finished() {
            return;
        }
        if !wait.is_zero() && tokio::time::timeout(wait, &mut task).await.is_ok() {
            return;
        }
        task.abort();
        tracing::debug!(
            "{target}: the disk use did not come within the run ({}s more waited): left out",
            wait.as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_lists_of_a_20_10_daemon() {
        let body = br#"{"LayersSize":2000000,"Images":[{},{}],"Containers":[],"Volumes":[],
            "BuildCache":[{"Size":1500,"Shared":false},{"Size":700,"Shared":true},{"Size":500}]}"#;
        let usage = DiskUse::from_json(body).expect("parses");
        assert_eq!(usage, DiskUse { images: 2_000_000, image_count: 2, build_cache: 2000 });
        assert_eq!(usage.summary(), "host disk: images 2.0 MB (2), build cache 2.0 kB");
    }

    #[test]
    fn reads_the_totals_of_a_newer_daemon() {
        let body =
            br#"{"ImageUsage":{"TotalSize":8900000000,"TotalCount":730},"BuildCacheUsage":{"TotalSize":4200000000}}"#;
        let usage = DiskUse::from_json(body).expect("parses");
        assert_eq!(usage.summary(), "host disk: images 8.9 GB (730), build cache 4.2 GB");
    }

    #[test]
    fn an_empty_host_takes_nothing() {
        assert_eq!(DiskUse::from_json(b"{}").expect("parses").summary(), "host disk: images 0 B (0), build cache 0 B");
    }
}
