//! The cache budget (`--keep-storage`): after a successful run, a host whose build cache is over
//! the budget is pruned down to it, and the log says what was freed.
//!
//! BuildKit: `POST /build/prune` with `keep-storage` (`reserved-space` and `max-used-space` from
//! API 1.48 on). BuildKit deletes the least recently used records until the cache is within the budget,
//! and never a record a build holds at that moment: it chooses them under its cache manager's lock
//! and skips every record with a live reference (`len(cr.refs) == 0` in `cache/manager.go`'s
//! prune), so a build running beside the prune keeps what it uses. Without `all`, it also keeps its
//! internal and frontend records and the records whose layers an image holds, as `docker builder
//! prune` does: a cache made mostly of tagged images' layers may stay over the budget.
//!
//! The classic builder has no such references: its cache is the daemon's images, and a running
//! build may pick any of them up as a step's cache. The agent removes only *dangling* images (no
//! tag, no child: the images a rebuilt tag left behind) created more than an hour ago (`until=1h`),
//! when those together are over the budget: the daemon refuses to remove an image a container
//! uses, and a build running now, at a step it did not find in its cache, makes new images, which
//! are younger than that. It cannot prune *down to* a size: it removes every such image.

use std::fmt;

use crate::docker::daemon::{Daemon, parse_api};
use crate::docker::disk::{CacheRecord, counted_size, read_build_cache};
use crate::error::Error;
use crate::output::human_bytes;

/// A budget for a host's build cache, as given and in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    /// As it was written, e.g. `40GB`.
    pub text: String,
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {} bytes", self.text, self.bytes)
    }
}

/// How old a dangling image must be before the classic builder's prune removes it.
pub const CLASSIC_MIN_AGE: &str = "1h";

impl Budget {
    /// Reads a size as `docker builder prune --keep-storage` does (go-units' `RAMInBytes`): a
    /// number, optionally with a fraction, then `k`, `m`, `g`, `t` or `p`, optionally followed by
    /// `i` and/or `b`, any case: all binary, so `40GB` is 40 GiB (42 949 672 960 bytes) and `500MB`
    /// 500 MiB; a bare number is bytes. Hand-written: no crate reads sizes docker's way (the size
    /// crates take `GB` as 10^9).
    pub fn parse(text: &str) -> Result<Budget, String> {
        let trimmed = text.trim();
        let digits_end = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(digits_end);
        let value: f64 = match number.parse() {
            Ok(value) if !number.starts_with('.') && !number.ends_with('.') => value,
            _ => return Err(format!("{text:?} is not a size")),
        };
        let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
        let mut rest = unit.as_str();
        let power = match rest.chars().next() {
            Some('k') => 1,
            Some('m') => 2,
            Some('g') => 3,
            Some('t') => 4,
            Some('p') => 5,
            _ => 0,
        };
        if power > 0 {
            rest = &rest[1..];
        }
        rest = rest.strip_prefix('i').unwrap_or(rest);
        rest = rest.strip_prefix('b').unwrap_or(rest);
        if !rest.is_empty() {
            return Err(format!("{text:?} has a unit docker does not know"));
        }
        let bytes = value * 1024f64.powi(power);
        if !bytes.is_finite() || bytes >= u64::MAX as f64 || bytes >= i64::MAX as f64 {
            return Err(format!("{text:?} is too large"));
        }
        let bytes = bytes as u64;
        if bytes == 0 {
            return Err("a budget of 0 bytes would empty the cache".to_string());
        }
        Ok(Budget { bytes, text: trimmed.to_string() })
    }
}

/// What a prune did on one host.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// What the build cache took before, as `/system/df` counts it (shared records once).
    pub cache_before: u64,
    /// BuildKit's records deleted, and the bytes `/system/df` gave them.
    pub records: usize,
    pub record_bytes: u64,
    /// Dangling images removed by the classic builder's prune, and the bytes the daemon reclaimed.
    pub images: usize,
    pub image_bytes: u64,
    /// The dangling images' size when it was not over the budget (nothing removed).
    pub dangling_within: Option<u64>,
}

