//! Why the cache missed: after a build, how many of its steps were CACHED and the first step that
//! was not, with the one reason the agent can prove — the files its own FileSync sender was asked
//! for because they changed, when they are among a `COPY`/`ADD` step's sources; a build argument
//! whose value differs from the one the registry's image was built with (read from that image's
//! history); a base image whose layers are not the ones that image was built on; or else "not
//! known". Never a guess presented as a fact (moby/moby#34715).

use serde_json::{Value, json};

use super::StepRecord;

/// Paths named in a line before "and N more".
pub const NAMED_IN_A_LINE: usize = 3;
/// Paths the metadata file lists for a step (a tree of thousands changed is counted, not listed).
const LISTED_IN_METADATA: usize = 100;

/// What the agent knows about one build, to explain its cache.
pub struct Evidence<'a> {
    /// Each Dockerfile step, as the build reported it.
    pub steps: &'a [StepRecord],
    /// The context's files the host asked for (their size, mode or mtime differed from its copy),
    /// relative to the context; `None` when the agent cannot know (the classic builder is sent the
    /// whole context).
    pub changed: Option<&'a [String]>,
    /// Whether the build's sync asked for every file it listed: the host had no copy of them, or
    /// every one changed (a fresh clone's new mtimes).
    pub every_file: bool,
    /// The build arguments given with a value (`KEY=VALUE`, or `KEY` from the environment).
    pub build_args: &'a [(String, String)],
    /// The image the build is compared with (the registry's, under the first tag): its config.
    pub compared: Option<&'a Value>,
    /// The base image of the first rebuilt step's stage, as its registry has it now.
    pub base: Option<&'a BaseCheck>,
}

/// A stage's base image (its `FROM`), checked against the compared image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseCheck {
    /// As the `FROM` step names it (`host/repo:tag`, with `@sha256:…` on newer engines).
    pub name: String,
    /// The manifest digest it resolves to now (the platform's).
    pub digest: String,
    /// Whether its layers are the first layers of the compared image (the image was built on it).
    pub under_the_compared_image: bool,
}

/// The cache line of one build.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheReport {
    /// Steps counted (`FROM` steps are not: neither builder ever calls them CACHED).
    pub steps: usize,
    pub cached: usize,
    /// The first step that was not CACHED, and why; `None` when every step was.
    pub first_rebuilt: Option<Rebuilt>,
}

/// The first step that was not CACHED.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebuilt {
    /// As BuildKit names it: `[5/6] COPY src/ /app/src/`.
    pub step: String,
    /// Its counter without the total, as "after step N" names it: `5`, `build 2`.
    pub number: String,
    pub reason: Reason,
    /// The steps after it that were not CACHED either.
    pub after: usize,
}

/// What the agent can prove about why a step was rebuilt.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// A `COPY`/`ADD` step whose sources hold these changed files.
    FilesChanged(Vec<String>),
    /// A `COPY`/`ADD` step of the context when every file the build reads was sent: the host had
    /// no copy of them, or every one changed.
    EveryFileSent,
    /// These build arguments differ from the values the compared image was built with.
    BuildArgs(Vec<String>),
    /// The stage's base image (as named, and the digest it resolves to now) is not the one the
    /// compared image was built on: its layers are not that image's first layers.
    BaseImage { name: String, digest: String },
    /// Nothing the agent can prove; the note says why, when it can.
    NotKnown(Option<&'static str>),
}

impl Reason {
    /// The reason's kind, for the metadata file.
    fn kind(&self) -> &'static str {
        match self {
            Reason::FilesChanged(_) => "files-changed",
            Reason::EveryFileSent => "every-file-sent",
            Reason::BuildArgs(_) => "build-args",
            Reason::BaseImage { .. } => "base-image",
            Reason::NotKnown(_) => "not-known",
        }
    }

    fn text(&self) -> String {
        match self {
            Reason::FilesChanged(files) => format!("{} changed", some_of(files)),
            Reason::EveryFileSent => {
                "every file it reads was sent (the host had no copy, or every mtime changed: see --stable-mtimes)"
                    .to_string()
            }
            Reason::BuildArgs(names) => format!(
                "the build argument{} {} differ{} from the registry's image",
                if names.len() == 1 { "" } else { "s" },
                names.join(", "),
                if names.len() == 1 { "s" } else { "" }
            ),
            Reason::BaseImage { name, digest } => {
                let short = digest.get(..19).unwrap_or(digest);
                let name = name.split_once('@').map_or(name.as_str(), |(name, _)| name);
                format!("the base image {name} ({short}) is not the one the registry's image was built on")
            }
            Reason::NotKnown(None) => "not known".to_string(),
            Reason::NotKnown(Some(note)) => format!("not known ({note})"),
        }
    }
}

