//! Where a run's time went, by phase: each step's time, measured once by [`super::execute`], added
//! to its step's phase; the context's part of the build step (the walk, and FileSync's transfer)
//! moved from `build` to `context`. The closing line, the metadata file and JSON logs show it.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::Step;

/// A part of a run, as the closing line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Fetching the `SSM:` references.
    Ssm,
    /// Connecting to the hosts and checking their daemons.
    Connect,
    /// The registry logins.
    Logins,
    /// The context: the agent's walk of it, and with BuildKit its transfer (FileSync).
    Context,
    /// The build and the tags (a multi-platform run's builds, with their own comparisons and pushes).
    Build,
    /// The comparison with the registry's image before the pushes.
    Compare,
    /// The pushes (and a multi-platform run's index).
    Push,
    /// The files the run writes: the key, known_hosts, config.json, imagedefinitions.json, metadata.
    Files,
    /// The build cache budget's prune.
    Prune,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Ssm,
        Phase::Connect,
        Phase::Logins,
        Phase::Context,
        Phase::Build,
        Phase::Compare,
        Phase::Push,
        Phase::Files,
        Phase::Prune,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Ssm => "ssm",
            Phase::Connect => "connect",
            Phase::Logins => "logins",
            Phase::Context => "context",
            Phase::Build => "build",
            Phase::Compare => "compare",
            Phase::Push => "push",
            Phase::Files => "files",
            Phase::Prune => "prune",
        }
    }
}

impl Step {
    /// The phase the step's time counts in.
    pub fn phase(&self) -> Phase {
        match self {
            Step::ResolveSsm { .. } => Phase::Ssm,
            Step::Connect { .. } | Step::CheckDaemon { .. } => Phase::Connect,
            Step::Login { .. } | Step::EcrLogin { .. } => Phase::Logins,
            Step::Build { .. } | Step::Tag { .. } | Step::BuildPlatforms { .. } => Phase::Build,
            Step::KeepUnchanged { .. } => Phase::Compare,
            Step::Push { .. } | Step::PushIndex { .. } => Phase::Push,
            Step::InstallSshKey { .. }
            | Step::InstallKnownHosts { .. }
            | Step::WriteDockerConfig { .. }
            | Step::WriteImageDefinitions { .. }
            | Step::WriteMetadata { .. } => Phase::Files,
            Step::PruneCache { .. } => Phase::Prune,
        }
    }
}

/// What the build steps tell the closing line: the context's part of their time, and how many
/// steps were CACHED.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BuildFigures {
    pub context: Duration,
    pub steps: usize,
    pub cached: usize,
}

/// The time of each phase that ran, so far.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Timings {
    /// Per phase (in [`Phase::ALL`]'s order): its time, or `None` when no step of it ran.
    spent: [Option<Duration>; 9],
    /// How many of the build's steps were CACHED, once it ran.
    build: Option<BuildFigures>,
}

impl Timings {
    /// Counts a step's time in its phase.
    pub fn add(&mut self, phase: Phase, elapsed: Duration) {
        let spent = &mut self.spent[phase as usize];
        *spent = Some(spent.unwrap_or_default() + elapsed);
    }

    /// The build's figures: its context part moved from `build` to `context`.
    pub fn build_done(&mut self, figures: BuildFigures) {
        let build = &mut self.spent[Phase::Build as usize];
        let moved = figures.context.min(build.unwrap_or_default());
        if !moved.is_zero() {
            *build = build.map(|spent| spent - moved);
            self.add(Phase::Context, moved);
        }
        self.build = Some(figures);
    }

    fn phases(&self) -> impl Iterator<Item = (Phase, Duration)> + '_ {
        Phase::ALL.iter().zip(&self.spent).filter_map(|(phase, spent)| spent.map(|spent| (*phase, spent)))
    }

    /// `connect 0.03, logins 0.11, context 0.02, build 0.21 (4 of 5 CACHED), push 0.08`.
    pub fn line(&self) -> String {
        let parts: Vec<String> = self
            .phases()
            .map(|(phase, spent)| {
                let cached = match (phase, self.build) {
                    (Phase::Build, Some(build)) if build.steps > 0 => {
                        format!(" ({} of {} CACHED)", build.cached, build.steps)
                    }
                    _ => String::new(),
                };
                format!("{} {:.2}{cached}", phase.name(), spent.as_secs_f64())
            })
            .collect();
        parts.join(", ")
    }

    /// Seconds of a phase (0 when none of its steps ran), for structured logs.
    pub fn seconds(&self, phase: Phase) -> f64 {
        self.spent[phase as usize].map_or(0.0, |spent| rounded(spent.as_secs_f64()))
    }

    /// The figures of the closing line, for structured (JSON) logs.
    pub fn figures(&self) -> crate::output::RunFigures {
        let (cached, steps) = self.build.map_or((0, 0), |build| (build.cached, build.steps));
        crate::output::RunFigures {
            ssm: self.seconds(Phase::Ssm),
            connect: self.seconds(Phase::Connect),
            logins: self.seconds(Phase::Logins),
            context: self.seconds(Phase::Context),
            build: self.seconds(Phase::Build),
            compare: self.seconds(Phase::Compare),
            push: self.seconds(Phase::Push),
            files: self.seconds(Phase::Files),
            prune: self.seconds(Phase::Prune),
            steps,
            cached,
        }
    }

    /// The metadata file's `agent.timings`: seconds per phase that ran (up to the step that writes
    /// the file), and the build's CACHED steps.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        for (phase, spent) in self.phases() {
            object.insert(phase.name().to_string(), json!(rounded(spent.as_secs_f64())));
        }
        let mut value = json!({ "seconds": Value::Object(object) });
        if let Some(build) = self.build {
            value["steps"] = json!(build.steps);
            value["cached"] = json!(build.cached);
        }
        value
    }
}

fn rounded(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_and_the_context_leaves_the_build() {
        let mut timings = Timings::default();
        timings.add(Phase::Connect, Duration::from_millis(30));
        timings.add(Phase::Build, Duration::from_millis(200));
        timings.add(Phase::Build, Duration::from_millis(30));
        timings.build_done(BuildFigures { context: Duration::from_millis(20), steps: 5, cached: 4 });
        timings.add(Phase::Push, Duration::from_millis(80));
        assert_eq!(timings.line(), "connect 0.03, context 0.02, build 0.21 (4 of 5 CACHED), push 0.08");
        assert_eq!(
            timings.to_json(),
            json!({"seconds": {"connect": 0.03, "context": 0.02, "build": 0.21, "push": 0.08}, "steps": 5, "cached": 4})
        );
        assert_eq!(timings.seconds(Phase::Logins), 0.0);
    }
}
