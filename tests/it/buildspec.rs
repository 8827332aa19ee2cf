//! The repository's buildspec.yml is a real CodeBuild buildspec whose agent commands name only
//! flags and variables the agent knows.

use crate::agent::Agent;

#[test]
fn buildspec_names_only_flags_and_variables_the_agent_knows() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/buildspec.yml")).expect("buildspec.yml");
    let spec: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("buildspec.yml is YAML");
    assert_eq!(spec["version"].as_f64(), Some(0.2), "a CodeBuild buildspec version 0.2");
    let help = Agent::new().args(["run", "--help"]).run().stdout;

    // Every variable the buildspec gives the build that the agent reads is one it documents.
    let known_elsewhere = ["AGENT_URL"];
    for section in ["variables", "parameter-store"] {
        let Some(map) = spec["env"][section].as_mapping() else { continue };
        for (name, _) in map {
            let name = name.as_str().unwrap();
            assert!(help.contains(name) || known_elsewhere.contains(&name), "{name} is not a variable the agent reads");
        }
    }
    for name in ["JETS_SSH_KEY", "JETS_SSH_KNOWN", "DOCKER_HOST"] {
        assert!(text.contains(name), "the buildspec should set {name}");
    }

    // Every flag of every agent command is one `agent run --help` documents.
    let mut agent_commands = 0;
    for (_, phase) in spec["phases"].as_mapping().expect("phases") {
        for command in phase["commands"].as_sequence().into_iter().flatten() {
            let command = command.as_str().unwrap();
            let words: Vec<&str> = command.split_whitespace().collect();
            if words.first() != Some(&"agent") {
                continue;
            }
            agent_commands += 1;
            if words.get(1) == Some(&"run") {
                for flag in words.iter().filter(|word| word.starts_with("--")) {
                    let flag = flag.split('=').next().unwrap();
                    assert!(help.contains(flag), "`{command}` uses {flag}, which `agent run` does not know");
                }
            } else {
                assert_eq!(words[1..], ["--version"], "unexpected agent command `{command}`");
            }
        }
    }
    assert!(agent_commands >= 2, "the buildspec should install and run the agent");
    assert_eq!(spec["artifacts"]["files"][0].as_str(), Some("imagedefinitions.json"));
}
