//! A build's progress in the log, from either builder: the classic builder's text stream
//! (`Step 2/8 : COPY …`, `---> Using cache`) or BuildKit's status messages (vertices such as
//! `[2/8] COPY …` with their cached flag, times and output). Each Dockerfile step becomes one
//! line with its duration and whether it was CACHED; in the plain mode each output line of a RUN
//! step is logged too, prefixed with its step (`[2/8] RUN make | cc -o app`); the output of the step
//! that fails is kept for the error. Every line goes through the log, hence the redactor.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bollard::moby::buildkit::v1::StatusResponse;

use crate::error::Error;
use crate::image::spec::ProgressMode;
use crate::output::escape_controls;

/// Output lines of the failing step shown when a build fails.
const TAIL: usize = 20;

/// The classic builder's message after a RUN step's container ended.
const CONTAINER_REMOVED: &str = "Removing intermediate container ";

/// The most characters of a step's name that prefix its output lines.
const PREFIX_WIDTH: usize = 40;

/// What a build did, for the log and the metadata file.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BuildSummary {
    /// Each Dockerfile step, in the order it finished.
    pub steps: Vec<StepRecord>,
    /// The image id (its config's digest), as the daemon reported it.
    pub image_id: Option<String>,
    /// How much of the context a BuildKit session sent; `None`: the whole context was sent.
    pub context: Option<super::ContextSent>,
}

impl BuildSummary {
    /// How many steps were taken from the cache.
    pub fn cached(&self) -> usize {
        self.steps.iter().filter(|step| step.cached).count()
    }
}

/// One Dockerfile step of a build.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// As the log shows it, e.g. `step 2/8 COPY src/ /app/`.
    pub title: String,
    pub cached: bool,
    pub seconds: f64,
}

/// The progress of one build.
pub struct Progress {
    /// Whether RUN steps' output is logged as it comes.
    show_output: bool,
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
    /// `[3/3] RUN make`, the prefix of its output lines.
    label: String,
    started: Instant,
    cached: bool,
    /// Whether the step's container is running (its output lines come until it is removed).
    running: bool,
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
    pub fn new(mode: ProgressMode) -> Progress {
        Progress {
            show_output: mode == ProgressMode::Plain,
            summary: BuildSummary::default(),
            classic: None,
            pending: String::new(),
            vertices: HashMap::new(),
            order: Vec::new(),
        }
    }