/// The note of a classic build's unknown reason.
const CLASSIC_NOTE: &str = "the classic builder is sent the whole context and does not say which files changed";

/// The build's cache, explained.
pub fn explain(evidence: &Evidence<'_>) -> CacheReport {
    let steps: Vec<&StepRecord> = evidence.steps.iter().filter(|step| !is_from(step)).collect();
    let cached = steps.iter().filter(|step| step.cached).count();
    let first = steps.iter().position(|step| !step.cached);
    let first_rebuilt = first.map(|at| {
        let (number, instruction) = instruction_of(&steps[at].title);
        Rebuilt {
            step: format!("[{number}] {instruction}"),
            number: number.rsplit_once('/').map_or(number, |(done, _)| done).to_string(),
            reason: reason(evidence, instruction),
            after: steps[at + 1..].iter().filter(|step| !step.cached).count(),
        }
    });
    CacheReport { steps: steps.len(), cached, first_rebuilt }
}

/// Whether the first rebuilt step has no reason yet: the compared image (which the caller may have
/// to wait for) and the base image may still give one.
pub fn unexplained(report: &CacheReport) -> bool {
    report.first_rebuilt.as_ref().is_some_and(|rebuilt| matches!(rebuilt.reason, Reason::NotKnown(_)))
}

fn is_from(step: &StepRecord) -> bool {
    let instruction = instruction_of(&step.title).1;
    instruction.split_whitespace().next().is_some_and(|word| word.eq_ignore_ascii_case("FROM"))
}

/// The base image (`FROM`) of the first rebuilt step, when that step is the first of its stage:
/// the one step a moved base rebuilds first. `None` for `FROM scratch`.
pub fn base_of_first_rebuilt(steps: &[StepRecord], report: &CacheReport) -> Option<String> {
    let rebuilt = report.first_rebuilt.as_ref()?;
    let at = steps.iter().position(|step| {
        let (counter, instruction) = instruction_of(&step.title);
        format!("[{counter}] {instruction}") == rebuilt.step
    })?;
    let from = steps[..at].last().filter(|step| is_from(step))?;
    let (from_counter, instruction) = instruction_of(&from.title);
    let (counter, _) = instruction_of(&steps[at].title);
    let position = |counter: &str| {
        let (stage, number) = counter.rsplit_once(' ').unwrap_or(("", counter));
        let number: u32 = number.split_once('/')?.0.parse().ok()?;
        Some((stage.to_string(), number))
    };
    let ((from_stage, from_number), (stage, number)) = (position(from_counter)?, position(counter)?);
    if from_stage != stage || from_number + 1 != number {
        return None;
    }
    let name = instruction.split_whitespace().skip(1).find(|word| !word.starts_with("--"))?;
    (name != "scratch").then(|| name.to_string())
}

fn reason(evidence: &Evidence<'_>, instruction: &str) -> Reason {
    let mut note = None;
    if let Some(sources) = context_sources(instruction) {
        match evidence.changed {
            Some(changed) => {
                let files: Vec<String> =
                    changed.iter().filter(|path| sources.iter().any(|source| reads(source, path))).cloned().collect();
                if !files.is_empty() {
                    return if evidence.every_file { Reason::EveryFileSent } else { Reason::FilesChanged(files) };
                }
            }
            None => note = Some(CLASSIC_NOTE),
        }
    }
    let args = evidence.compared.map(|config| args_that_differ(evidence.build_args, config)).unwrap_or_default();
    if !args.is_empty() {
        return Reason::BuildArgs(args);
    }
    if let Some(base) = evidence.base.filter(|base| !base.under_the_compared_image) {
        return Reason::BaseImage { name: base.name.clone(), digest: base.digest.clone() };
    }
    Reason::NotKnown(note)
}

