//! `update.source`: cairnd follows an OCI reference (`oci://registry/repo:tag`) and installs
//! the bundle it names when that is a newer release, then reboots into its trial.
//!
//! The one idea: a bundle is tried at most once. Each manifest digest cairnd installs from
//! the source is recorded on STATE (`source-tried`) before the install starts, so a release
//! that fails its health window (and is rolled back) or that the device refuses is not taken
//! again until the tag points at another manifest. The version compared is the artifact's
//! `dev.cairn.bundle.version` annotation; the install checks the bundle's own signed version
//! as always. The source is checked at start and every `update.check_interval_s`; a registry
//! that cannot be reached is tried again after a pause that doubles from a minute up to the
//! interval, never in a loop.

use std::sync::Arc;
use std::time::Duration;

use cairn_api::registry::{Reference, ANNOTATION_VERSION};
use cairn_bundle::Version;

use crate::log::say;
use crate::settings::Settings;
use crate::update::Updates;

/// The STATE file listing the manifest digests installed from the source, newest last.
pub const TRIED: &str = "source-tried";
/// The first pause after a failed check.
const FIRST_RETRY: Duration = Duration::from_secs(60);

/// What one check decides.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Install this version.
    Install(Version),
    /// Nothing to do, and why (for the log).
    Stay(String),
}

/// Whether the artifact at `digest`, announcing `version`, is to be installed on a device
/// running `running` that has tried `tried` already.
pub fn decide(
    running: &Version,
    version: Option<&str>,
    digest: &str,
    tried: &[String],
) -> Decision {
    let Some(text) = version else {
        return Decision::Stay(format!(
            "{digest} has no {ANNOTATION_VERSION} annotation (push it with cairnctl bundle push)"
        ));
    };
    let Ok(version) = Version::parse(text) else {
        return Decision::Stay(format!(
            "{digest} announces the version {text:?}, not semver"
        ));
    };
    if version <= *running {
        return Decision::Stay(format!("{version} is not newer than the running {running}"));
    }
    if tried.iter().any(|t| t == digest) {
        return Decision::Stay(format!(
            "{version} ({digest}) was installed from the source before and did not stay"
        ));
    }
    Decision::Install(version)
}

/// Starts the thread that follows the machine config's `update.source` (re-read at every
/// check, so a config applied over the API takes effect at the next one).
pub fn follow(updates: Arc<Updates>, settings: Arc<Settings>, running: Version) {
    let spawned = std::thread::Builder::new()
        .name("update source".into())
        .spawn(move || {
            let mut retry = FIRST_RETRY;
            let mut last_error = None;
            loop {
                let config = settings.current().ok();
                let interval = config
                    .as_ref()
                    .map_or(crate::config::DEFAULT_CHECK_INTERVAL, |c| c.check_interval);
                let pause = match config.as_ref().and_then(|c| c.update_source.clone()) {
                    None => interval,
                    Some(source) => match check(&updates, &settings, &source, &running) {
                        Ok(()) => {
                            retry = FIRST_RETRY;
                            last_error = None;
                            interval
                        }
                        Err(Failed { reason: e, told }) => {
                            // An event when the reason changes, not at every retry of the same
                            // (a refused install has told its own).
                            if news(&mut last_error, &e) && !told {
                                updates.refused(&format!("update source {source}"), &e);
                            }
                            say!(
                                "update source {source}: {e}; checking again in {} s",
                                retry.min(interval).as_secs()
                            );
                            let pause = retry.min(interval);
                            retry = (retry * 2).min(interval);
                            pause
                        }
                    },
                };
                std::thread::sleep(pause);
            }
        });
    if let Err(e) = spawned {
        say!("update source: starting its thread: {e}");
    }
}

/// Whether `error` differs from the last failed check's (kept in `last`): a source that stays
/// unreachable is one event, not one per retry.
fn news(last: &mut Option<String>, error: &str) -> bool {
    if last.as_deref() == Some(error) {
        return false;
    }
    *last = Some(error.to_string());
    true
}

/// Why a check failed, and whether the events already say so (an install that was refused).
struct Failed {
    reason: String,
    told: bool,
}

impl From<String> for Failed {
    fn from(reason: String) -> Failed {
        Failed {
            reason,
            told: false,
        }
    }
}

/// One check: resolve the tag, decide, and install (then reboot) when it is newer.
fn check(
    updates: &Updates,
    settings: &Settings,
    source: &str,
    running: &Version,
) -> Result<(), Failed> {
    let config = settings.current()?;
    let reference = Reference::parse(source).map_err(|e| e.to_string())?;
    let client = crate::registry::client(&config, &reference)?;
    let (manifest, layer) = client.bundle(&reference).map_err(|e| e.to_string())?;
    let tried = updates.source_tried();
    let version = manifest.doc.annotations.get(ANNOTATION_VERSION);
    match decide(
        running,
        version.map(String::as_str),
        &manifest.digest,
        &tried,
    ) {
        Decision::Stay(why) => {
            say!("update source {source}: {why}");
            Ok(())
        }
        Decision::Install(version) => {
            say!(
                "update source {source}: installing {version} ({})",
                manifest.digest
            );
            updates.record_source_tried(&manifest.digest)?;
            let pinned = reference.at(&manifest.digest);
            let blob = client.blob(&pinned, &layer).map_err(|e| e.to_string())?;
            let what = format!("oci://{pinned}");
            let mut reader = std::io::BufReader::with_capacity(1 << 20, blob);
            let installed = updates
                .install(&what, &mut reader, Some(layer.size), &mut |_| {})
                .map_err(|e| Failed {
                    reason: e.message,
                    told: true,
                })?;
            say!(
                "installed version {} into slot {} from the update source; rebooting into the trial",
                installed.version,
                installed.slot
            );
            crate::system::reboot_soon();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_news_once_until_it_changes() {
        let mut last = None;
        assert!(news(&mut last, "unreachable"));
        assert!(!news(&mut last, "unreachable"));
        assert!(news(&mut last, "manifest has artifactType x"));
        assert!(news(&mut last, "unreachable"));
    }

    #[test]
    fn only_a_newer_version_not_tried_before_is_installed() {
        let running = Version::new(1, 4, 0);
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            decide(&running, Some("1.5.0"), &digest, &[]),
            Decision::Install(Version::new(1, 5, 0))
        );
        let stay = |version, tried: &[String]| match decide(&running, version, &digest, tried) {
            Decision::Stay(why) => why,
            other => panic!("{other:?}"),
        };
        assert!(stay(Some("1.4.0"), &[]).contains("not newer than the running 1.4.0"));
        assert!(stay(Some("1.3.9"), &[]).contains("not newer"));
        assert!(stay(Some("1.5.0"), std::slice::from_ref(&digest)).contains("did not stay"));
        assert!(stay(None, &[]).contains("no dev.cairn.bundle.version annotation"));
        assert!(stay(Some("latest"), &[]).contains("not semver"));
    }
}