    /// Text from the classic builder's stream (it may end mid-line).
    pub fn text(&mut self, text: &str) {
        self.pending.push_str(text);
        if self.pending.len() > MAX_OUTPUT_LINE && !self.pending.contains('\n') {
            let piece = cut_line(&std::mem::take(&mut self.pending));
            self.pending = format!("{piece}\n");
        }
        while let Some(newline) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=newline).collect();
            let line = clean_line(&line);
            // A RUN step's last output line without its newline arrives glued to the daemon's
            // next message.
            let glued = line.find(CONTAINER_REMOVED).filter(|at| *at > 0);
            match glued {
                Some(at) if self.classic.as_ref().is_some_and(|step| step.running) => {
                    self.classic_line(line[..at].to_string());
                    self.classic_line(line[at..].to_string());
                }
                _ => self.classic_line(line),
            }
        }
    }

    /// One line of the classic builder's stream.
    fn classic_line(&mut self, line: String) {
        if let Some(rest) = line.strip_prefix("Step ") {
            self.finish_classic();
            let (counter, instruction) = rest.split_once(" : ").unwrap_or((rest, ""));
            self.classic = Some(ClassicStep {
                title: format!("step {counter} {instruction}"),
                label: format!("[{counter}] {instruction}"),
                started: Instant::now(),
                cached: false,
                running: false,
                output: VecDeque::new(),
            });
        } else if let Some(step) = self.classic.as_mut() {
            let trimmed = line.trim();
            if trimmed == "---> Using cache" {
                step.cached = true;
            } else if trimmed.starts_with("---> Running in ") {
                step.running = true;
            } else if trimmed.starts_with("--->") || trimmed.starts_with(CONTAINER_REMOVED) {
                step.running = false;
            } else if !trimmed.is_empty() {
                if step.running && self.show_output {
                    log_output(&step.label, &line);
                } else {
                    tracing::debug!("    {line}");
                }
                keep(&mut step.output, line);
            }
        }
    }

    /// The image id the daemon reported at the end of the build.
    pub fn image_id(&mut self, id: String) {
        if !id.is_empty() {
            self.summary.image_id = Some(id);
        }
    }

    fn finish_classic(&mut self) {
        if let Some(step) = self.classic.take() {
            self.record(step.title, step.cached, step.started.elapsed().as_secs_f64());
        }
    }

    /// Logs a finished step and counts it.
    fn record(&mut self, title: String, cached: bool, seconds: f64) {
        tracing::info!("  {title}: {} ({seconds:.2}s)", outcome(cached));
        self.summary.steps.push(StepRecord { title, cached, seconds });
    }

    /// One of BuildKit's status messages.
    pub fn status(&mut self, status: StatusResponse) {
        for update in status.vertexes {
            if !self.vertices.contains_key(&update.digest) {
                self.order.push(update.digest.clone());
            }
            let vertex = self.vertices.entry(update.digest).or_default();
            if !update.name.is_empty() {
                vertex.name = escape_controls(&update.name).into_owned();
            }
            vertex.cached |= update.cached;
            // protobuf Timestamps (bollard does not export their type)
            let seconds = |time: Option<(i64, i32)>| time.map(|(s, n)| s as f64 + f64::from(n) / 1e9);
            vertex.started = seconds(update.started.map(|t| (t.seconds, t.nanos))).or(vertex.started);
            vertex.completed = seconds(update.completed.map(|t| (t.seconds, t.nanos))).or(vertex.completed);
            if !update.error.is_empty() {
                vertex.error = escape_controls(&update.error).into_owned();
            }
        }
        for log in status.logs {
            let vertex = self.vertices.entry(log.vertex).or_default();
            vertex.partial.extend_from_slice(&log.msg);
            while let Some(newline) = vertex.partial.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = vertex.partial.drain(..=newline).collect();
                vertex.take_line(&String::from_utf8_lossy(&line), self.show_output);
            }
            // An endless line is shown in pieces, so that it holds no more than this much.
            while vertex.partial.len() > MAX_OUTPUT_LINE {
                let piece: Vec<u8> = vertex.partial.drain(..MAX_OUTPUT_LINE).collect();
                vertex.take_line(&cut_line(&String::from_utf8_lossy(&piece)), self.show_output);
            }
        }
        for warning in status.warnings {
            tracing::warn!("build warning: {}", escape_controls(String::from_utf8_lossy(&warning.short).trim()));
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
            // An output line without its newline is shown before the step's own line.
            let partial = std::mem::take(&mut vertex.partial);
            vertex.take_line(&String::from_utf8_lossy(&partial), self.show_output);
            let seconds = (completed - vertex.started.unwrap_or(completed)).max(0.0);
            match step_title(&vertex.name) {
                Some(title) => finished.push((step_position(&vertex.name), title, vertex.cached, seconds)),
                None if vertex.name.is_empty() => {}
                None => tracing::debug!("  {}: {} ({seconds:.2}s)", vertex.name, outcome(vertex.cached)),
            }
        }
        // Steps that finished together in the Dockerfile's order, each stage's steps by number
        // (Docker 28's BuildKit reports a run of CACHED steps last first); stages keep their order.
        let stages: Vec<String> = finished.iter().map(|((stage, _), ..)| stage.clone()).collect();
        finished.sort_by_key(|((stage, number), ..)| (stages.iter().position(|s| s == stage), *number));
        for (_, title, cached, seconds) in finished {
            self.record(title, cached, seconds);
        }
    }

    /// The build finished: what it did.
    pub fn finish(mut self) -> BuildSummary {
        let partial = std::mem::take(&mut self.pending);
        if let Some(step) = self.classic.as_ref().filter(|step| step.running && self.show_output) {
            let line = clean_line(&partial);
            if !line.trim().is_empty() {
                log_output(&step.label, &line);
            }
        }
        self.finish_classic();
        self.report_completed();
        self.summary
    }

    /// The build failed with `message`: the error, naming the failing step with its last output.
    pub fn failure(&mut self, message: String) -> Error {
        let message = escape_controls(&message).into_owned();
        // The steps carried out, not from the cache; the classic builder's FROM is no work of the host's.
        let built = self.summary.steps.iter().filter(|step| !step.cached && !is_from(&step.title)).count();
        let partial = std::mem::take(&mut self.pending);
        if let Some(step) = self.classic.as_mut() {
            if !partial.trim().is_empty() {
                keep(&mut step.output, partial.trim_end().to_string());
            }
        }
        if let Some(step) = self.classic.take() {
            return Error::Build { step: Some(step.title), message, output: step.output.into(), built };
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
                Error::Build { step: Some(step), message, output, built }
            }
            None => Error::Build { step: None, message, output: Vec::new(), built },
        }
    }
}