impl Pruned {
    /// The step's outcome for one host.
    pub fn summary(&self, buildkit: bool, classic: bool) -> String {
        let mut parts = Vec::new();
        if buildkit {
            let before = human_bytes(self.cache_before);
            parts.push(match self.records {
                0 if self.record_bytes == 0 => format!("build cache {before}, within the budget: nothing freed"),
                records => format!(
                    "build cache {before}: freed {} ({records} record{}), {} left",
                    human_bytes(self.record_bytes),
                    if records == 1 { "" } else { "s" },
                    human_bytes(self.cache_before.saturating_sub(self.record_bytes))
                ),
            });
        }
        if classic {
            parts.push(match (self.images, self.dangling_within) {
                (_, Some(size)) => {
                    format!("dangling images {} within the budget: nothing removed", human_bytes(size))
                }
                (0, None) => format!("no dangling image older than {CLASSIC_MIN_AGE} to remove"),
                (images, None) => format!(
                    "freed {} ({images} dangling image{} older than {CLASSIC_MIN_AGE})",
                    human_bytes(self.image_bytes),
                    if images == 1 { "" } else { "s" }
                ),
            });
        }
        parts.join("; ")
    }
}

/// What the build cache takes, and its records when the daemon lists them.
async fn build_cache(daemon: &Daemon) -> Result<(u64, Option<Vec<CacheRecord>>), Error> {
    // `type=` (API 1.42) spares a newer daemon sizing images, containers and volumes; `verbose`
    // (API 1.52) lists the records. A 20.10 daemon ignores both and sizes everything.
    let body = daemon
        .call(http::Method::GET, &daemon.api_path("/system/df?type=build-cache&verbose=1"), "the disk use")
        .await?;
    read_build_cache(&body).map_err(|error| Error::Daemon {
        target: daemon.target.clone(),
        detail: format!("answered /system/df with what the agent cannot read: {error}"),
    })
}

/// `POST /build/prune`'s answer.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BuildPruned {
    #[serde(default)]
    caches_deleted: Option<Vec<String>>,
}

/// Prunes BuildKit's cache on `daemon` down to `budget`, if it is over it. What it took and what
/// was freed are `/system/df`'s figures (records shared with images counted once, as `docker system
/// df` does: the prune's own `SpaceReclaimed` counts them too, though their layers stay on disk).
pub async fn prune_build_cache(daemon: &Daemon, budget: &Budget, pruned: &mut Pruned) -> Result<(), Error> {
    let (before, records) = build_cache(daemon).await?;
    pruned.cache_before = before;
    if before <= budget.bytes {
        return Ok(());
    }
    // The parameters the API version spoken documents: `keep-storage` up to 1.47; from 1.48 on
    // (Docker 28) `reserved-space` (keep-storage's new name, which 1.49 drops) and `max-used-space`
    // (the cap). BuildKit prunes down to max(max-used-space, reserved-space): to the budget.
    let path = match parse_api(daemon.api_version()) {
        Some(api) if api >= (1, 48) => format!("/build/prune?reserved-space={0}&max-used-space={0}", budget.bytes),
        _ => format!("/build/prune?keep-storage={}", budget.bytes),
    };
    let body = daemon.call(http::Method::POST, &daemon.api_path(&path), "the build cache prune").await?;
    let answer: BuildPruned = serde_json::from_slice(&body).map_err(|error| Error::Daemon {
        target: daemon.target.clone(),
        detail: format!("answered the build cache prune with what the agent cannot read: {error}"),
    })?;
    let deleted: std::collections::HashSet<String> = answer.caches_deleted.unwrap_or_default().into_iter().collect();
    pruned.records = deleted.len();
    pruned.record_bytes = match records {
        Some(records) => counted_size(&records, Some(&deleted)),
        // A daemon that gives totals only is asked again.
        None => before.saturating_sub(build_cache(daemon).await?.0),
    };
    Ok(())
}

