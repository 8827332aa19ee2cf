//! Output: the run's progress as events to one reporter ([`report`]), logging with tracing to
//! stderr (human-readable text for the CodeBuild log, or JSON), and the plan on stdout. Every byte
//! written passes through the secret redactor.

use std::io::{self, Write};

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event, for the CodeBuild log
    Text,
    /// One JSON object per line, for log processors
    Json,
}

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use clap::ValueEnum;

use crate::secrets::redact;

/// Sets up logging. `RUST_LOG`, when set, decides the filter; else `-v`/`-q` do.
pub fn init(format: LogFormat, verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    // Our own crate at the chosen level; the libraries' chatter only from debug on.
    let default = match level {
        "debug" => "info,agent=debug".to_string(),
        "trace" => "debug,agent=trace".to_string(),
        level => format!("warn,agent={level}"),
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.trim().is_empty())
        .and_then(|value| EnvFilter::try_new(value).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(RedactingStderr)
        .with_timer(Elapsed(std::time::Instant::now()))
        .with_target(verbose > 0);
    let layer = match format {
        LogFormat::Text => layer
            .with_ansi(false)
            .event_format(TextLine { started: std::time::Instant::now(), with_target: verbose > 0 })
            .boxed(),
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
    };
    // The caps come after RUST_LOG and cannot be lifted by it: both filters must let an event through.
    let result = tracing_subscriber::registry().with(filter).with(library_caps()).with(layer).try_init();
    // A second init (in tests) keeps the first subscriber: nothing to do.
    let _ = result;
}

/// The most a library may log, whatever `RUST_LOG` says. These libraries log, at trace level (some at
/// debug), what passes through them before the agent can register it with the redactor, or in forms
/// no redactor can know: so their targets are capped here rather than trusted to the redactor.
/// - `aws_*` (aws-smithy-runtime, aws-sdk-ssm/ecr, aws-sigv4, aws-config): at trace the orchestrator
///   prints every response body and the deserialised output (`read HTTP response body`,
///   `output_or_error`): SSM parameter values and the ECR authorization token, before the agent has
///   them; sigv4 prints the signed request's headers (the session token); the profile loader prints
///   what it reads from `~/.aws`. Their debug level names operations, endpoints and retries only.
/// - `bollard`: at trace it prints every request body (Debug-escaped) and the query pairs of the
///   build (build args, JSON-escaped); its debug line is the request URL, whose build args taken from
///   the environment are registered with the redactor in their URL-encoded forms.
/// - `hyper`, `hyper_util`, `h2`, `tonic`, `tower`: at trace they print frames and buffers of the
///   Docker API and of the BuildKit session (whose Auth service answers with registry passwords).
/// - `russh`: at trace it prints packet-level details of the connection that carries all of the above.
/// - `reqwest`: the HTTP of the registry client and of the signed AWS calls (their tokens and
///   signatures travel in its requests' headers; the agent registers the tokens it gets).
///
/// Kept at debug, not lower: their debug lines (connections, retries, endpoints) are what a user
/// turning logging up needs, and none of them holds a value.
pub const LIBRARY_CAPS: &[(&str, LevelFilter)] = &[
    ("aws_", LevelFilter::DEBUG),
    ("bollard", LevelFilter::DEBUG),
    ("hyper", LevelFilter::DEBUG),
    ("hyper_util", LevelFilter::DEBUG),
    ("h2", LevelFilter::DEBUG),
    ("tonic", LevelFilter::DEBUG),
    ("tower", LevelFilter::DEBUG),
    ("russh", LevelFilter::DEBUG),
    ("reqwest", LevelFilter::DEBUG),
];

/// The filter that applies [`LIBRARY_CAPS`]; every other target passes at any level.
fn library_caps() -> Targets {
    Targets::new().with_default(LevelFilter::TRACE).with_targets(LIBRARY_CAPS.iter().copied())
}

/// Turns a panic into one redacted `error:` line with a hint, and exit code 1 ([`exit::INTERNAL`]),
/// as the README documents. The release profile aborts on panic (which would give 134 and print
/// the message unredacted), so the hook ends the process itself after printing; in a debug build
/// (unwinding) it does the same, so both behave alike and no destructor runs after a bug.
///
/// [`exit::INTERNAL`]: crate::error::exit::INTERNAL
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|text| (*text).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        let location = info.location().map(|location| format!(" at {location}")).unwrap_or_default();
        // `try_redact`: a panic while the redactor's lock is held must not deadlock here.
        let message = crate::secrets::redactor()
            .try_redact(&format!("{payload}{location}"))
            .unwrap_or_else(|| "(the message is withheld: the redactor was busy)".to_string());
        let text = format!(
            "error: internal error (a bug in the agent): {message}\n  hint: this is not your setup's fault: \
             report it with `agent --version` and this message\n"
        );
        let mut stderr = io::stderr().lock();
        let _ = stderr.write_all(text.as_bytes());
        let _ = stderr.flush();
        std::process::exit(i32::from(crate::error::exit::INTERNAL));
    }));
}

