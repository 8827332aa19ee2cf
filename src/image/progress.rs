//! A build's progress in the log, from either builder: the classic builder's text stream
//! (`Step 2/8 : COPY …`, `---> Using cache`) or BuildKit's status messages (vertices such as
//! `[2/8] COPY …` with their cached flag, times and output). Each Dockerfile step becomes one
//! line with its duration and whether it was CACHED; the output of the step that fails is kept for
//! the error.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bollard::moby::buildkit::v1::StatusResponse;

use crate::error::Error;

/// Output lines of the failing step shown when a build fails.
const TAIL: usize = 20;

/// What a build did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BuildSummary {
    pub steps: usize,
    pub cached: usize,
    /// How much of the context a BuildKit session sent.
    pub context: Option<super::ContextSent>,
}

/// The progress of one build.
#[derive(Default)]
pub struct Progress {
    summary: BuildSummary,
    /// The classic builder's step under way, and its unfinished output line.
    classic: Option<ClassicStep>,
    pending: String,
    /// BuildKit's vertices by digest, in the order they first appeared.
    vertices: HashMap<String, Vertex>,
    order: Vec<String>,
}

struct ClassicStep {
    title: String,
    started: Instant,
    cached: bool,
    output: VecDeque<String>,
}

#[derive(Default)]
struct Vertex {
    name: String,
    cached: bool,
    started: Option<f64>,
    completed: Option<f64>,
    error: String,
    output: VecDeque<String>,
    partial: Vec<u8>,
    reported: bool,
}

impl Progress {
    /// Text from the classic builder's stream (it may end mid-line).
    pub fn text(&mut self, text: &str) {
        self.pending.push_str(text);
        while let Some(newline) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=newline).collect();
            let line = line.trim_end();
            if let Some(rest) = line.strip_prefix("Step ") {
                self.finish_classic();
                let title = format!("step {}", rest.replacen(" : ", " ", 1));
                self.classic =
                    Some(ClassicStep { title, started: Instant::now(), cached: false, output: VecDeque::new() });
            } else if let Some(step) = self.classic.as_mut() {
                let trimmed = line.trim();
                if trimmed == "---> Using cache" {
                    step.cached = true;
                } else if !trimmed.is_empty() && !trimmed.starts_with("--->") {
                    tracing::debug!("    {line}");
                    keep(&mut step.output, line.to_string());
                }
            }
        }
    }

    fn finish_classic(&mut self) {
        if let Some(step) = self.classic.take() {
            self.count(step.cached);
            log_step(&step.title, step.cached, step.started.elapsed().as_secs_f64());
        }
    }

    fn count(&mut self, cached: bool) {
        self.summary.steps += 1;
        if cached {
            self.summary.cached += 1;
        }
    }

    /// One of BuildKit's status messages.
    pub fn status(&mut self, status: StatusResponse) {
        for update in status.vertexes {
            if !self.vertices.contains_key(&update.digest) {
                self.order.push(update.digest.clone());
            }
            let vertex = self.vertices.entry(update.digest).or_default();
            if !update.name.is_empty() {
                vertex.name = update.name;
            }
            vertex.cached |= update.cached;
            // protobuf Timestamps (bollard does not export their type)
            let seconds = |time: Option<(i64, i32)>| time.map(|(s, n)| s as f64 + f64::from(n) / 1e9);
            vertex.started = seconds(update.started.map(|t| (t.seconds, t.nanos))).or(vertex.started);
            vertex.completed = seconds(update.completed.map(|t| (t.seconds, t.nanos))).or(vertex.completed);
            if !update.error.is_empty() {
                vertex.error = update.error;
            }
        }
        for log in status.logs {
            let vertex = self.vertices.entry(log.vertex).or_default();
            vertex.partial.extend_from_slice(&log.msg);
            while let Some(newline) = vertex.partial.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = vertex.partial.drain(..=newline).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                if !line.trim().is_empty() {
                    tracing::debug!("    {line}");
                    keep(&mut vertex.output, line);
                }
            }
        }
        for warning in status.warnings {
            tracing::warn!("build warning: {}", String::from_utf8_lossy(&warning.short).trim());
        }
        self.report_completed();
    }

    /// Logs the vertices that have completed since the last status, once each.
    fn report_completed(&mut self) {
        let mut finished = Vec::new();
        for digest in &self.order {
            let Some(vertex) = self.vertices.get_mut(digest) else { continue };
            if vertex.reported || !vertex.error.is_empty() {
                continue;
            }
            let Some(completed) = vertex.completed else { continue };
            vertex.reported = true;
            let seconds = (completed - vertex.started.unwrap_or(completed)).max(0.0);
            match step_title(&vertex.name) {
                Some(title) => {
                    log_step(&title, vertex.cached, seconds);
                    finished.push(vertex.cached);
                }
                None if vertex.name.is_empty() => {}
                None => tracing::debug!("  {}: {} ({seconds:.2}s)", vertex.name, outcome(vertex.cached)),
            }
        }
        for cached in finished {
            self.count(cached);
        }
    }

    /// The build finished: what it did.
    pub fn finish(mut self) -> BuildSummary {
        self.finish_classic();
        self.report_completed();
        self.summary
    }

    /// The build failed with `message`: the error, naming the failing step with its last output.
    pub fn failure(mut self, message: String) -> Error {
        let partial = std::mem::take(&mut self.pending);
        if let Some(step) = self.classic.as_mut() {
            if !partial.trim().is_empty() {
                keep(&mut step.output, partial.trim_end().to_string());
            }
        }
        if let Some(step) = self.classic.take() {
            return Error::Build { step: Some(step.title), message, output: step.output.into() };
        }
        // The failing step: BuildKit cancels the steps running beside it, and those report
        // "canceled" errors of their own.
        let errors: Vec<&Vertex> = self
            .order
            .iter()
            .rev()
            .filter_map(|digest| self.vertices.get(digest))
            .filter(|v| !v.error.is_empty())
            .collect();
        let failed = errors.iter().find(|v| !v.error.contains("canceled")).or(errors.first()).copied();
        match failed {
            Some(vertex) => {
                let mut output: Vec<String> = vertex.output.iter().cloned().collect();
                let partial = String::from_utf8_lossy(&vertex.partial).trim_end().to_string();
                if !partial.trim().is_empty() {
                    output.push(partial);
                }
                let step = step_title(&vertex.name).unwrap_or_else(|| vertex.name.clone());
                Error::Build { step: Some(step), message, output }
            }
            None => Error::Build { step: None, message, output: Vec::new() },
        }
    }
}

