//! Bad input: property tests that feed the parsers arbitrary and near-valid text. None may panic;
//! each either accepts or refuses with a message. (Bounded: proptest's default 256 cases each.)

use agent::docker::host::DockerHost;
use agent::registry::reference::{EcrRegistry, Repository, check_tag};
use agent::secrets::SsmRef;
use agent::session::dockerignore::DockerIgnore;
use agent::ssh::key::repair;
use agent::ssh::known_hosts::{KnownHosts, meaningful_lines};
use proptest::prelude::*;

/// Text built from the characters these grammars care about, so cases get near valid input.
fn grammar_text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9:/@\\[\\]._\\-!*?#|= \\\\\n]{0,80}").unwrap()
}

proptest! {
    #[test]
    fn docker_host_never_panics(text in grammar_text(), tls in any::<bool>()) {
        let _ = DockerHost::parse(&text, tls);
        let _ = DockerHost::parse(&format!("ssh://{text}"), tls);
        let _ = DockerHost::parse(&format!("tcp://{text}"), tls);
    }

    #[test]
    fn a_parsed_docker_host_round_trips(user in "[a-z]{1,8}", host in "[a-z][a-z0-9.-]{0,20}", port in 1u16..) {
        let text = format!("ssh://{user}@{host}:{port}/var/run/docker.sock");
        let parsed = DockerHost::parse(&text, false).unwrap();
        prop_assert_eq!(parsed.to_string(), text);
    }

    #[test]
    fn image_references_and_tags_never_panic(text in grammar_text(), anything in any::<String>()) {
        let _ = Repository::parse(&text);
        let _ = Repository::parse(&anything);
        let _ = check_tag(&text);
        let _ = EcrRegistry::detect(&text);
        let _ = EcrRegistry::detect(&anything);
        let _ = SsmRef::parse(&anything);
        let _ = SsmRef::parse(&format!("SSM:{text}"));
    }

    #[test]
    fn known_hosts_lines_never_panic(text in grammar_text(), anything in any::<String>()) {
        let mut known = KnownHosts::default();
        let _ = known.add(&text, "test");
        let _ = known.add(&anything, "test");
        let _ = known.add(&format!("|1|{text} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEkvi7q87GfREbYKvyG0k1d9H6j3l1JFp0cjgeLiPwsy"), "test");
        let _ = known.algorithms_for(&text, 22);
        let _ = meaningful_lines(&anything);
    }

    #[test]
    fn key_repair_never_panics_and_is_idempotent(text in grammar_text(), anything in any::<String>()) {
        let _ = repair(&anything);
        let once = repair(&format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{text}\n-----END OPENSSH PRIVATE KEY-----"));
        prop_assert_eq!(repair(&once), once.clone());
    }

    #[test]
    fn dockerignore_never_panics(patterns in grammar_text(), path in "[a-z*?\\[\\]!./]{0,30}") {
        let ignore = DockerIgnore::parse(&patterns);
        let _ = ignore.excludes(&path);
        let _ = agent::session::dockerignore::glob(&patterns, &path);
    }
}

/// The seed corpus in tests/corpus/: one input a line (`\n` written as two characters where an
/// input spans lines), run through its parser. Each file grows with the inputs that once broke
/// something.
fn corpus(name: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .lines()
        .map(|line| line.replace("\\n", "\n"))
        .collect()
}

#[test]
fn the_seed_corpus_never_panics() {
    for text in corpus("docker_host.txt") {
        let _ = DockerHost::parse(&text, false);
    }
    for text in corpus("image_ref.txt") {
        let _ = Repository::parse(&text);
        let _ = check_tag(&text);
        let _ = EcrRegistry::detect(&text);
    }
    let mut known = KnownHosts::default();
    for text in corpus("known_hosts.txt") {
        let _ = known.add(&text, "corpus");
    }
    let _ = known.describe_entries();
    for text in corpus("dockerignore.txt") {
        let ignore = DockerIgnore::parse(&text);
        let _ = ignore.excludes("a/b/c.log");
    }
    for text in corpus("key_repair.txt") {
        let _ = agent::ssh::key::SshKey::parse(&text, None);
    }
    for text in corpus("build_arg.txt") {
        // Build args are checked by the real command line: a bad one is a configuration error.
        let outcome = crate::agent::Agent::new().args(["run", "--dry", "--image", "app", "--build-arg", &text]).run();
        assert!(matches!(outcome.code, Some(0) | Some(3)), "{text:?}: {outcome:?}");
    }
}
