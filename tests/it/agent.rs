//! A builder that runs the real `agent` executable in a temporary working directory with a clean
//! environment and a temporary HOME, and captures what it did.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One run of the agent, before it starts.
pub struct Agent {
    /// The executable: this build's `agent` unless `program` names another (the aarch64 one).
    program: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    pub home: tempfile::TempDir,
    pub work: tempfile::TempDir,
}

/// What a run did.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// Both streams, for greps that must cover every byte the agent printed.
    pub fn all_output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Asserts the exit code and that nothing panicked, showing the output when not.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "unexpected exit code\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        assert!(!self.all_output().contains("panicked"), "the agent panicked:\n{}", self.stderr);
        assert!(!self.all_output().contains("RUST_BACKTRACE"), "the agent panicked:\n{}", self.stderr);
        self
    }
}

impl Agent {
    /// A run with no environment but PATH, a fresh HOME, and a working directory holding a
    /// one-line Dockerfile.
    pub fn new() -> Agent {
        let home = tempfile::tempdir().expect("temp HOME");
        let work = tempfile::tempdir().expect("temp working directory");
        std::fs::write(work.path().join("Dockerfile"), "FROM scratch\nCOPY Dockerfile /\n").expect("write Dockerfile");
        let mut env = BTreeMap::new();
        env.insert("PATH".to_string(), std::env::var("PATH").unwrap_or_default());
        env.insert("HOME".to_string(), home.path().display().to_string());
        Agent { program: PathBuf::from(env!("CARGO_BIN_EXE_agent")), args: Vec::new(), env, home, work }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.args.extend(args.into_iter().map(|arg| arg.as_ref().to_string()));
        self
    }

    /// Another run with the same environment and arguments plus `extra`, in a fresh HOME and
    /// working directory.
    pub fn args_cloned(&self, extra: &[&str]) -> Agent {
        Agent {
            program: self.program.clone(),
            args: self.args.iter().cloned().chain(extra.iter().map(|arg| arg.to_string())).collect(),
            env: self.env.clone(),
            home: tempfile::tempdir().expect("temp HOME"),
            work: tempfile::tempdir().expect("temp working directory"),
        }
        .with_dockerfile()
    }

    fn with_dockerfile(self) -> Agent {
        std::fs::write(self.work.path().join("Dockerfile"), "FROM scratch\nCOPY Dockerfile /\n")
            .expect("write Dockerfile");
        self
    }

    /// Runs another build of the agent (a static binary of another machine, under QEMU).
    pub fn program(mut self, path: &Path) -> Self {
        self.program = path.to_path_buf();
        self
    }

    pub fn env(mut self, name: &str, value: impl AsRef<str>) -> Self {
        self.env.insert(name.to_string(), value.as_ref().to_string());
        self
    }

    /// Runs the agent to its end like [`Agent::run`], its stderr copied into `watch` as it comes,
    /// so that another thread can wait for a line (the moment to strike, in a fault test).
    pub fn run_watched(&self, watch: &Watch) -> Outcome {
        use std::io::Read as _;
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
            .args(&self.args)
            .env_clear()
            .envs(&self.env)
            .current_dir(self.work.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the agent");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (stdout, status) = std::thread::scope(|scope| {
            let stdout = scope.spawn(move || {
                let mut bytes = Vec::new();
                let _ = stdout.read_to_end(&mut bytes);
                bytes
            });
            let mut chunk = [0u8; 4096];
            while let Ok(count) = stderr.read(&mut chunk) {
                if count == 0 {
                    break;
                }
                watch.push(&chunk[..count]);
            }
            (stdout.join().expect("the stdout reader"), child.wait().expect("wait for the agent"))
        });
        let outcome = Outcome {
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: watch.text(),
            elapsed: started.elapsed(),
        };
        assert_no_world_secret(&outcome);
        outcome
    }

    /// Runs the agent to its end and returns what it did; the temp dirs stay for inspection.
    pub fn run(&self) -> Outcome {
        let started = Instant::now();
        let output = Command::new(&self.program)
            .args(&self.args)
            .env_clear()
            .envs(&self.env)
            .current_dir(self.work.path())
            .stdin(Stdio::null())
            .output()
            .expect("start the agent");
        let outcome = Outcome {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed: started.elapsed(),
        };
        assert_no_world_secret(&outcome);
        outcome
    }
}

/// The stderr of a run as it comes ([`Agent::run_watched`]), for a thread that waits for a line.
#[derive(Default)]
pub struct Watch {
    text: std::sync::Mutex<Vec<u8>>,
    grew: std::sync::Condvar,
}

impl Watch {
    fn push(&self, bytes: &[u8]) {
        self.text.lock().expect("the watch's lock").extend_from_slice(bytes);
        self.grew.notify_all();
    }

    /// What the run printed on stderr so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().expect("the watch's lock")).into_owned()
    }

    /// Waits until the run has printed `marker` on stderr, at most `limit`; panics after it with
    /// what was printed.
    pub fn wait_for(&self, marker: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut text = self.text.lock().expect("the watch's lock");
        while !String::from_utf8_lossy(&text).contains(marker) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {marker:?} within {limit:?}; stderr so far:\n{}",
                String::from_utf8_lossy(&text)
            );
            text = self.grew.wait_timeout(text, left).expect("the watch's lock").0;
        }
    }
}

/// Every file under a directory with its size and mode, to show that a run changed nothing.
pub fn tree_listing(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut entries = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).expect("read dir") {
            let entry = entry.expect("dir entry");
            let meta = entry.metadata().expect("metadata");
            entries.push(format!("{} {:o} {}", entry.path().display(), meta.mode(), meta.len()));
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    entries.sort();
    entries
}

/// The suite-wide secret check: no run of any test may print a secret of the test world — a line
/// of any of its private keys, its registry passwords, the ECR token (also base64, as ECR gives it),
/// the key passphrase — whatever the verbosity and whether the run succeeded.
fn assert_no_world_secret(outcome: &Outcome) {
    let output = outcome.all_output();
    for secret in world_secrets() {
        assert!(
            !output.contains(secret.as_str()),
            "a secret of the test world appears in the agent's output:\n{output}"
        );
    }
}

fn world_secrets() -> &'static [String] {
    static SECRETS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    SECRETS.get_or_init(|| {
        // Without the world there is nothing to compare the output with, and every check would pass
        // vacuously: fail instead.
        assert!(
            crate::world::World::is_up(),
            "{} (the suite-wide secret check needs its secrets)",
            crate::world::NOT_UP
        );
        let world = crate::world::World::shared();
        let mut secrets = vec![world.hub_pass(), world.ecr_pass(), world.key_passphrase()];
        // The ECR token as GetAuthorizationToken gives it, and the config.json `auth` of each login.
        {
            use base64::Engine;
            let base64 = base64::engine::general_purpose::STANDARD;
            secrets.push(base64.encode(format!("{}:{}", world.ecr_user, world.ecr_pass())));
            secrets.push(base64.encode(format!("{}:{}", world.hub_user, world.hub_pass())));
        }
        let keys = std::fs::read_dir(world.state_dir.join("keys")).expect("the test world's keys");
        for entry in keys.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("id_") || name.ends_with(".pub") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            secrets.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|line| line.len() >= 16 && !line.starts_with("-----"))
                    .map(str::to_string),
            );
        }
        secrets
    })
}
