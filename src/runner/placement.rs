//! Where each build ran, for the metadata file: the host, the hosts passed over (each with why),
//! and whether the fallback took it.

use serde_json::{Map, Value, json};

use crate::config::resolve::Resolved;
use crate::error::Result;
use crate::nodes::{FailedHost, Hosts};

/// Where slot `slot`'s build ran: `agent.host`, and when a host did not answer,
/// `agent.failed_hosts` (each with why); `agent.fallback` (whether the fallback built it) when the
/// slot may go to a fallback (it uses the pool and there is one).
pub fn of_slot(resolved: &Resolved, hosts: &Hosts, slot: usize) -> Result<Map<String, Value>> {
    let target = &hosts.for_slot(slot)?.target;
    let mut placement = Map::new();
    placement.insert("agent.host".to_string(), json!(target.to_string()));
    let failed = hosts.failed_for_slot(slot);
    if !failed.is_empty() {
        placement.insert("agent.failed_hosts".to_string(), failed_hosts_json(&failed));
    }
    let uses_pool = resolved.platforms.get(slot).is_none_or(|each| each.host.is_none());
    if uses_pool && resolved.fallback_host.is_some() {
        placement.insert("agent.fallback".to_string(), json!(resolved.on_fallback(target)));
    }
    Ok(placement)
}

/// Where a multi-platform run's builds ran, for the top of its metadata file: `agent.failed_hosts`
/// (every host passed over, for any platform) and `agent.fallback` (whether any platform built on
/// the fallback), as a single-platform run has them; each platform's own are under `agent.platforms`.
pub fn of_run(resolved: &Resolved, hosts: &Hosts) -> Result<Map<String, Value>> {
    let mut placement = Map::new();
    let failed: Vec<&FailedHost> = hosts.failed().iter().collect();
    if !failed.is_empty() {
        placement.insert("agent.failed_hosts".to_string(), failed_hosts_json(&failed));
    }
    let pooled: Vec<usize> =
        (0..resolved.platforms.len()).filter(|slot| resolved.platforms[*slot].host.is_none()).collect();
    if resolved.fallback_host.is_some() && !pooled.is_empty() {
        let mut used = false;
        for slot in pooled {
            used |= resolved.on_fallback(&hosts.for_slot(slot)?.target);
        }
        placement.insert("agent.fallback".to_string(), json!(used));
    }
    Ok(placement)
}

/// The metadata file's `agent.failed_hosts`: each host passed over, with its error's class and text.
fn failed_hosts_json(failed: &[&FailedHost]) -> Value {
    let failed: Vec<Value> = failed
        .iter()
        .map(|host| json!({ "host": host.target.to_string(), "class": host.class, "error": host.reason }))
        .collect();
    Value::Array(failed)
}
