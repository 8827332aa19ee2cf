//! One slot's build, the one path every build goes through, whether it is a single-platform run's
//! or one platform's of a multi-platform run (like buildx's resolved nodes): build on the slot's
//! host (the registry asked meanwhile what the tags hold), tag, compare with the registry, push.
//! A single-platform run carries the phases out as its own plan steps; a multi-platform run calls
//! [`SlotBuild::complete`] for every slot at once.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::image::cache_miss::{self, BaseCheck, CacheReport, Evidence};
use crate::image::metadata::Built;
use crate::image::spec::{BuildArg, BuildSpec};
use crate::image::{self, BuildJob, Engine, Pushed};
use crate::nodes::Host;
use crate::registry::reference::{LATEST, Platform, Repository, platform_tag};
use crate::registry::unchanged::{self, Kept, RegistryImages, Verdict};
use crate::registry::{Credential, base_image};
use crate::session::SessionMounts;

type Asked = std::result::Result<RegistryImages, String>;

/// One build, and what each of its phases left for the next.
pub struct SlotBuild {
    /// The platform of a multi-platform run's slot; `None` for a single-platform run.
    pub platform: Option<Platform>,
    spec: BuildSpec,
    image: Repository,
    /// The slot's own tags: the run's, or each as `TAG-<arch>` for a platform.
    pub tags: Vec<String>,
    push: bool,
    /// Whether the registry is asked, while the image builds, what the tags hold (see
    /// [`crate::registry::unchanged`]).
    compare: bool,
    /// The run's connect timeout: bounds the registry's answers; the cache pull may take three.
    timeout: Duration,
    /// The registry's answer, asked for when the build started.
    asked: Option<tokio::task::JoinHandle<Asked>>,
    /// The registry's answer once waited for (to explain the cache), kept for the comparison.
    answer: Option<Asked>,
    pub built: Option<Built>,
    kept: Option<Kept>,
    /// The manifest digest of the first tag pushed, or of the registry's image kept.
    pub digest: Option<String>,
}

/// What the comparison before the pushes found.
pub enum Comparison {
    /// Built by the classic builder: its images are always pushed.
    Classic,
    /// Push as before, for this reason.
    Changed(String),
    /// The registry holds this image: kept under every tag, nothing pushed.
    Unchanged(Kept),
}

/// What a tag's push did.
pub enum TagPush {
    /// The registry's image is kept under the tag: the line that says so.
    Kept(String),
    Pushed(Pushed),
}

impl SlotBuild {
    pub fn new(
        image: &Repository,
        tags: &[String],
        platform: Option<&Platform>,
        spec: &BuildSpec,
        push: bool,
        compare: bool,
        timeout: Duration,
    ) -> SlotBuild {
        SlotBuild {
            platform: platform.cloned(),
            spec: spec.clone(),
            image: image.clone(),
            tags: tags.iter().map(|tag| platform_tag(tag, platform)).collect(),
            push,
            compare: push && compare,
            timeout,
            asked: None,
            answer: None,
            built: None,
            kept: None,
            digest: None,
        }
    }

    /// The slot's image references, one per tag; the first is the one built.
    pub fn references(&self) -> Vec<String> {
        self.tags.iter().map(|tag| self.image.with_tag(tag)).collect()
    }

    /// Builds the image on `host`, pulling the slot's `latest` first as cache when the host lacks
    /// it (a new or wiped host); the registry is asked what the tags hold meanwhile.
    pub async fn build(&mut self, host: &Host, mounts: SessionMounts, credentials: &[Credential]) -> Result<&Built> {
        if self.compare {
            let credential =
                credentials.iter().find(|credential| credential.registry == self.image.registry()).cloned();
            let (image, tags, timeout) = (self.image.clone(), self.tags.clone(), self.timeout);
            let asked = async move { unchanged::registry_images(&image, &tags, credential.as_ref(), timeout).await };
            self.asked = Some(tokio::spawn(asked));
        }
        let mut spec = self.spec.clone();
        if let Some(platform) = &self.platform {
            spec.platform = Some(platform.clone());
            if Engine::on(spec.builder.value, host.facts.as_ref()) == Engine::Classic {
                add_platform_args(&mut spec, platform);
            }
        }
        let reference = self.image.with_tag(&self.tags[0]);
        let cache_image = self.push.then(|| self.image.with_tag(&platform_tag(LATEST, self.platform.as_ref())));
        let request = BuildJob {
            build: &spec,
            reference: &reference,
            cache_image: cache_image.as_deref(),
            registry: self.image.registry(),
            mounts,
            cache_wait: self.timeout * 3,
        };
        let mut built = image::build_on(&host.daemon, host.facts.as_ref(), request, credentials).await?;
        let report = self.explain_cache(&built, &spec, host, credentials).await;
        tracing::info!(
            cache.steps = report.steps,
            cache.cached = report.cached,
            cache.reason = report.reason_kind(),
            "{}",
            report.line()
        );
        built.cache = Some(report);
        Ok(self.built.insert(built))
    }

