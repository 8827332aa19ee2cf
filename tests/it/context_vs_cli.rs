//! The build context against the docker CLI's: for a corpus of `.dockerignore` files and
//! Dockerfile places, the files a `COPY . /ctx/` image holds when the real docker CLI builds it
//! (`/usr/bin/docker`, classic builder) and when the agent does (`--builder classic`) must be
//! the same. The CLI is the reference, not our own expectations.
//!
//! Every build here is `--no-cache`: the comparison needs no cache, and Docker 20.10's classic
//! builder, looking for a cached `FROM scratch` step, reads every image without a parent on the
//! daemon (thousands on the shared one: every BuildKit image is one) and fails the build with
//! `unable to find image sha256:…` when one of them is removed meanwhile — by another test, or
//! another test run on the same daemon. Without the lookup the race cannot happen.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::agent::Agent;

const SOCKET: &str = "unix:///var/run/docker.sock";

/// The tree every case starts from.
const TREE: &[&str] = &[
    "a.txt",
    "keep.txt",
    "top.txt",
    "README.md",
    "notes.md",
    "x.tmp",
    "app.log",
    "sub/top.txt",
    "sub/b.txt",
    "sub/c.md",
    "sub/README.md",
    "sub/deep/d.log",
    "important/y/x.log",
    "important/z.log",
    "build/out.bin",
    "build/keep.txt",
    "docs/keep.md",
    "docs/other.md",
    "dir/keep.txt",
    "dir/other.txt",
    "docker/compose.yml",
];

/// One case: the `.dockerignore` (None: no file) and where the Dockerfile is, relative to the
/// context (`../` for outside it).
struct Case {
    name: &'static str,
    ignore: Option<&'static str>,
    dockerfile: &'static str,
}

const CASES: &[Case] = &[
    Case { name: "no-ignore", ignore: None, dockerfile: "Dockerfile" },
    Case { name: "reinclude", ignore: Some("*.txt\n!keep.txt\n"), dockerfile: "Dockerfile" },
    Case { name: "double-star", ignore: Some("**/*.log\n!important/**/x.log\n"), dockerfile: "Dockerfile" },
    Case { name: "trailing-slash", ignore: Some("build/\nsub/deep/\n"), dockerfile: "Dockerfile" },
    Case { name: "leading-slash", ignore: Some("/top.txt\n/sub/b.txt\n"), dockerfile: "Dockerfile" },
    Case { name: "md-but-readme", ignore: Some("*.md\n!README.md\n"), dockerfile: "Dockerfile" },
    Case {
        name: "dir-with-a-file-back",
        ignore: Some("docs\n!docs/keep.md\nbuild/\n!build/keep.txt\n"),
        dockerfile: "Dockerfile",
    },
    Case { name: "star-star-exception-outside-dir", ignore: Some("dir\n!**/keep.txt\n"), dockerfile: "Dockerfile" },
    Case {
        name: "ignores-itself-and-dockerfile",
        ignore: Some("Dockerfile\n.dockerignore\n*.tmp\n"),
        dockerfile: "Dockerfile",
    },
    Case { name: "everything-but", ignore: Some("*\n!sub\nsub/*.md\n"), dockerfile: "Dockerfile" },
    Case { name: "dockerfile-in-ignored-dir", ignore: Some("docker/\n"), dockerfile: "docker/Dockerfile" },
    Case { name: "dockerfile-outside", ignore: Some("*.tmp\n"), dockerfile: "../Dockerfile" },
    Case { name: "dockerfile-outside-no-ignore", ignore: None, dockerfile: "../Dockerfile" },
    // Issue 26: Go's filepath.Clean keeps a leading `..`, so these exceptions re-include nothing.
    Case { name: "dot-dot-exceptions", ignore: Some("*\n!../a.txt\n!sub/../../keep.txt\n"), dockerfile: "Dockerfile" },
    // moby's matcher: `**` inside a segment, a `dir/**` that keeps `dir`, `[^…]` classes. (Not
    // `**.log`: Docker 20.10's CLI matches it as `(.*/)?\.log`, today's patternmatcher as any path
    // ending in `.log`; the agent follows today's.)
    Case { name: "moby-double-stars", ignore: Some("sub**/*.md\ndocs/**\n[^a-k]*.txt\n"), dockerfile: "Dockerfile" },
];

