//! A device's update check-in (`POST /api/v1/device/update`, over mutual TLS): what it runs and how its update
//! went, and the hub's answer, the release its rollout wants on it. The device decides on its own whether it may
//! install that release (TUF-verified metadata and [`crate::release::may_install`]); the goal only says what to
//! look for.
//!
//! ```json
//! {"hardware":"rev-a","security_floor":3,"image":{"sha256":"9f…","version":"1.3.0"},
//!  "steps":[{"rollout":"r7k2…","state":"rolled_back","detail":"health check failed: no MQTT within 120 s"}]}
//! {"goal":{"rollout":"r7k2…","target":"plug-2-1.4.0.img"},"check_after_seconds":21600}
//! ```

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// Most steps one check-in reports.
pub const MAX_STEPS: usize = 16;
/// Longest detail text of a step.
pub const MAX_DETAIL: usize = 512;

/// Whether `s` is a SHA-256 as Hearth writes it: 64 lowercase hex digits (image hashes, file names).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// Where a device is in installing a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum UpdateStep {
    /// Fetching the image.
    Downloading,
    /// Writing it to the inactive slot.
    Installing,
    /// Switched; restarting into it.
    Rebooting,
    /// Running it, health check passed, committed.
    Succeeded,
    /// The health check failed (or it never came up): back on the previous image.
    RolledBack,
    /// It could not be installed (refused by TUF, below the floor, wrong hardware, no space…).
    Failed,
}

impl UpdateStep {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateStep::Downloading => "downloading",
            UpdateStep::Installing => "installing",
            UpdateStep::Rebooting => "rebooting",
            UpdateStep::Succeeded => "succeeded",
            UpdateStep::RolledBack => "rolled_back",
            UpdateStep::Failed => "failed",
        }
    }
}

/// The image a device runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct InstalledImage {
    /// Lowercase hex SHA-256 of the image.
    pub sha256: String,
    /// Its version, if signed metadata names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// One step of an update, reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StepReport {
    /// The rollout.
    pub rollout: String,
    /// The step reached.
    pub state: UpdateStep,
    /// What happened, in plain words.
    #[serde(default)]
    pub detail: String,
}

/// A device's check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CheckIn {
    /// Its hardware revision.
    pub hardware: String,
    /// Its security floor.
    pub security_floor: u64,
    /// The image it runs (absent on a device without an installer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<InstalledImage>,
    /// Update steps since the last check-in the hub answered.
    #[serde(default)]
    pub steps: Vec<StepReport>,
}

impl CheckIn {
    /// Checks lengths and alphabets.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let token = |what: &'static str, s: &str, max: usize| {
            if s.is_empty() || s.len() > max {
                return Err(ValidationError::TooLong { what, len: s.len(), max });
            }
            match s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))) {
                Some(found) => Err(ValidationError::BadCharacter { what, found, allowed: "A-Z a-z 0-9 . _ - +" }),
                None => Ok(()),
            }
        };
        token("hardware", &self.hardware, 64)?;
        if let Some(image) = &self.image {
            if image.sha256.len() != 64
                || !image.sha256.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            {
                return Err(ValidationError::Schema { what: "image.sha256", detail: "64 lowercase hex digits".into() });
            }
            if let Some(v) = &image.version {
                token("image.version", v, 64)?;
            }
        }
        if self.steps.len() > MAX_STEPS {
            return Err(ValidationError::TooLong { what: "steps", len: self.steps.len(), max: MAX_STEPS });
        }
        for step in &self.steps {
            token("steps.rollout", &step.rollout, 64)?;
            if step.detail.len() > MAX_DETAIL {
                return Err(ValidationError::TooLong { what: "steps.detail", len: step.detail.len(), max: MAX_DETAIL });
            }
            if let Some(found) = step.detail.chars().find(|c| c.is_control()) {
                return Err(ValidationError::BadCharacter {
                    what: "steps.detail",
                    found,
                    allowed: "text without control characters",
                });
            }
        }
        Ok(())
    }
}

/// The release a rollout wants on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Goal {
    /// The rollout.
    pub rollout: String,
    /// The release's target name in the TUF repository.
    pub target: String,
}

/// The hub's answer to a check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CheckInAnswer {
    /// What to install, if anything.
    #[serde(default)]
    pub goal: Option<Goal>,
    /// When to check in again at the latest (the hub also says so over MQTT when the goal changes).
    pub check_after_seconds: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_ins_are_checked() {
        let ok = CheckIn {
            hardware: "rev-a".into(),
            security_floor: 3,
            image: Some(InstalledImage { sha256: "a".repeat(64), version: Some("1.0.0".into()) }),
            steps: vec![StepReport { rollout: "r1".into(), state: UpdateStep::RolledBack, detail: "health".into() }],
        };
        assert_eq!(ok.validate(), Ok(()));
        let json = serde_json::to_string(&ok).unwrap();
        assert!(json.contains(r#""state":"rolled_back""#), "{json}");
        let mut bad = ok.clone();
        bad.image = Some(InstalledImage { sha256: "A".repeat(64), version: None });
        assert!(bad.validate().is_err(), "uppercase hex");
        let mut bad = ok.clone();
        bad.hardware = "rev a".into();
        assert!(bad.validate().is_err(), "hardware alphabet");
        let mut bad = ok.clone();
        bad.steps = vec![ok.steps[0].clone(); MAX_STEPS + 1];
        assert!(bad.validate().is_err(), "too many steps");
        let mut bad = ok;
        bad.steps[0].detail = "a\u{1b}[31m".into();
        assert!(bad.validate().is_err(), "control characters");
        assert!(serde_json::from_str::<CheckIn>(r#"{"hardware":"a","security_floor":1,"x":1}"#).is_err());
    }
}