/// Keeps the last [`TAIL`] lines.
fn keep(output: &mut VecDeque<String>, line: String) {
    if output.len() == TAIL {
        output.pop_front();
    }
    output.push_back(line);
}

fn outcome(cached: bool) -> &'static str {
    if cached { "CACHED" } else { "done" }
}

fn log_step(title: &str, cached: bool, seconds: f64) {
    tracing::info!("  {title}: {} ({seconds:.2}s)", outcome(cached));
}

/// A Dockerfile step's title from BuildKit's vertex name, in the classic builder's words:
/// `[2/8] COPY src/ /app/` is `step 2/8 COPY src/ /app/`, `[build 2/5] RUN make` is
/// `step build 2/5 RUN make`. BuildKit's own work (`[internal] load …`, `exporting to image`) is
/// not a step.
fn step_title(name: &str) -> Option<String> {
    let rest = name.strip_prefix('[')?;
    let (inside, instruction) = rest.split_once("] ")?;
    let counter = inside.rsplit(' ').next()?;
    let (done, total) = counter.split_once('/')?;
    if done.is_empty() || total.is_empty() || !(done.chars().chain(total.chars()).all(|c| c.is_ascii_digit())) {
        return None;
    }
    Some(format!("step {inside} {instruction}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::moby::buildkit::v1::{Vertex as BkVertex, VertexLog};

    fn vertex(digest: &str, name: &str, cached: bool, started: i64, completed: Option<i64>) -> BkVertex {
        let mut vertex = BkVertex { digest: digest.to_string(), name: name.to_string(), cached, ..Default::default() };
        vertex.started = Some(Default::default());
        vertex.started.as_mut().unwrap().seconds = started;
        if let Some(completed) = completed {
            vertex.completed = Some(Default::default());
            vertex.completed.as_mut().unwrap().seconds = completed;
        }
        vertex
    }

    #[test]
    fn buildkit_names_become_step_titles() {
        assert_eq!(step_title("[2/8] COPY src/ /app/").as_deref(), Some("step 2/8 COPY src/ /app/"));
        assert_eq!(step_title("[build 2/5] RUN make").as_deref(), Some("step build 2/5 RUN make"));
        assert_eq!(step_title("[internal] load build definition from Dockerfile"), None);
        assert_eq!(step_title("exporting to image"), None);
        assert_eq!(step_title("[a/b] x"), None);
    }

    #[test]
    fn buildkit_steps_are_counted_once_with_their_cached_flag() {
        let mut progress = Progress::default();
        progress.status(StatusResponse {
            vertexes: vec![
                vertex("a", "[internal] load build context", false, 0, Some(1)),
                vertex("b", "[2/3] COPY busybox /bin/busybox", true, 1, Some(1)),
                vertex("c", "[3/3] RUN make", false, 1, None),
            ],
            ..Default::default()
        });
        // The same vertex again, completed, then once more: counted once.
        for _ in 0..2 {
            progress.status(StatusResponse {
                vertexes: vec![vertex("c", "[3/3] RUN make", false, 1, Some(3))],
                ..Default::default()
            });
        }
        assert_eq!(progress.finish(), BuildSummary { steps: 2, cached: 1, context: None });
    }

    #[test]
    fn a_failing_buildkit_step_keeps_its_last_output_lines() {
        let mut progress = Progress::default();
        progress.status(StatusResponse {
            vertexes: vec![vertex("c", "[3/3] RUN make", false, 1, None)],
            logs: (0..30)
                .map(|n| VertexLog {
                    vertex: "c".to_string(),
                    msg: format!("line {n}\n").into_bytes(),
                    ..Default::default()
                })
                .chain([VertexLog { vertex: "c".to_string(), msg: b"no newline".to_vec(), ..Default::default() }])
                .collect(),
            ..Default::default()
        });
        progress.status(StatusResponse {
            vertexes: vec![BkVertex { error: "exit code: 2".to_string(), ..vertex("c", "", false, 1, Some(2)) }],
            ..Default::default()
        });
        let Error::Build { step, message, output } = progress.failure("failed".to_string()) else {
            panic!("not a build error")
        };
        assert_eq!(step.as_deref(), Some("step 3/3 RUN make"));
        assert_eq!(message, "failed");
        assert_eq!(output.len(), TAIL + 1);
        assert_eq!(output.first().map(String::as_str), Some("line 10"));
        assert_eq!(output.last().map(String::as_str), Some("no newline"));
    }

    #[test]
    fn a_step_canceled_beside_the_failing_one_is_not_blamed() {
        let mut progress = Progress::default();
        let failed =
            BkVertex { error: "exit code: 1".to_string(), ..vertex("a", "[build 3/4] RUN make", false, 1, Some(2)) };
        let canceled = BkVertex {
            error: "context canceled".to_string(),
            ..vertex("b", "[test 2/2] RUN sleep 9", false, 1, Some(2))
        };
        progress.status(StatusResponse { vertexes: vec![failed, canceled], ..Default::default() });
        let Error::Build { step, .. } = progress.failure("failed".to_string()) else { panic!("not a build error") };
        assert_eq!(step.as_deref(), Some("step build 3/4 RUN make"));
    }

    #[test]
    fn classic_steps_are_read_from_the_text_stream() {
        let mut progress = Progress::default();
        progress.text(
            "Step 1/3 : FROM scratch\n ---> \nStep 2/3 : COPY a /a\n ---> Using cache\n ---> 1234\nStep 3/3 : RUN ma",
        );
        progress.text("ke\n ---> Running in 5678\ncc -o app\n");
        let Error::Build { step, output, .. } = progress.failure("returned a non-zero code: 2".to_string()) else {
            panic!("not a build error")
        };
        assert_eq!(step.as_deref(), Some("step 3/3 RUN make"));
        assert_eq!(output, ["cc -o app"]);
    }
}