/// Lays out a case: `<dir>/ctx/` with the tree, and the Dockerfile where the case puts it.
fn lay_out(dir: &Path, case: &Case, nonce: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let context = dir.join("ctx");
    for name in TREE {
        let path = context.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, name).unwrap();
    }
    std::fs::create_dir_all(context.join("empty")).unwrap();
    if let Some(ignore) = case.ignore {
        std::fs::write(context.join(".dockerignore"), ignore).unwrap();
    }
    let dockerfile = context.join(case.dockerfile);
    std::fs::create_dir_all(dockerfile.parent().unwrap()).unwrap();
    // The nonce keeps one test run's images from another's cache.
    std::fs::write(&dockerfile, format!("FROM scratch\nLABEL nonce={nonce}\nCOPY . /ctx/\n")).unwrap();
    (context, dockerfile)
}

/// The paths under /ctx/ of an image on the daemon at `socket`, directories with a trailing `/`.
fn files_of(socket: &str, image: &str) -> BTreeSet<String> {
    let docker = |args: &[&str]| {
        let output = Command::new("docker").env("DOCKER_HOST", socket).args(args).output().expect("docker");
        assert!(output.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let container = docker(&["create", image, "/none"]).trim().to_string();
    let export = Command::new("sh")
        .arg("-c")
        .arg(format!("docker export {container} | tar -t"))
        .env("DOCKER_HOST", socket)
        .output()
        .expect("docker export");
    docker(&["rm", &container]);
    if socket == SOCKET {
        crate::world::remove_images_after_the_run(&[image]);
    } else {
        docker(&["rmi", image]);
    }
    String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("ctx/"))
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect()
}

/// The docker CLIs to compare with: Debian's 20.10 (the one the seed's buildspec runs) and the
/// current one on PATH (28.x), both with the classic builder.
const CLIS: &[&str] = &["/usr/bin/docker", "/usr/local/bin/docker"];

/// What a docker CLI's `COPY . /ctx/` image holds for the case, built on the daemon at `socket`.
fn built_by_the_cli(
    socket: &str,
    cli: &str,
    case: &Case,
    context: &Path,
    dockerfile: &Path,
    nonce: &str,
) -> BTreeSet<String> {
    let image = format!("agent-it/context-cli-{}:{nonce}", case.name);
    let home = tempfile::tempdir().unwrap();
    let built = Command::new(cli)
        .env("DOCKER_HOST", socket)
        .env("DOCKER_BUILDKIT", "0")
        .env("HOME", home.path())
        .args(["build", "--no-cache", "-q", "-t", &image, "-f"])
        .arg(dockerfile)
        .arg(context)
        .output()
        .expect("docker build");
    assert!(built.status.success(), "{}: {cli} build: {}", case.name, String::from_utf8_lossy(&built.stderr));
    files_of(socket, &image)
}

/// Builds each case with the agent and with each docker CLI on the daemon at `socket`; the
/// differences between the images, one line each.
fn compare(socket: &str, cases: &[Case]) -> Vec<String> {
    let nonce = format!("{}-{}", std::process::id(), std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos());
    let clis: Vec<&str> = CLIS.iter().copied().filter(|cli| Path::new(cli).exists()).collect();
    assert!(!clis.is_empty(), "no docker CLI in {CLIS:?}");
    let mut differences = Vec::new();
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        let (context, dockerfile) = lay_out(dir.path(), case, &nonce);
        let repository = format!("agent-it/context-agent-{}", case.name);
        Agent::new()
            .env("DOCKER_HOST", socket)
            .args(["run", "--image", &repository, "--tag", &nonce, "--no-push", "--builder", "classic", "--no-cache"])
            .args(["--context", context.to_str().unwrap(), "--file", dockerfile.to_str().unwrap()])
            .run()
            .expect_code(0);
        let sent = files_of(socket, &format!("{repository}:{nonce}"));
        for cli in &clis {
            let expected = built_by_the_cli(socket, cli, case, &context, &dockerfile, &nonce);
            if sent != expected {
                differences.push(format!(
                    "{} ({cli}): only the docker CLI's image has {:?}; only the agent's has {:?}",
                    case.name,
                    expected.difference(&sent).collect::<Vec<_>>(),
                    sent.difference(&expected).collect::<Vec<_>>()
                ));
            }
        }
    }
    differences
}

