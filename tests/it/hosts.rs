//! Issue 12: a run's hosts. Several daemons (the world's daemon over its socket and over SSH, and
//! the cold daemon) connected and checked together through `Hosts`, each with its own connection
//! and its own facts; one host is a list of one.

use std::time::Duration;

use agent::docker::host::DockerHost;
use agent::nodes::{Access, Candidate, Hosts, Slot};
use agent::ssh::key::SshKey;

use crate::world::World;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// How the tests reach the world's hosts: its timeouts, no TLS, a fresh home's SSH files.
fn access<'a>(key_file: &'a std::path::Path, known_hosts_file: &'a std::path::Path) -> Access<'a> {
    Access {
        connect_timeout: Duration::from_secs(20),
        read_timeout: Duration::from_secs(45),
        tls: None,
        ssh_key_file: key_file,
        ssh_key_passphrase: None,
        known_hosts_file,
        instances: None,
    }
}

/// Connects to `targets` with the world's key and known_hosts, checks them, and returns each
/// host's target and OS, and the check's summary line.
fn connect_and_check(world: &World, targets: &[DockerHost]) -> (Vec<(String, String)>, String) {
    let key = SshKey::parse(&std::fs::read_to_string(&world.key_ed25519).unwrap(), None).unwrap();
    let known = std::fs::read_to_string(&world.known_hosts_plain).unwrap();
    let home = tempfile::tempdir().unwrap();
    let (key_file, known_hosts_file) = (home.path().join(".ssh/id_rsa"), home.path().join(".ssh/known_hosts"));
    let access = access(&key_file, &known_hosts_file);
    runtime().block_on(async {
        let key = std::sync::Arc::new(key);
        let slots: Vec<Slot> = targets
            .iter()
            .enumerate()
            .map(|(index, target)| {
                let candidate =
                    Candidate { target: target.clone(), ssh_key: Some(key.clone()), known_hosts: Some(known.clone()) };
                Slot::single(format!("slot {index}"), candidate)
            })
            .collect();
        let mut hosts = Hosts::connect(&slots, &access).await.unwrap_or_else(|e| panic!("connect: {e}"));
        hosts.check().await.unwrap_or_else(|e| panic!("check: {e}"));
        let facts = hosts
            .iter()
            .map(|host| (host.target.to_string(), host.facts.as_ref().expect("checked").os.clone()))
            .collect();
        let summary = hosts.summary();
        hosts.close().await;
        (facts, summary)
    })
}

fn unix(path: &std::path::Path) -> DockerHost {
    DockerHost::parse(&format!("unix://{}", path.display()), false).unwrap()
}

#[test]
fn several_hosts_are_connected_and_checked_together_each_with_its_facts() {
    let world = World::shared();
    let targets =
        [unix(&world.docker_sock), DockerHost::parse(&world.ssh_url(), false).unwrap(), unix(&world.cold_docker_sock)];
    let (facts, summary) = connect_and_check(world, &targets);
    let names: Vec<&str> = facts.iter().map(|(target, _)| target.as_str()).collect();
    let expected: Vec<String> = targets.iter().map(ToString::to_string).collect();
    assert_eq!(names, expected, "the hosts keep the order they were given in");
    assert!(facts.iter().all(|(_, os)| os == "linux"), "{facts:?}");
    for target in &expected {
        assert!(summary.contains(&format!("{target}: Docker ")), "each host's facts are in the summary: {summary}");
    }
}

#[test]
fn one_host_is_a_list_of_one_and_its_summary_is_its_facts_alone() {
    let world = World::shared();
    let (facts, summary) = connect_and_check(world, &[unix(&world.docker_sock)]);
    assert_eq!(facts.len(), 1);
    assert!(summary.starts_with("Docker "), "{summary}");
}

#[test]
fn slots_naming_the_same_target_share_one_connection() {
    let world = World::shared();
    let ssh = DockerHost::parse(&world.ssh_url(), false).unwrap();
    let (facts, summary) = connect_and_check(world, &[ssh.clone(), unix(&world.docker_sock), ssh]);
    assert_eq!(facts.len(), 2, "two distinct targets, two hosts: {facts:?}");
    assert!(!summary.is_empty());
}

/// Issue 16: slots whose first candidate is down fail over to their next; a target tried once is
/// not tried again for another slot, and slots that land on the same target share its connection.
#[test]
fn slots_fail_over_past_a_dead_candidate_tried_once_and_share_the_next() {
    let world = World::shared();
    let key = std::sync::Arc::new(SshKey::parse(&std::fs::read_to_string(&world.key_ed25519).unwrap(), None).unwrap());
    let known = std::fs::read_to_string(&world.known_hosts_plain).unwrap();
    let home = tempfile::tempdir().unwrap();
    let (key_file, known_hosts_file) = (home.path().join(".ssh/id_rsa"), home.path().join(".ssh/known_hosts"));
    let access = access(&key_file, &known_hosts_file);
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dead = DockerHost::parse(&format!("ssh://{}@127.0.0.1:{refused}", world.ssh_user), false).unwrap();
    let alive = DockerHost::parse(&format!("ssh://{}@127.0.0.1:{}", world.ssh_user, world.ssh_port), false).unwrap();
    let candidate = |target: &DockerHost| Candidate {
        target: target.clone(),
        ssh_key: Some(key.clone()),
        known_hosts: Some(known.clone()),
    };
    let slots: Vec<Slot> = ["linux/amd64", "linux/arm64"]
        .iter()
        .map(|name| Slot { name: name.to_string(), candidates: vec![candidate(&dead), candidate(&alive)] })
        .collect();
    runtime().block_on(async {
        let mut hosts = Hosts::connect_with_failover(&slots, &access, Duration::from_secs(2)).await.unwrap();
        assert_eq!(hosts.iter().count(), 1, "one connection for both slots");
        assert_eq!(hosts.for_slot(0).unwrap().target, alive);
        assert_eq!(hosts.for_slot(1).unwrap().target, alive);
        let failed: Vec<(&DockerHost, &str)> = hosts.failed().iter().map(|host| (&host.target, host.class)).collect();
        assert_eq!(failed, [(&dead, "connection-refused")], "the dead target is tried once");
        hosts.check().await.unwrap();
        hosts.close().await;

        // Every candidate down: the first one's error, as with one host.
        let slot = Slot { name: String::new(), candidates: vec![candidate(&dead)] };
        let Err(error) = Hosts::connect_with_failover(&[slot], &access, Duration::from_secs(2)).await else {
            panic!("connected to a refused port")
        };
        assert_eq!(error.exit_code(), 21, "{error}");
    });
}