    /// Why the build's cache missed (see [`cache_miss`]). When the files do not explain the first
    /// rebuilt step, the registry's image (asked for while the image built) is waited for, to look
    /// for a build argument, then for the base image of the step's stage.
    async fn explain_cache(
        &mut self,
        built: &Built,
        spec: &BuildSpec,
        host: &Host,
        credentials: &[Credential],
    ) -> CacheReport {
        let sent = built.summary.context.as_ref();
        let build_args: Vec<(String, String)> = spec
            .build_args
            .iter()
            .filter_map(|arg| arg.value.as_ref().map(|value| (arg.key.clone(), value.clone())))
            .collect();
        let mut evidence = Evidence {
            steps: &built.summary.steps,
            changed: sent.map(|sent| sent.synced.as_slice()),
            every_file: sent.is_some_and(|sent| sent.every_file),
            build_args: &build_args,
            compared: None,
            base: None,
        };
        let report = cache_miss::explain(&evidence);
        if !cache_miss::unexplained(&report) {
            return report;
        }
        let Some(compared) = self.compared_config().await else { return report };
        evidence.compared = Some(&compared);
        let report = cache_miss::explain(&evidence);
        if !cache_miss::unexplained(&report) {
            return report;
        }
        let Some(name) = cache_miss::base_of_first_rebuilt(&built.summary.steps, &report) else { return report };
        // The build's platform: the slot's, or `--platform`, else the daemon's own.
        let platform = match (&spec.platform, host.facts.as_ref()) {
            (Some(platform), _) => (platform.os.clone(), platform.architecture.clone()),
            (None, Some(facts)) => (facts.os.clone(), facts.arch.clone()),
            (None, None) => return report,
        };
        let read = base_image::layers(&name, (&platform.0, &platform.1), credentials, self.timeout);
        let layers = match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(layers)) => layers,
            Err(_) => {
                tracing::debug!("the base image {name} was not read from its registry within {:?}", self.timeout);
                return report;
            }
            Ok(Err(error)) => {
                tracing::debug!("the base image {name} was not read from its registry: {error}");
                return report;
            }
        };
        let compared_layers = base_image::diff_ids(&compared);
        let check = BaseCheck {
            under_the_compared_image: compared_layers.starts_with(&layers.diff_ids),
            name,
            digest: layers.digest,
        };
        evidence.base = Some(&check);
        cache_miss::explain(&evidence)
    }

    /// The config of the registry's image under the first tag that has one, once the registry has
    /// answered (the answer is kept for the comparison).
    async fn compared_config(&mut self) -> Option<serde_json::Value> {
        if self.answer.is_none() {
            let asked = self.asked.take()?;
            let answer = asked.await.unwrap_or_else(|error| Err(format!("the registry was not asked: {error}")));
            self.answer = Some(answer);
        }
        self.answer.as_ref()?.as_ref().ok()?.compared_config().cloned()
    }

    /// Compares the built image with what the registry holds under the tags: the same image is
    /// kept (the tags without it get its manifest) and none of the tags is pushed.
    pub async fn compare(&mut self, host: &Host, credentials: &[Credential]) -> Result<Comparison> {
        let built = self.built.as_mut().ok_or_else(|| Error::Internal("the comparison ran before the build".into()))?;
        if built.engine != Engine::BuildKit {
            return Ok(Comparison::Classic);
        }
        let asked = match (self.answer.take(), self.asked.take()) {
            (Some(answer), _) => answer,
            (None, Some(asked)) => {
                asked.await.unwrap_or_else(|error| Err(format!("the registry was not asked: {error}")))
            }
            (None, None) => {
                let credential = credentials.iter().find(|credential| credential.registry == self.image.registry());
                unchanged::registry_images(&self.image, &self.tags, credential, self.timeout).await
            }
        };
        let reference = self.image.with_tag(&self.tags[0]);
        match unchanged::keep_if_unchanged(&host.daemon, &reference, asked).await {
            Verdict::Changed(reason) => Ok(Comparison::Changed(reason)),
            Verdict::Unchanged(kept) => {
                built.summary.image_id = Some(kept.config_digest.clone());
                self.digest = Some(kept.digest.clone());
                self.kept = Some(kept.clone());
                Ok(Comparison::Unchanged(kept))
            }
        }
    }

    /// Pushes `reference`, one of the slot's; a tag under which the registry's image is kept is
    /// not pushed.
    pub async fn push(&mut self, host: &Host, reference: &str, credentials: &[Credential]) -> Result<TagPush> {
        let tag = self.tags.iter().find(|tag| self.image.with_tag(tag) == reference);
        if let (Some(kept), Some(tag)) = (&self.kept, tag)
            && kept.holds(tag)
        {
            return Ok(TagPush::Kept(kept.line(tag)));
        }
        let pushed = image::push(&host.daemon, reference, self.image.registry(), credentials).await?;
        if self.digest.is_none() {
            self.digest = pushed.digest.clone();
        }
        Ok(TagPush::Pushed(pushed))
    }

    /// The whole slot at once (each platform of a multi-platform run): build, tag, compare, push,
    /// each logged.
    pub async fn complete(&mut self, host: &Host, mounts: SessionMounts, credentials: &[Credential]) -> Result<()> {
        let (steps, cached) = self.build(host, mounts, credentials).await?.step_counts();
        tracing::info!("built on {}: {steps} steps, {cached} CACHED", host.target);
        let references = self.references();
        for reference in &references[1..] {
            image::tag(&host.daemon, &references[0], reference).await?;
        }
        if self.compare {
            match self.compare(host, credentials).await? {
                Comparison::Classic => {}
                Comparison::Unchanged(kept) => {
                    for (reference, tag) in references.iter().zip(&self.tags) {
                        tracing::info!("{reference}: {}", kept.line(tag));
                    }
                }
                Comparison::Changed(reason) => tracing::info!("changed ({reason}): its tags are pushed"),
            }
        }
        if self.push && self.kept.is_none() {
            for reference in &references {
                if let TagPush::Pushed(pushed) = self.push(host, reference, credentials).await? {
                    tracing::info!("pushed {reference}: {pushed}");
                }
            }
        }
        Ok(())
    }
}