#[test]
fn the_context_matches_what_the_docker_cli_sends_for_a_corpus_of_ignore_files() {
    let differences = compare(SOCKET, CASES);
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// The comparison once failed under load with `unable to find image sha256:…`: another test
/// removed an image while a classic build looked for its cache among every parentless image.
/// Here images without a parent are removed all through the comparison's builds, on the world's
/// arm64 daemon (its other builds are BuildKit's, which the removals do not touch); with the
/// cache lookup, most of these builds failed (23 of 28 in a trial); without it, none may.
#[test]
fn the_context_comparison_holds_while_images_are_removed_beside_its_builds() {
    let world = crate::world::World::shared();
    let socket = format!("unix://{}", world.var("TW_ARM64_DOCKER_SOCK").expect("TW_ARM64_DOCKER_SOCK"));
    let dir = tempfile::tempdir().unwrap();
    let docker =
        |args: &[&str]| Command::new("docker").env("DOCKER_HOST", &socket).args(args).output().expect("docker");
    // Images without a parent, as `docker import` makes them, each of its own content.
    let repository = format!("agent-it/parentless-{}", std::process::id());
    let count = 60;
    for index in 0..count {
        let file = dir.path().join("file.txt");
        std::fs::write(&file, format!("{repository} {index}")).unwrap();
        let tar = dir.path().join("root.tar");
        let packed = Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(dir.path()).arg("file.txt").status();
        assert!(packed.unwrap().success());
        let imported = docker(&["import", tar.to_str().unwrap(), &format!("{repository}:{index}")]);
        assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let differences = std::thread::scope(|scope| {
        scope.spawn(|| {
            for index in 0..count {
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                docker(&["rmi", &format!("{repository}:{index}")]);
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        let differences = compare(&socket, &CASES[..2]);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        differences
    });
    for index in 0..count {
        docker(&["rmi", &format!("{repository}:{index}")]);
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// A `.dockerignore` with a pattern Go's `filepath.Match` refuses (an unclosed `[`, a trailing
/// `\`): every docker CLI refuses the file, and so does the agent, in a dry run too, naming the
/// file and the line, before anything is sent; it never sends what the file meant to keep out.
#[test]
fn a_bad_pattern_is_refused_as_the_docker_cli_refuses_it() {
    let nonce = format!("{}-{}", std::process::id(), std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos());
    for (ignore, line, pattern) in [("*.tmp\n\n[abc\n", 3, "[abc"), ("secret.env\n!keep\\\n", 2, "keep\\")] {
        let case = Case { name: "bad-pattern", ignore: Some(ignore), dockerfile: "Dockerfile" };
        let dir = tempfile::tempdir().unwrap();
        let (context, dockerfile) = lay_out(dir.path(), &case, &nonce);
        for cli in CLIS.iter().filter(|cli| Path::new(cli).exists()) {
            let home = tempfile::tempdir().unwrap();
            let built = Command::new(cli)
                .env("DOCKER_HOST", SOCKET)
                .env("DOCKER_BUILDKIT", "0")
                .env("HOME", home.path())
                .args(["build", "--no-cache", "-q", "-f"])
                .arg(&dockerfile)
                .arg(&context)
                .output()
                .expect("docker build");
            let stderr = String::from_utf8_lossy(&built.stderr);
            assert!(!built.status.success() && stderr.contains("syntax error in pattern"), "{cli}: {stderr}");
        }
        for dry in [true, false] {
            let outcome = Agent::new()
                .env("DOCKER_HOST", SOCKET)
                .args(["run", "--image", "agent-it/context-bad-pattern", "--no-push", "--context"])
                .args([context.to_str().unwrap()])
                .args(dry.then_some("--dry"))
                .run();
            outcome.expect_code(4);
            let ignore_path = context.join(".dockerignore");
            let expected = format!(
                "error: failed to read {}: line {line}: {pattern:?} is no valid pattern (syntax error in pattern)",
                ignore_path.display()
            );
            assert!(outcome.stderr.contains(&expected), "{}", outcome.stderr);
            assert!(outcome.stderr.contains("the docker CLI and BuildKit refuse this file too"), "{}", outcome.stderr);
        }
    }
}
