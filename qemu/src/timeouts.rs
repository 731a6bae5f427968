//! Timeout scaling for slow hosts.
//!
//! Tests state timeouts for an ordinary developer machine; a slow CI runner (TCG on two shared
//! cores) sets `CAIRN_QEMU_TIMEOUT_SCALE=3` instead of every test growing its own knob. Every
//! duration the harness waits for goes through [`Timeouts::scale`].

use std::time::Duration;

use crate::error::{Error, Result};

/// The environment variable that multiplies every timeout.
pub const TIMEOUT_SCALE_ENV: &str = "CAIRN_QEMU_TIMEOUT_SCALE";

/// Multiplier applied to every timeout the harness waits for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    factor: f64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { factor: 1.0 }
    }
}

impl Timeouts {
    /// Reads [`TIMEOUT_SCALE_ENV`]; unset means 1. A value that is not a positive finite number is
    /// an error rather than silently ignored, so a typo cannot make a slow runner flaky.
    pub fn from_env() -> Result<Self> {
        match std::env::var(TIMEOUT_SCALE_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(Timeouts::default()),
            Err(std::env::VarError::NotUnicode(v)) => Err(Error::TimeoutScale {
                value: v.to_string_lossy().into_owned(),
            }),
            Ok(v) => Self::parse(&v),
        }
    }

    /// Parses a scale factor such as `2.5`.
    pub fn parse(value: &str) -> Result<Self> {
        let bad = || Error::TimeoutScale {
            value: value.to_string(),
        };
        let factor: f64 = value.trim().parse().map_err(|_| bad())?;
        Self::with_factor(factor).ok_or_else(bad)
    }

    /// A fixed factor; `None` unless it is positive and finite.
    pub fn with_factor(factor: f64) -> Option<Self> {
        (factor.is_finite() && factor > 0.0).then_some(Timeouts { factor })
    }

    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// `timeout` multiplied by the factor (saturating at a day, which no test should reach).
    pub fn scale(&self, timeout: Duration) -> Duration {
        const MAX: Duration = Duration::from_secs(24 * 60 * 60);
        Duration::try_from_secs_f64(timeout.as_secs_f64() * self.factor).map_or(MAX, |d| d.min(MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_scales() {
        let t = Timeouts::parse("2.5").unwrap();
        assert_eq!(t.scale(Duration::from_secs(10)), Duration::from_secs(25));
        assert_eq!(
            Timeouts::default().scale(Duration::from_millis(7)),
            Duration::from_millis(7)
        );
    }

    #[test]
    fn rejects_nonsense() {
        for v in ["", "0", "-1", "nan", "inf", "fast"] {
            let err = Timeouts::parse(v).unwrap_err().to_string();
            assert!(err.contains(TIMEOUT_SCALE_ENV), "{v}: {err}");
        }
    }

    #[test]
    fn huge_factor_saturates() {
        let t = Timeouts::with_factor(1e300).unwrap();
        assert_eq!(t.scale(Duration::from_secs(1)), Duration::from_secs(86400));
    }
}