/// A step title (`step 5/6 COPY src/ /app/src/`, `step build 2/5 RUN make`) as its counter
/// (`5/6`, `build 2/5`) and its instruction.
fn instruction_of(title: &str) -> (&str, &str) {
    let rest = title.strip_prefix("step ").unwrap_or(title);
    let mut end = 0;
    for token in rest.split(' ') {
        end += token.len();
        let counter = token.split_once('/').is_some_and(|(done, total)| {
            !done.is_empty() && !total.is_empty() && done.chars().chain(total.chars()).all(|c| c.is_ascii_digit())
        });
        if counter {
            return (&rest[..end], rest[end..].trim_start());
        }
        end += 1;
        if end > rest.len() {
            break;
        }
    }
    ("", rest)
}

/// The context paths a `COPY`/`ADD` instruction reads (`.` for all of it); `None` for any other
/// instruction and for a `COPY --from=` (it reads another stage or image, not the context).
fn context_sources(instruction: &str) -> Option<Vec<String>> {
    let (command, arguments) = instruction.split_once(' ')?;
    if !command.eq_ignore_ascii_case("COPY") && !command.eq_ignore_ascii_case("ADD") {
        return None;
    }
    let arguments = arguments.trim();
    let words: Vec<String> = if arguments.starts_with('[') {
        // The exec form: a JSON array whose flags come before it.
        serde_json::from_str(arguments).ok()?
    } else {
        let mut words = Vec::new();
        let mut rest = arguments;
        // Flags come first, then the sources and the destination; a JSON array may follow flags.
        while let Some(word) = rest.split_whitespace().next().filter(|word| word.starts_with("--")) {
            if word.starts_with("--from=") {
                return None;
            }
            rest = rest.trim_start()[word.len()..].trim_start();
        }
        if rest.starts_with('[') {
            serde_json::from_str(rest).ok()?
        } else {
            words.extend(rest.split_whitespace().map(str::to_string));
            words
        }
    };
    let (_, sources) = words.split_last()?;
    let sources: Vec<String> = sources
        .iter()
        .filter(|source| !source.contains("://") && !source.starts_with("<<") && !source.starts_with("git@"))
        .map(|source| normalise(source))
        .collect();
    Some(sources)
}

/// A source as a context-relative path: without `./`, leading and trailing slashes (`.` for the
/// whole context).
fn normalise(source: &str) -> String {
    let segments: Vec<&str> = source.split('/').filter(|segment| !segment.is_empty() && *segment != ".").collect();
    if segments.is_empty() { ".".to_string() } else { segments.join("/") }
}

/// Whether a `COPY` source (a path or a pattern) reads `path`: it names the file, a directory the
/// file is under, or matches one of them.
fn reads(source: &str, path: &str) -> bool {
    if source == "." {
        return true;
    }
    let pattern: Vec<&str> = source.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    path.len() >= pattern.len()
        && pattern.iter().zip(&path).all(|(pattern, segment)| crate::session::dockerignore::glob(pattern, segment))
}

/// The build arguments of `given` whose value differs from the one a step of the compared image
/// was built with. A `RUN` step records the build arguments in its history entry as `|N KEY=VALUE
/// … command` (BuildKit prefixes `RUN `); an argument counts only when it is there, and when the
/// text after `KEY=` is not the value given (so a value holding a space is never misread as another).
fn args_that_differ(given: &[(String, String)], config: &Value) -> Vec<String> {
    let entries = config["history"].as_array().map(Vec::as_slice).unwrap_or_default();
    let recorded: Vec<&str> = entries
        .iter()
        .filter_map(|entry| entry["created_by"].as_str())
        .filter_map(|created_by| created_by.strip_prefix("RUN ").unwrap_or(created_by).strip_prefix('|'))
        .filter_map(|rest| rest.split_once(' ').map(|(_, args)| args))
        .collect();
    let mut names = Vec::new();
    for (key, value) in given {
        let needle = format!("{key}=");
        let differs = recorded.iter().any(|args| {
            let at = args.match_indices(&needle).find(|(at, _)| *at == 0 || args.as_bytes()[at - 1] == b' ');
            at.is_some_and(|(at, _)| {
                let recorded = &args[at + needle.len()..];
                !(recorded == value || recorded.starts_with(&format!("{value} ")))
            })
        });
        if differs && !names.contains(key) {
            names.push(key.clone());
        }
    }
    names
}