/// The classic builder's part: the dangling images older than [`CLASSIC_MIN_AGE`], removed when
/// all dangling images together are over `budget`.
pub async fn prune_dangling_images(daemon: &Daemon, budget: &Budget, pruned: &mut Pruned) -> Result<(), Error> {
    let dangling = std::collections::HashMap::from([("dangling", vec!["true"])]);
    let options = bollard::query_parameters::ListImagesOptionsBuilder::new().filters(&dangling).build();
    let images = daemon.docker.list_images(Some(options)).await.map_err(|error| daemon.explain(error))?;
    // Each image's size counts the layers it shares with others again: an upper bound.
    let size: u64 = images.iter().map(|image| u64::try_from(image.size).unwrap_or(0)).sum();
    if size <= budget.bytes {
        pruned.dangling_within = Some(size);
        return Ok(());
    }
    let filters = std::collections::HashMap::from([("dangling", vec!["true"]), ("until", vec![CLASSIC_MIN_AGE])]);
    let options = bollard::query_parameters::PruneImagesOptionsBuilder::new().filters(&filters).build();
    let answer = daemon.docker.prune_images(Some(options)).await.map_err(|error| daemon.explain(error))?;
    let deleted = answer.images_deleted.unwrap_or_default();
    pruned.images = deleted.iter().filter(|item| item.deleted.is_some()).count();
    pruned.image_bytes = answer.space_reclaimed.and_then(|bytes| u64::try_from(bytes).ok()).unwrap_or(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_binary_as_docker_reads_them() {
        let bytes = |text: &str| Budget::parse(text).map(|budget| budget.bytes);
        assert_eq!(bytes("40GB"), Ok(40 * 1024 * 1024 * 1024));
        assert_eq!(bytes("40gib"), Ok(40 * 1024 * 1024 * 1024));
        assert_eq!(bytes("500MB"), Ok(500 * 1024 * 1024));
        assert_eq!(bytes("500m"), Ok(500 * 1024 * 1024));
        assert_eq!(bytes("1.5g"), Ok(1536 * 1024 * 1024));
        assert_eq!(bytes("64 kB"), Ok(64 * 1024));
        assert_eq!(bytes("2T"), Ok(2 * 1024u64.pow(4)));
        assert_eq!(bytes("123"), Ok(123));
        assert_eq!(bytes(" 10b "), Ok(10));
    }

    #[test]
    fn bad_sizes_say_why() {
        for text in ["", "GB", "forty", "40XB", "40 GB extra", "-1GB", "1..5G", ".5G", "5.G"] {
            assert!(Budget::parse(text).is_err(), "{text:?} was accepted");
        }
        assert!(Budget::parse("0").unwrap_err().contains("would empty the cache"));
        assert!(Budget::parse("99999999999P").unwrap_err().contains("too large"));
        assert!(Budget::parse("40XB").unwrap_err().contains("unit"));
    }

    #[test]
    fn reads_the_build_cache_of_old_and_new_daemons() {
        let old = br#"{"BuildCache":[{"ID":"a","Size":1500,"Shared":false},{"ID":"b","Size":700,"Shared":true}]}"#;
        let (total, records) = read_build_cache(old).unwrap();
        assert_eq!((total, records.map(|records| records.len())), (1500, Some(2)));
        let listed = br#"{"BuildCacheUsage":{"TotalSize":9,"Items":[{"ID":"a","Size":4},{"ID":"c","Size":5}]}}"#;
        let (total, records) = read_build_cache(listed).unwrap();
        let deleted = std::collections::HashSet::from(["c".to_string()]);
        assert_eq!((total, counted_size(&records.unwrap(), Some(&deleted))), (9, 5));
        let totals = br#"{"BuildCacheUsage":{"TotalSize":4200,"Items":null}}"#;
        assert_eq!(read_build_cache(totals).unwrap().0, 4200);
        assert_eq!(read_build_cache(b"{}").unwrap().0, 0);
    }

    #[test]
    fn the_outcome_says_what_was_freed() {
        let pruned = Pruned { cache_before: 3_000_000, records: 3, record_bytes: 2_500_000, ..Pruned::default() };
        assert_eq!(pruned.summary(true, false), "build cache 3.0 MB: freed 2.5 MB (3 records), 500.0 kB left");
        let within = Pruned { cache_before: 1_000, ..Pruned::default() };
        assert_eq!(within.summary(true, false), "build cache 1.0 kB, within the budget: nothing freed");
        let classic = Pruned { images: 2, image_bytes: 4_000_000, ..Pruned::default() };
        assert_eq!(classic.summary(false, true), "freed 4.0 MB (2 dangling images older than 1h)");
        let within = Pruned { dangling_within: Some(1_000), ..Pruned::default() };
        assert_eq!(
            within.summary(true, true),
            "build cache 0 B, within the budget: nothing freed; dangling images 1.0 kB within the budget: nothing removed"
        );
    }
}
