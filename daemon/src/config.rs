//! The machine config, `/etc/cairn/machine.json` in the root (baked in at image build with
//! `cairnctl image build --machine-config`). Every part is optional:
//!
//! ```json
//! {
//!   "health": {
//!     "window_s": 300,
//!     "probes": [
//!       {"tcp": "127.0.0.1:6443", "timeout_s": 2},
//!       {"http": "http://127.0.0.1:8080/healthz", "status": 200, "timeout_s": 2}
//!     ]
//!   },
//!   "update": {"tries": 2}
//! }
//! ```
//!
//! Unknown keys are errors, so a misspelt probe is not silently skipped.

use std::time::Duration;

use serde::Deserialize;

use crate::probe::Probe;

/// Largest accepted config file.
pub const MAX_LEN: usize = 64 * 1024;
/// Where the root carries it.
pub const PATH: &str = "/etc/cairn/machine.json";
const MAX_PROBES: usize = 32;
const MAX_WINDOW_S: u64 = 24 * 3600;

#[derive(Debug, Clone, PartialEq)]
pub struct MachineConfig {
    pub health_window: Duration,
    pub probes: Vec<Probe>,
    pub tries: u32,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            health_window: cairn_updater::health::DEFAULT_WINDOW,
            probes: Vec::new(),
            tries: cairn_updater::install::DEFAULT_TRIES,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    update: RawUpdate,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    window_s: Option<u64>,
    #[serde(default)]
    probes: Vec<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpdate {
    tries: Option<u32>,
}

impl MachineConfig {
    /// Parses and checks a config; the error is one line naming the problem.
    pub fn parse(text: &str) -> Result<MachineConfig, String> {
        if text.len() > MAX_LEN {
            return Err(format!("larger than {MAX_LEN} bytes"));
        }
        let raw: Raw = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut config = MachineConfig::default();
        if let Some(w) = raw.health.window_s {
            if !(1..=MAX_WINDOW_S).contains(&w) {
                return Err(format!("health.window_s {w} must be 1..={MAX_WINDOW_S}"));
            }
            config.health_window = Duration::from_secs(w);
        }
        if raw.health.probes.len() > MAX_PROBES {
            return Err(format!("more than {MAX_PROBES} health probes"));
        }
        for (i, p) in raw.health.probes.iter().enumerate() {
            config
                .probes
                .push(Probe::from_json(p).map_err(|e| format!("health.probes[{i}]: {e}"))?);
        }
        if let Some(t) = raw.update.tries {
            let max = cairn_boot::sdboot::MAX_TRIES;
            if !(1..=max).contains(&t) {
                return Err(format!("update.tries {t} must be 1..={max}"));
            }
            config.tries = t;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_defaults() {
        assert_eq!(
            MachineConfig::parse("{}").unwrap(),
            MachineConfig::default()
        );
        assert_eq!(
            MachineConfig::default().health_window,
            Duration::from_secs(300)
        );
    }

    #[test]
    fn reads_window_probes_and_tries() {
        let c = MachineConfig::parse(
            r#"{"health":{"window_s":20,"probes":[{"tcp":"127.0.0.1:9","timeout_s":1}]},"update":{"tries":3}}"#,
        )
        .unwrap();
        assert_eq!(c.health_window, Duration::from_secs(20));
        assert_eq!(c.probes.len(), 1);
        assert_eq!(c.tries, 3);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        for (text, want) in [
            (r#"{"helth":{}}"#, "unknown field `helth`"),
            (r#"{"health":{"window_s":0}}"#, "window_s 0"),
            (r#"{"update":{"tries":0}}"#, "tries 0"),
            (r#"{"health":{"probes":[{"ftp":"x"}]}}"#, "health.probes[0]"),
            ("not json", "expected"),
        ] {
            let err = MachineConfig::parse(text).unwrap_err();
            assert!(err.contains(want), "{err} lacks {want}");
        }
    }
}