/// The first few paths, then "and N more".
fn some_of(paths: &[String]) -> String {
    let named = paths.iter().take(NAMED_IN_A_LINE).cloned().collect::<Vec<_>>().join(", ");
    match paths.len().saturating_sub(NAMED_IN_A_LINE) {
        0 => named,
        more => format!("{named} and {more} more"),
    }
}

/// ` (a, b, c and 2 more)`, or nothing for no paths: the files a context line names; those only
/// the frontend asked for (`.dockerignore`, which Docker 26 and 28 read again on every build) after
/// the build's own, said apart: ` (src/app.rb; .dockerignore for the frontend)`.
pub fn named_paths(synced: &[String], frontend_only: &[String]) -> String {
    let frontend = (!frontend_only.is_empty()).then(|| format!("{} for the frontend", some_of(frontend_only)));
    let build = (!synced.is_empty()).then(|| some_of(synced));
    match (build, frontend) {
        (None, None) => String::new(),
        (Some(build), None) => format!(" ({build})"),
        (None, Some(frontend)) => format!(" ({frontend})"),
        (Some(build), Some(frontend)) => format!(" ({build}; {frontend})"),
    }
}

impl CacheReport {
    /// `cache: 4 of 6 steps CACHED; [5/6] COPY src/ /app/src/ rebuilt: src/nonce.txt changed; 1
    /// more step rebuilt after step 5`.
    pub fn line(&self) -> String {
        let Some(rebuilt) = &self.first_rebuilt else {
            return match self.steps {
                0 => "cache: no step to cache".to_string(),
                steps => format!("cache: every step CACHED ({steps} of {steps})"),
            };
        };
        let mut line = format!(
            "cache: {} of {} step{} CACHED; {} rebuilt: {}",
            self.cached,
            self.steps,
            if self.steps == 1 { "" } else { "s" },
            rebuilt.step,
            rebuilt.reason.text()
        );
        if rebuilt.after > 0 {
            line.push_str(&format!(
                "; {} more step{} rebuilt after step {}",
                rebuilt.after,
                if rebuilt.after == 1 { "" } else { "s" },
                rebuilt.number
            ));
        }
        line
    }