/// BuildKit sets `TARGETPLATFORM`, `TARGETOS`, `TARGETARCH` and `TARGETVARIANT` for a build's
/// platform; the classic builder does not, so a multi-platform Dockerfile (`COPY app-${TARGETARCH}`)
/// gets them as build arguments there, unless the user gave them.
fn add_platform_args(build: &mut BuildSpec, platform: &Platform) {
    let text = platform.to_string();
    let args = [
        ("TARGETPLATFORM", text.as_str()),
        ("TARGETOS", platform.os.as_str()),
        ("TARGETARCH", platform.architecture.as_str()),
        ("TARGETVARIANT", platform.variant.as_deref().unwrap_or_default()),
    ];
    for (key, value) in args {
        if !build.build_args.iter().any(|arg| arg.key == key) {
            build.build_args.push(BuildArg { key: key.to_string(), value: Some(value.to_string()), from_env: false });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{config, fixture};

    #[test]
    fn the_classic_builder_gets_the_platform_args_buildkit_sets_but_not_over_the_users() {
        let dir = fixture();
        let argv = ["--image", "app", "--build-arg", "TARGETOS=mine", "--platform", "linux/amd64,linux/arm/v7"];
        let mut build = config(&argv, &[], dir.path()).unwrap().build.spec;
        add_platform_args(&mut build, &Platform::parse("linux/arm/v7").unwrap());
        let args: Vec<(&str, Option<&str>)> =
            build.build_args.iter().map(|arg| (arg.key.as_str(), arg.value.as_deref())).collect();
        assert_eq!(
            args,
            [
                ("TARGETOS", Some("mine")),
                ("TARGETPLATFORM", Some("linux/arm/v7")),
                ("TARGETARCH", Some("arm")),
                ("TARGETVARIANT", Some("v7")),
            ]
        );
    }
}