/// Seconds since the agent started, e.g. `[  1.25s]`: short, and what a CodeBuild log reader
/// wants beside CodeBuild's own wall-clock stamps.
struct Elapsed(std::time::Instant);

impl tracing_subscriber::fmt::time::FormatTime for Elapsed {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(w, "[{:>7.2}s]", self.0.elapsed().as_secs_f64())
    }
}

/// The name of the span a platform's build runs in; its one field, `platform`, is the platform.
pub const PLATFORM_SPAN: &str = "platform";

/// A text log line: `[  1.25s]  INFO message`, as tracing's own full format writes it (the target
/// after the level with `-v`), but a platform's build (a [`PLATFORM_SPAN`] span) names its platform
/// as `[linux/arm64] message`, so that the lines of concurrent builds can be told apart.
struct TextLine {
    started: std::time::Instant,
    with_target: bool,
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for TextLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let metadata = event.metadata();
        write!(writer, "[{:>7.2}s] {:>5} ", self.started.elapsed().as_secs_f64(), metadata.level())?;
        if self.with_target {
            write!(writer, "{}: ", metadata.target())?;
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root().filter(|span| span.name() == PLATFORM_SPAN) {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<tracing_subscriber::fmt::FormattedFields<N>>() {
                    let platform = fields.fields.strip_prefix("platform=").unwrap_or(&fields.fields);
                    write!(writer, "[{platform}] ")?;
                }
            }
        }
        let mut fields = TextFields { writer: writer.by_ref(), result: Ok(()) };
        event.record(&mut fields);
        fields.result?;
        writeln!(writer)
    }
}

/// An event's fields in a text line, as tracing's default writes them (the message, then
/// `name=value` for each other field), without the figures a JSON log gets ([`FIGURE_FIELDS`]).
struct TextFields<'w> {
    writer: tracing_subscriber::fmt::format::Writer<'w>,
    result: std::fmt::Result,
}

impl tracing::field::Visit for TextFields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if self.result.is_err() || FIGURE_FIELDS.iter().any(|prefix| field.name().starts_with(prefix)) {
            return;
        }
        self.result = match field.name() {
            "message" => write!(self.writer, "{value:?}"),
            name => write!(self.writer, " {name}={value:?}"),
        };
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => self.record_debug(field, &format_args!("{value}")),
            _ => self.record_debug(field, &value),
        }
    }
}

