//! Output: logging with tracing to stderr (human-readable text for the CodeBuild log, or JSON), and
//! the plan on stdout. Every byte written passes through the secret redactor.

use std::io::{self, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::cli::LogFormat;
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr)
        .with_timer(Elapsed(std::time::Instant::now()))
        .with_target(verbose > 0);
    let result = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (in tests) keeps the first subscriber: nothing to do.
    let _ = result;
}

/// Seconds since the agent started, e.g. `[  1.25s]`: short, and what a CodeBuild log reader
/// wants beside CodeBuild's own wall-clock stamps.
struct Elapsed(std::time::Instant);

impl tracing_subscriber::fmt::time::FormatTime for Elapsed {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(w, "[{:>7.2}s]", self.0.elapsed().as_secs_f64())
    }
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