    /// The first rebuilt step's reason, as the metadata file names it; `every-step-cached` when
    /// there is none.
    pub fn reason_kind(&self) -> &'static str {
        self.first_rebuilt.as_ref().map_or("every-step-cached", |rebuilt| rebuilt.reason.kind())
    }

    /// The metadata file's `agent.cache`, every text redacted (a file or argument name may hold a
    /// secret's value by mistake; a value is never there).
    pub fn to_json(&self) -> Value {
        let redact = crate::secrets::redact;
        let first = self.first_rebuilt.as_ref().map(|rebuilt| {
            let mut object = json!({
                "step": redact(&rebuilt.step),
                "reason": rebuilt.reason.kind(),
                "text": redact(&rebuilt.reason.text()),
                "rebuilt_after": rebuilt.after,
            });
            match &rebuilt.reason {
                Reason::FilesChanged(files) => {
                    let listed: Vec<String> = files.iter().take(LISTED_IN_METADATA).map(|f| redact(f)).collect();
                    object["files"] = json!(listed);
                    object["files_changed"] = json!(files.len());
                }
                Reason::BuildArgs(names) => {
                    object["build_args"] = json!(names.iter().map(|name| redact(name)).collect::<Vec<_>>())
                }
                Reason::BaseImage { name, digest } => {
                    object["base_image"] = json!({ "name": redact(name), "digest": digest });
                }
                Reason::EveryFileSent | Reason::NotKnown(_) => {}
            }
            object
        });
        json!({
            "steps": self.steps,
            "cached": self.cached,
            "first_rebuilt": first,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(title: &str, cached: bool) -> StepRecord {
        StepRecord { title: title.to_string(), cached, seconds: 0.1 }
    }

    fn app_steps(rebuilt_from: usize) -> Vec<StepRecord> {
        let titles = [
            "step 1/6 COPY busybox /bin/busybox",
            "step 2/6 RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox --install -s /bin\"]",
            "step 3/6 COPY deps.txt /app/deps.txt",
            "step 4/6 RUN sh -c 'sleep 4'",
            "step 5/6 COPY src/ /app/src/",
            "step 6/6 RUN sh -c 'cat /app/src/* | wc -c'",
        ];
        titles.iter().enumerate().map(|(at, title)| step(title, at + 1 < rebuilt_from)).collect()
    }

    fn evidence<'a>(steps: &'a [StepRecord], changed: Option<&'a [String]>) -> Evidence<'a> {
        Evidence { steps, changed, every_file: false, build_args: &[], compared: None, base: None }
    }

    #[test]
    fn a_changed_source_file_names_its_copy_step_and_the_steps_after_it_once() {
        let steps = app_steps(5);
        let changed = ["src/nonce.txt".to_string()];
        let report = explain(&evidence(&steps, Some(&changed)));
        assert_eq!(
            report.line(),
            "cache: 4 of 6 steps CACHED; [5/6] COPY src/ /app/src/ rebuilt: src/nonce.txt changed; 1 more step \
             rebuilt after step 5"
        );
        assert_eq!(report.to_json()["first_rebuilt"]["files"], json!(["src/nonce.txt"]));
        assert_eq!(report.to_json()["first_rebuilt"]["files_changed"], 1);
        assert_eq!(report.to_json()["first_rebuilt"]["reason"], "files-changed");
    }

    #[test]
    fn every_step_cached_says_so() {
        let steps = app_steps(7);
        let report = explain(&evidence(&steps, Some(&[])));
        assert_eq!(report.line(), "cache: every step CACHED (6 of 6)");
        assert_eq!(report.to_json()["first_rebuilt"], Value::Null);
    }

    #[test]
    fn a_rebuilt_step_whose_sources_hold_no_changed_file_is_not_known() {
        let steps = app_steps(3);
        let changed = ["src/main.sh".to_string()];
        let report = explain(&evidence(&steps, Some(&changed)));
        assert_eq!(report.first_rebuilt.unwrap().reason, Reason::NotKnown(None));
    }

    #[test]
    fn the_classic_builder_never_names_files_and_its_from_step_is_not_counted() {
        let mut steps = vec![step("step 1/7 FROM scratch", false)];
        steps.extend(app_steps(5).into_iter().map(|mut step| {
            step.title = step.title.replace("/6", "/7");
            step
        }));
        let evidence = evidence(&steps, None);
        let report = explain(&evidence);
        assert_eq!((report.steps, report.cached), (6, 4));
        assert_eq!(report.first_rebuilt.unwrap().reason, Reason::NotKnown(Some(CLASSIC_NOTE)));
    }

    #[test]
    fn copy_sources_are_read_from_the_instruction() {
        assert_eq!(context_sources("COPY src/ /app/src/"), Some(vec!["src".to_string()]));
        assert_eq!(context_sources("COPY --chown=1:1 ./a b/*.rb /app/"), Some(vec!["a".into(), "b/*.rb".into()]));
        assert_eq!(context_sources("COPY . /ctx/"), Some(vec![".".to_string()]));
        assert_eq!(context_sources("COPY [\"a b\", \"/c\"]"), Some(vec!["a b".to_string()]));
        assert_eq!(context_sources("COPY --link [\"x\", \"/c\"]"), Some(vec!["x".to_string()]));
        assert_eq!(context_sources("ADD https://example.com/a.tgz ./b /c"), Some(vec!["b".to_string()]));
        assert_eq!(context_sources("COPY --from=build /out /app"), None);
        assert_eq!(context_sources("RUN make"), None);
    }

    #[test]
    fn a_source_reads_the_file_itself_what_is_under_it_and_what_its_pattern_matches() {
        assert!(reads("src", "src/app.rb") && reads("src", "src") && reads(".", "anything/at/all"));
        assert!(reads("*.lock", "Gemfile.lock") && reads("sr?", "src/a/b"));
        assert!(!reads("src", "srcx/a") && !reads("src/a", "src") && !reads("*.lock", "dir/Gemfile.lock"));
    }

    #[test]
    fn titles_split_into_counter_and_instruction() {
        assert_eq!(instruction_of("step 5/6 COPY src/ /app/src/"), ("5/6", "COPY src/ /app/src/"));
        assert_eq!(instruction_of("step build 2/5 RUN make"), ("build 2/5", "RUN make"));
    }

    #[test]
    fn a_build_argument_is_named_only_when_the_compared_history_records_another_value() {
        let config = json!({"history": [
            {"created_by": "COPY busybox /bin/busybox # buildkit"},
            {"created_by": "RUN |2 VERSION=1 NOTE=a b /bin/sh -c echo $VERSION # buildkit"},
            {"created_by": "|1 CLASSIC=x /bin/sh -c echo"},
        ]});
        let given = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert_eq!(args_that_differ(&given(&[("VERSION", "2")]), &config), ["VERSION"]);
        assert!(args_that_differ(&given(&[("VERSION", "1"), ("NOTE", "a b")]), &config).is_empty());
        // "a" could be the start of "a b": not a proof.
        assert!(args_that_differ(&given(&[("NOTE", "a")]), &config).is_empty());
        assert_eq!(args_that_differ(&given(&[("CLASSIC", "y")]), &config), ["CLASSIC"]);
        assert!(args_that_differ(&given(&[("UNRECORDED", "1")]), &config).is_empty());

        let steps = app_steps(2);
        let args = given(&[("VERSION", "2")]);
        let mut evidence = evidence(&steps, Some(&[]));
        evidence.build_args = &args;
        let report = explain(&evidence);
        assert!(unexplained(&report));
        evidence.compared = Some(&config);
        let report = explain(&evidence);
        assert!(report.line().contains("rebuilt: the build argument VERSION differs from the registry's image"));
    }

    #[test]
    fn a_from_step_is_never_counted_and_names_the_base_of_its_stages_first_step() {
        let steps = vec![
            step("step 1/3 FROM 127.0.0.1:5000/base:1@sha256:0ffe31a253a5f3470cda", false),
            step("step 2/3 COPY a /a", false),
            step("step 3/3 RUN make", false),
        ];
        let report = explain(&evidence(&steps, Some(&[])));
        assert_eq!((report.steps, report.cached), (2, 0));
        assert_eq!(
            base_of_first_rebuilt(&steps, &report).as_deref(),
            Some("127.0.0.1:5000/base:1@sha256:0ffe31a253a5f3470cda")
        );
        let moved = BaseCheck {
            name: "127.0.0.1:5000/base:1@sha256:0ffe31a253a5f3470cda".to_string(),
            digest: "sha256:0ffe31a253a5f3470cda".to_string(),
            under_the_compared_image: false,
        };
        let mut evidence = evidence(&steps, Some(&[]));
        evidence.base = Some(&moved);
        assert_eq!(
            explain(&evidence).line(),
            "cache: 0 of 2 steps CACHED; [2/3] COPY a /a rebuilt: the base image 127.0.0.1:5000/base:1 \
             (sha256:0ffe31a253a5) is not the one the registry's image was built on; 1 more step rebuilt after step 2"
        );
        let same = BaseCheck { under_the_compared_image: true, ..moved.clone() };
        evidence.base = Some(&same);
        assert_eq!(explain(&evidence).first_rebuilt.unwrap().reason, Reason::NotKnown(None));
        // Not the stage's first step, or FROM scratch: no base to look at.
        let later =
            [step("step 1/3 FROM x:1", false), step("step 2/3 COPY a /a", true), step("step 3/3 RUN make", false)];
        assert_eq!(base_of_first_rebuilt(&later, &explain(&evidence_of(&later))), None);
        let scratch = [step("step 1/2 from scratch", false), step("step 2/2 COPY a /a", false)];
        assert_eq!(explain(&evidence_of(&scratch)).steps, 1, "a lowercase `from` is a FROM step too");
        assert_eq!(base_of_first_rebuilt(&scratch, &explain(&evidence_of(&scratch))), None);
    }

    fn evidence_of(steps: &[StepRecord]) -> Evidence<'_> {
        evidence(steps, Some(&[]))
    }

    #[test]
    fn long_lists_of_paths_are_cut() {
        let paths: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|p| p.to_string()).collect();
        assert_eq!(named_paths(&paths, &[]), " (a, b, c and 2 more)");
        assert_eq!(named_paths(&[], &[]), "");
        let ignore = [".dockerignore".to_string()];
        assert_eq!(named_paths(&[], &ignore), " (.dockerignore for the frontend)");
        assert_eq!(named_paths(&paths[..1], &ignore), " (a; .dockerignore for the frontend)");
    }
}