/// Whether a step's title is a `FROM` (`FROM scratch`, `FROM alpine:3`), in either builder's form.
fn is_from(title: &str) -> bool {
    title.split_whitespace().any(|word| word == "FROM")
}

/// The longest output line kept whole: a longer one (a host's or a step's endless line) is cut
/// into pieces of this size, so that neither its buffer nor its scanning grows with it.
const MAX_OUTPUT_LINE: usize = 64 * 1024;

/// A piece of an over-long line, marked as cut.
fn cut_line(piece: &str) -> String {
    format!("{piece} [line cut at {} kB]", MAX_OUTPUT_LINE / 1024)
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

impl Vertex {
    /// One output line of the vertex: kept for the error, and logged in the plain mode.
    fn take_line(&mut self, raw: &str, show_output: bool) {
        let line = clean_line(raw);
        if line.trim().is_empty() {
            return;
        }
        if show_output {
            log_output(&self.name, &line);
        } else {
            tracing::debug!("    {line}");
        }
        keep(&mut self.output, line);
    }
}

/// An output line as a terminal would leave it: without its line end, of a line redrawn with
/// carriage returns (a progress bar) only the last drawing, and without terminal escapes (the
/// classic builder colours a step's stderr).
fn clean_line(raw: &str) -> String {
    let line = raw.trim_end();
    // Colours and cursor moves dropped, whatever control is left escaped (see [`escape_controls`]).
    escape_controls(&without_escapes(line.rsplit('\r').next().unwrap_or(line))).into_owned()
}

/// The text without ANSI escape sequences: CSI (`ESC [ params final`, colours and cursor moves),
/// OSC (`ESC ] … BEL` or `ESC \\`, window titles) and the other escapes (`ESC ( B`, `ESC =`).
/// Hand-written: the strip-ansi-escapes crate also drops tabs, which a step's output keeps.
fn without_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                // Parameter and intermediate bytes, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            // ESC, intermediate bytes (` `..`/`, e.g. `ESC ( B` for a character set), a final byte.
            Some(c) if (' '..='/').contains(&c) => {
                for c in chars.by_ref() {
                    if !(' '..='/').contains(&c) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Logs one output line of a step.
fn log_output(step: &str, line: &str) {
    tracing::info!("{}", output_line(step, line));
}

/// One output line of a step as the log shows it, prefixed with the step:
/// `  [2/4] RUN make | cc -o app`.
fn output_line(step: &str, line: &str) -> String {
    format!("  {} | {line}", output_prefix(step))
}

/// A step's name cut to [`PREFIX_WIDTH`] characters, for the prefix of its output lines.
fn output_prefix(name: &str) -> String {
    if name.chars().count() <= PREFIX_WIDTH {
        return name.to_string();
    }
    let mut prefix: String = name.chars().take(PREFIX_WIDTH - 1).collect();
    prefix.push('…');
    prefix
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

/// A step's stage and number from its vertex name: `[build 2/5] RUN make` is `("build", 2)`.
fn step_position(name: &str) -> (String, u32) {
    let inside = name.strip_prefix('[').and_then(|rest| rest.split_once(']')).map_or("", |(inside, _)| inside);
    let (stage, counter) = inside.rsplit_once(' ').unwrap_or(("", inside));
    let number = counter.split_once('/').and_then(|(done, _)| done.parse().ok()).unwrap_or(0);
    (stage.to_string(), number)
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
    fn an_endless_output_line_is_cut_and_holds_bounded_memory() {
        let mut progress = Progress::new(ProgressMode::Plain);
        progress.status(StatusResponse {
            vertexes: vec![vertex("c", "[2/2] RUN yes", false, 1, None)],
            ..Default::default()
        });
        let chunk = vec![b'y'; 100 * 1024];
        for _ in 0..50 {
            progress.status(StatusResponse {
                logs: vec![VertexLog { vertex: "c".to_string(), msg: chunk.clone(), ..Default::default() }],
                ..Default::default()
            });
            assert!(progress.vertices["c"].partial.len() <= MAX_OUTPUT_LINE, "the line's buffer is bounded");
        }
        let output = &progress.vertices["c"].output;
        assert!(output.iter().all(|line| line.len() <= MAX_OUTPUT_LINE + 32), "the kept lines are bounded");
        assert!(output.iter().any(|line| line.ends_with("[line cut at 64 kB]")), "{:?}", output.len());
        // The classic builder's text stream too.
        let mut classic = Progress::new(ProgressMode::Plain);
        for _ in 0..50 {
            classic.text(&"y".repeat(100 * 1024));
            assert!(classic.pending.len() <= MAX_OUTPUT_LINE + 100 * 1024 + 32);
        }
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
        let mut progress = Progress::new(ProgressMode::Steps);
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
        let summary = progress.finish();
        let titles: Vec<&str> = summary.steps.iter().map(|step| step.title.as_str()).collect();
        assert_eq!(titles, ["step 2/3 COPY busybox /bin/busybox", "step 3/3 RUN make"]);
        assert_eq!(summary.cached(), 1);
        assert_eq!(summary.steps[1].seconds, 2.0);
    }

    /// Issue 22: Docker 28 reports a run of CACHED steps last first; the log keeps the Dockerfile's
    /// order, each stage's steps by number.
    #[test]
    fn steps_reported_together_are_logged_in_dockerfile_order() {
        let mut progress = Progress::new(ProgressMode::Steps);
        progress.status(StatusResponse {
            vertexes: vec![
                vertex("e", "[build 3/3] RUN make", true, 1, Some(1)),
                vertex("d", "[build 2/3] COPY src/ /src/", true, 1, Some(1)),
                vertex("c", "[3/3] COPY --from=build /out /", true, 1, Some(1)),
                vertex("b", "[2/3] COPY busybox /bin/busybox", true, 1, Some(1)),
                vertex("a", "[internal] load build context", false, 0, Some(1)),
            ],
            ..Default::default()
        });
        let titles: Vec<String> = progress.finish().steps.into_iter().map(|step| step.title).collect();
        assert_eq!(
            titles,
            [
                "step build 2/3 COPY src/ /src/",
                "step build 3/3 RUN make",
                "step 2/3 COPY busybox /bin/busybox",
                "step 3/3 COPY --from=build /out /",
            ]
        );
    }

    #[test]
    fn a_failing_buildkit_step_keeps_its_last_output_lines() {
        let mut progress = Progress::new(ProgressMode::Steps);
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
        let Error::Build { step, message, output, built } = progress.failure("failed".to_string()) else {
            panic!("not a build error")
        };
        assert_eq!(built, 0);
        assert_eq!(step.as_deref(), Some("step 3/3 RUN make"));
        assert_eq!(message, "failed");
        assert_eq!(output.len(), TAIL + 1);
        assert_eq!(output.first().map(String::as_str), Some("line 10"));
        assert_eq!(output.last().map(String::as_str), Some("no newline"));
    }

    #[test]
    fn a_step_canceled_beside_the_failing_one_is_not_blamed() {
        let mut progress = Progress::new(ProgressMode::Steps);
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
        let mut progress = Progress::new(ProgressMode::Steps);
        progress.text(
            "Step 1/3 : FROM scratch\n ---> \nStep 2/3 : COPY a /a\n ---> Using cache\n ---> 1234\nStep 3/3 : RUN ma",
        );
        progress.text("ke\n ---> Running in 5678\ncc -o app\n");
        let Error::Build { step, output, built, .. } = progress.failure("returned a non-zero code: 2".to_string())
        else {
            panic!("not a build error")
        };
        assert_eq!(step.as_deref(), Some("step 3/3 RUN make"));
        assert_eq!(output, ["cc -o app"]);
        // FROM is no work of the host's, and the COPY came from its cache: nothing was built.
        assert_eq!(built, 0);
    }

    #[test]
    fn a_failure_counts_the_steps_the_host_carried_out_before_it() {
        let mut progress = Progress::new(ProgressMode::Steps);
        progress.text(
            "Step 1/3 : FROM scratch
 ---> 
Step 2/3 : COPY a /a
 ---> 1234
Step 3/3 : RUN make
",
        );
        let Error::Build { built, .. } = progress.failure("failed to create endpoint".to_string()) else {
            panic!("not a build error")
        };
        assert_eq!(built, 1);
    }

    /// The log lines that `work` writes at the info level.
    fn logged(work: impl FnOnce()) -> Vec<String> {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::INFO)
            .without_time()
            .with_level(false)
            .with_target(false)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, work);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|line| line.trim_start().to_string()).collect()
    }

    fn run_step_with_output(mode: ProgressMode) -> Vec<String> {
        logged(|| {
            let mut progress = Progress::new(mode);
            progress.status(StatusResponse {
                vertexes: vec![vertex("c", "[2/2] RUN make", false, 1, None)],
                logs: vec![
                    VertexLog {
                        vertex: "c".to_string(),
                        msg: b"cc -o app\ndownloading 10%\rdownloading 100%\n".to_vec(),
                        ..Default::default()
                    },
                    VertexLog { vertex: "c".to_string(), msg: b"no newline at the end".to_vec(), ..Default::default() },
                ],
                ..Default::default()
            });
            progress.status(StatusResponse {
                vertexes: vec![vertex("c", "[2/2] RUN make", false, 1, Some(3))],
                ..Default::default()
            });
            progress.finish();
        })
    }

    #[test]
    fn plain_progress_logs_run_output_prefixed_with_its_step_before_the_step_line() {
        assert_eq!(
            run_step_with_output(ProgressMode::Plain),
            [
                "[2/2] RUN make | cc -o app",
                "[2/2] RUN make | downloading 100%",
                "[2/2] RUN make | no newline at the end",
                "step 2/2 RUN make: done (2.00s)",
            ]
        );
    }

    #[test]
    fn steps_progress_logs_only_the_step_line() {
        assert_eq!(run_step_with_output(ProgressMode::Steps), ["step 2/2 RUN make: done (2.00s)"]);
    }

    #[test]
    fn classic_run_output_is_logged_between_running_in_and_the_container_removal() {
        let lines = logged(|| {
            let mut progress = Progress::new(ProgressMode::Plain);
            progress.text(
                "Step 1/2 : COPY a /a\n ---> Using cache\n ---> 1234\nStep 2/2 : RUN make\n ---> Running in 5678\n",
            );
            progress.text("cc -o app\n\x1b[91mwarning\n\x1b[0mdone, no newlineRemoving intermediate container 5678\n");
            progress.text(" ---> 9abc\nSuccessfully built 9abc\n");
            progress.image_id("sha256:9abc".to_string());
            let summary = progress.finish();
            assert_eq!(summary.image_id.as_deref(), Some("sha256:9abc"));
            assert_eq!(summary.steps.len(), 2);
        });
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert!(lines[0].starts_with("step 1/2 COPY a /a: CACHED"), "{lines:?}");
        assert_eq!(
            lines[1..4],
            ["[2/2] RUN make | cc -o app", "[2/2] RUN make | warning", "[2/2] RUN make | done, no newline"]
        );
        assert!(lines[4].starts_with("step 2/2 RUN make: done"), "{lines:?}");
    }

    #[test]
    fn output_lines_are_prefixed_with_the_step_cut_to_a_readable_width() {
        assert_eq!(output_line("[2/4] RUN make", "ok"), "  [2/4] RUN make | ok");
        let long = "[build 3/9] RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo compiling widget.c\"]";
        let line = output_line(long, "compiling widget.c");
        assert_eq!(line, "  [build 3/9] RUN [\"/bin/busybox\", \"sh\", … | compiling widget.c");
        assert_eq!(output_prefix(long).chars().count(), PREFIX_WIDTH);
        assert_eq!(clean_line("50%\r100%\r\n"), "100%");
        assert_eq!(clean_line("\x1b[91mwarning:\tdeprecated\x1b[0m\n"), "warning:\tdeprecated");
        assert_eq!(without_escapes("\x1b]0;title\x07a\x1b[1;31mb\x1b[Kc\x1b(B"), "abc");
    }
}
