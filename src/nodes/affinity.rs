//! Which host of a pool an image builds on: rendezvous (highest-random-weight) hashing of the image
//! repository over the pool, so that an image goes to the same host every time (its layer cache
//! stays warm) and adding or removing a host moves only the images that hashed to that host.
//!
//! Each host's weight for an image is the first 8 bytes of SHA-256(`host` NUL `repository`), read
//! big-endian: the same on every machine and in every version of the agent (a hash from the
//! standard library, such as `DefaultHasher`, is not promised to be). The hosts sorted by weight,
//! heaviest first, are the order in which they are tried.

use sha2::{Digest, Sha256};

/// The weight of `host` for `repository`: higher wins.
pub fn weight(host: &str, repository: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(host.as_bytes());
    hasher.update([0u8]);
    hasher.update(repository.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The indexes of `hosts` in the order they are tried for `repository`: the chosen host first,
/// then the next by the same hash. Equal weights (never seen in practice) fall back to the host
/// names, so the order is total.
pub fn order(hosts: &[String], repository: &str) -> Vec<usize> {
    let mut indexes: Vec<usize> = (0..hosts.len()).collect();
    indexes.sort_by(|&a, &b| {
        let (weight_a, weight_b) = (weight(&hosts[a], repository), weight(&hosts[b], repository));
        weight_b.cmp(&weight_a).then_with(|| hosts[a].cmp(&hosts[b]))
    });
    indexes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    fn chosen(hosts: &[String], repository: &str) -> String {
        hosts[order(hosts, repository)[0]].clone()
    }

    fn repositories() -> Vec<String> {
        (0..2000).map(|n| format!("123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app-{n}")).collect()
    }

    #[test]
    fn the_weight_is_stable_across_machines_and_versions() {
        // Pinned: a change here moves every image of every pool to another host (a cold cache).
        assert_eq!(weight("ssh://ec2-user@build-1.example.com:22/var/run/docker.sock", "example.com/app"), {
            let digest = Sha256::digest(b"ssh://ec2-user@build-1.example.com:22/var/run/docker.sock\0example.com/app");
            u64::from_be_bytes(digest[..8].try_into().unwrap())
        });
        assert_eq!(weight("a", "b"), 0x59b2_71ae_1bbc_b1d3, "{:#x}", weight("a", "b"));
    }

    #[test]
    fn the_order_is_a_permutation_and_does_not_depend_on_the_order_of_the_pool() {
        let forward = pool(&["ssh://a:22/s", "ssh://b:22/s", "ssh://c:22/s"]);
        let backward = pool(&["ssh://c:22/s", "ssh://b:22/s", "ssh://a:22/s"]);
        for repository in repositories().iter().take(200) {
            let mut indexes = order(&forward, repository);
            let names: Vec<&String> = indexes.iter().map(|&i| &forward[i]).collect();
            let reversed: Vec<&String> = order(&backward, repository).iter().map(|&i| &backward[i]).collect();
            assert_eq!(names, reversed);
            indexes.sort_unstable();
            assert_eq!(indexes, [0, 1, 2]);
        }
    }

    #[test]
    fn images_spread_over_the_pool() {
        let hosts = pool(&["ssh://a:22/s", "ssh://b:22/s", "ssh://c:22/s"]);
        let all = repositories();
        for host in &hosts {
            let share = all.iter().filter(|repository| &chosen(&hosts, repository) == host).count();
            // 2000 images over 3 hosts: about 667 each.
            assert!((550..=790).contains(&share), "{host}: {share} of {}", all.len());
        }
    }

    #[test]
    fn adding_a_host_moves_only_the_images_that_now_hash_to_it() {
        let before = pool(&["ssh://a:22/s", "ssh://b:22/s"]);
        let after = pool(&["ssh://a:22/s", "ssh://b:22/s", "ssh://new:22/s"]);
        let mut moved = 0;
        for repository in repositories() {
            let (old, new) = (chosen(&before, &repository), chosen(&after, &repository));
            if old != new {
                assert_eq!(new, "ssh://new:22/s", "{repository} moved from {old} to {new}");
                moved += 1;
            }
        }
        assert!((550..=790).contains(&moved), "{moved} moved");
    }

    #[test]
    fn removing_a_host_moves_only_its_images_each_to_its_next_host() {
        let before = pool(&["ssh://a:22/s", "ssh://b:22/s", "ssh://c:22/s"]);
        let after = pool(&["ssh://a:22/s", "ssh://c:22/s"]);
        for repository in repositories() {
            let old_order: Vec<&String> = order(&before, &repository).iter().map(|&i| &before[i]).collect();
            let new = chosen(&after, &repository);
            if *old_order[0] == "ssh://b:22/s" {
                // Its failover host takes it, as it did when b was down.
                assert_eq!(&new, old_order[1], "{repository}");
            } else {
                assert_eq!(&new, old_order[0], "{repository} moved though its host stayed");
            }
        }
    }

    #[test]
    fn a_pool_of_one_is_that_host() {
        assert_eq!(order(&pool(&["unix:///var/run/docker.sock"]), "app"), [0]);
        assert!(order(&[], "app").is_empty());
    }
}