/// What a run reports as it goes. The steps and the plan say what happened; [`report`] says it.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// Step `number` of `total` begins.
    StepStarted { number: usize, total: usize, title: &'a str },
    /// The step is skipped, and why.
    StepSkipped { number: usize, total: usize, title: &'a str, reason: &'a str },
    /// The step succeeded, with what it did in a few words.
    StepDone { number: usize, total: usize, title: &'a str, outcome: &'a str, elapsed: std::time::Duration },
    /// The step failed (the error itself is reported once, at the end).
    StepFailed { number: usize, total: usize, title: &'a str, elapsed: std::time::Duration },
    /// Every step succeeded: where the time went, by phase (`connect 0.03, build 0.21 (…)`).
    RunDone { total: usize, elapsed: std::time::Duration, phases: &'a str, figures: RunFigures },
}

/// The closing line's figures, as fields of its event in JSON logs (`seconds.connect`, …,
/// `cache.steps`, `cache.cached`): seconds per phase (0 for a phase without a step).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct RunFigures {
    pub ssm: f64,
    pub connect: f64,
    pub logins: f64,
    pub context: f64,
    pub build: f64,
    pub compare: f64,
    pub push: f64,
    pub files: f64,
    pub prune: f64,
    /// The build's steps, and how many were CACHED.
    pub steps: usize,
    pub cached: usize,
}

/// The prefixes of the fields that carry a line's figures for JSON logs: the text line says them
/// already in its message, so the text format leaves them out.
const FIGURE_FIELDS: &[&str] = &["seconds.", "cache.", "context."];

/// The one reporter: each text field of the event is redacted before it is formatted into the log
/// line (a value is never split or escaped by formatting before the redactor sees it).
pub fn report(event: Event<'_>) {
    match event {
        Event::StepStarted { number, total, title } => {
            tracing::info!("step {number}/{total} {}", redact(title));
        }
        Event::StepSkipped { number, total, title, reason } => {
            tracing::info!("step {number}/{total} {}: skipped ({})", redact(title), redact(reason));
        }
        Event::StepDone { number, total, title, outcome, elapsed } => {
            let (title, outcome) = (redact(title), redact(outcome));
            tracing::info!("step {number}/{total} {title}: {outcome} ({:.2}s)", elapsed.as_secs_f64());
        }
        Event::StepFailed { number, total, title, elapsed } => {
            tracing::error!("step {number}/{total} {}: failed ({:.2}s)", redact(title), elapsed.as_secs_f64());
        }
        Event::RunDone { total, elapsed, phases, figures: f } => {
            let seconds = (elapsed.as_secs_f64() * 1000.0).round() / 1000.0;
            let dash = if phases.is_empty() { "" } else { " — " };
            tracing::info!(
                seconds.total = seconds,
                seconds.ssm = f.ssm,
                seconds.connect = f.connect,
                seconds.logins = f.logins,
                seconds.context = f.context,
                seconds.build = f.build,
                seconds.compare = f.compare,
                seconds.push = f.push,
                seconds.files = f.files,
                seconds.prune = f.prune,
                cache.steps = f.steps,
                cache.cached = f.cached,
                "done: {total} steps in {:.2}s{dash}{}",
                elapsed.as_secs_f64(),
                redact(phases)
            );
        }
    }
}

/// Text from the host or a registry (step names, warnings, output lines, daemon and registry
/// errors), made safe for one log line: every control character but tab — newlines, ESC, BEL, DEL
/// and the C1 controls — written as an escape (`\n`, `\r`, `\x1b`, `\u{9b}`), so that a hostile
/// Dockerfile or host can neither forge a log line (a newline and a fake `INFO done:`) nor hide or
/// restyle one (terminal sequences), in the text log and the JSON one alike.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c != '\t' && (c.is_control() || c == '\u{2028}' || c == '\u{2029}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if unsafe_char(c) && (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Prints text on stdout, redacted.
pub fn print(text: &str) {
    let mut stdout = io::stdout().lock();
    // A closed stdout (e.g. `agent run --dry | head`) is not an error worth reporting.
    let _ = stdout.write_all(redact(text).as_bytes());
    let _ = stdout.flush();
}

/// Prints text on stderr, redacted.
pub fn eprint(text: &str) {
    let mut stderr = io::stderr().lock();
    let _ = stderr.write_all(redact(text).as_bytes());
    let _ = stderr.flush();
}

/// A `MakeWriter` whose writers collect one log event and write it redacted to stderr on drop.
struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = EventBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        EventBuffer(Vec::with_capacity(256))
    }
}

/// One log event's bytes, redacted and written to stderr when dropped.
struct EventBuffer(Vec<u8>);

impl Write for EventBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventBuffer {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            eprint(&String::from_utf8_lossy(&self.0));
        }
    }
}

/// `1.2 MB`-style sizes for the log.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_from_a_host_are_escaped_but_tabs_kept() {
        assert_eq!(escape_controls("plain\ttext é"), "plain\ttext é");
        assert_eq!(escape_controls("a\n[ 0.1s]  INFO done"), "a\\n[ 0.1s]  INFO done");
        assert_eq!(escape_controls("\x1b[2J\x07x\r"), "\\x1b[2J\\x07x\\r");
        assert_eq!(escape_controls("\u{9b}31m\u{7f}"), "\\u{9b}31m\\x7f");
        assert_eq!(escape_controls("line\u{2028}sep"), "line\\u{2028}sep");
    }
    use tracing::Level;

    #[test]
    fn library_caps_hold_the_libraries_that_trace_bodies_below_trace() {
        let caps = library_caps();
        for target in [
            "aws_smithy_runtime::client::orchestrator::http",
            "aws_sdk_ecr::operation::get_authorization_token",
            "aws_sigv4::http_request::sign",
            "aws_runtime::env_config",
            "bollard::docker",
            "bollard::uri",
            "hyper_util::client::legacy::client",
            "h2::codec::framed_read",
            "tonic::transport::server",
            "russh::client",
        ] {
            assert!(!caps.would_enable(target, &Level::TRACE), "{target} at trace");
            assert!(caps.would_enable(target, &Level::DEBUG), "{target} at debug");
        }
        assert!(caps.would_enable("agent::plan", &Level::TRACE));
    }
}
