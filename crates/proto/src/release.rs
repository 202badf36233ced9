//! What a release says about itself, inside the signed TUF targets metadata (the image target's `custom.hearth`
//! object), and the rule a device applies before installing it. Because the object is part of the signed targets
//! metadata, nobody without the maker's offline targets key can change a release's model, hardware, security
//! version or descriptions.
//!
//! ```json
//! {"hearth": {"model": "plug-2", "version": "1.4.0", "hardware": ["rev-b", "rev-c"], "security_version": 7,
//!   "kind": "security", "disruption": {"restarts": true, "seconds": 40},
//!   "fixes": "Closes a way to crash the plug over the local network.", "notes": "…", "sbom": "plug-2-1.4.0.cdx.json"}}
//! ```
//!
//! Guidelines: EN 303 645 5.3-11 (what risk an update fixes, in plain words), 5.3-12 (whether and for how long
//! installing disrupts the device), the security-version floor against rollback to a signed but vulnerable image.

use serde::{Deserialize, Serialize};

use crate::{ModelId, ValidationError};

/// Longest text of `fixes`.
pub const MAX_FIXES: usize = 1_000;
/// Longest release notes.
pub const MAX_NOTES: usize = 10_000;
/// Most hardware revisions one release names.
pub const MAX_HARDWARE: usize = 64;

/// Security or feature release (the CRA wants security updates separable from feature updates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseKind {
    /// Fixes vulnerabilities (it may carry other changes too).
    Security,
    /// Features and other fixes only.
    Feature,
}

/// Whether installing interrupts the device, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disruption {
    /// The device restarts.
    pub restarts: bool,
    /// About how long the device does not do its job, seconds.
    pub seconds: u32,
}

/// A release as its signed metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseInfo {
    /// The model it is for.
    pub model: ModelId,
    /// Its version, as people read it (`1.4.0`).
    pub version: String,
    /// The hardware revisions it runs on (never empty).
    pub hardware: Vec<String>,
    /// Its security version: a device never installs a release below the highest it has run.
    pub security_version: u64,
    /// Security or feature release.
    pub kind: ReleaseKind,
    /// What installing does to the device.
    pub disruption: Disruption,
    /// What risk it fixes, in plain words (may be empty for a feature release).
    pub fixes: String,
    /// Release notes.
    pub notes: String,
    /// The TUF target name of its CycloneDX SBOM.
    pub sbom: Option<String>,
}

impl ReleaseInfo {
    /// Reads and checks the `hearth` object of a target's `custom` metadata.
    pub fn from_custom(custom: &serde_json::Value) -> Result<ReleaseInfo, ValidationError> {
        let hearth = custom.get("hearth").ok_or(ValidationError::Schema {
            what: "release",
            detail: "the target's custom metadata has no `hearth` object".into(),
        })?;
        let info: ReleaseInfo = serde_json::from_value(hearth.clone())
            .map_err(|e| ValidationError::Schema { what: "release", detail: e.to_string() })?;
        info.validate()?;
        Ok(info)
    }

    /// Checks lengths and alphabets.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let printable = |what: &'static str, s: &str, max: usize| {
            if s.len() > max {
                return Err(ValidationError::TooLong { what, len: s.len(), max });
            }
            match s.chars().find(|c| c.is_control() && *c != '\n') {
                Some(found) => {
                    Err(ValidationError::BadCharacter { what, found, allowed: "text without control characters" })
                }
                None => Ok(()),
            }
        };
        let token = |what: &'static str, s: &str| {
            if s.is_empty() {
                return Err(ValidationError::TooShort { what, len: 0, min: 1 });
            }
            if s.len() > 64 {
                return Err(ValidationError::TooLong { what, len: s.len(), max: 64 });
            }
            match s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))) {
                Some(found) => Err(ValidationError::BadCharacter { what, found, allowed: "A-Z a-z 0-9 . _ - +" }),
                None => Ok(()),
            }
        };
        token("version", &self.version)?;
        if self.hardware.is_empty() {
            return Err(ValidationError::TooShort { what: "hardware", len: 0, min: 1 });
        }
        if self.hardware.len() > MAX_HARDWARE {
            return Err(ValidationError::TooLong { what: "hardware", len: self.hardware.len(), max: MAX_HARDWARE });
        }
        for h in &self.hardware {
            token("hardware", h)?;
        }
        printable("fixes", &self.fixes, MAX_FIXES)?;
        printable("notes", &self.notes, MAX_NOTES)?;
        if self.kind == ReleaseKind::Security && self.fixes.trim().is_empty() {
            return Err(ValidationError::Schema {
                what: "fixes",
                detail: "a security release says what risk it fixes, in plain words".into(),
            });
        }
        if let Some(sbom) = &self.sbom {
            printable("sbom", sbom, 255)?;
        }
        Ok(())
    }
}

/// Whether `name` is a target name Hearth accepts: 1 to 128 of `A-Z a-z 0-9 . _ - +`, not starting with a dot
/// (one path segment: no directories, nothing a file system or a URL could read differently).
pub fn check_target_name(name: &str) -> Result<(), ValidationError> {
    if name.is_empty() || name.len() > 128 {
        return Err(ValidationError::TooLong { what: "target name", len: name.len(), max: 128 });
    }
    if name.starts_with('.') {
        return Err(ValidationError::BadCharacter { what: "target name", found: '.', allowed: "no dot first" });
    }
    match name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))) {
        Some(found) => {
            Err(ValidationError::BadCharacter { what: "target name", found, allowed: "A-Z a-z 0-9 . _ - +" })
        }
        None => Ok(()),
    }
}

/// What a device knows of itself when it decides on a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    /// Its model.
    pub model: ModelId,
    /// Its hardware revision.
    pub hardware: String,
    /// The highest security version it has run (its floor).
    pub security_floor: u64,
    /// The version installed now.
    pub installed_version: Option<String>,
}

/// Why a device does not install a release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallRefusal {
    /// Made for another model.
    #[error("the release is for model {release}, this device is a {device}")]
    WrongModel {
        /// The release's model.
        release: String,
        /// The device's.
        device: String,
    },
    /// Not made for this hardware revision.
    #[error("the release does not run on hardware {0}")]
    WrongHardware(String),
    /// Below the security floor: a rollback to a signed but vulnerable image.
    #[error("security version {release} is below this device's floor of {floor}")]
    BelowFloor {
        /// The release's security version.
        release: u64,
        /// The device's floor.
        floor: u64,
    },
    /// It is what is installed already.
    #[error("version {0} is installed already")]
    Installed(String),
}

/// Whether a device may install `release` (the signatures were checked by TUF before this).
pub fn may_install(release: &ReleaseInfo, device: &DeviceFacts) -> Result<(), InstallRefusal> {
    if release.model != device.model {
        return Err(InstallRefusal::WrongModel {
            release: release.model.to_string(),
            device: device.model.to_string(),
        });
    }
    if !release.hardware.contains(&device.hardware) {
        return Err(InstallRefusal::WrongHardware(device.hardware.clone()));
    }
    if release.security_version < device.security_floor {
        return Err(InstallRefusal::BelowFloor { release: release.security_version, floor: device.security_floor });
    }
    if device.installed_version.as_deref() == Some(release.version.as_str()) {
        return Err(InstallRefusal::Installed(release.version.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(security_version: u64) -> ReleaseInfo {
        ReleaseInfo {
            model: ModelId::parse("plug-2").expect("model"),
            version: "1.4.0".into(),
            hardware: vec!["rev-b".into(), "rev-c".into()],
            security_version,
            kind: ReleaseKind::Security,
            disruption: Disruption { restarts: true, seconds: 40 },
            fixes: "Closes a way to crash the plug over the local network.".into(),
            notes: String::new(),
            sbom: Some("plug-2-1.4.0.cdx.json".into()),
        }
    }

    fn device(floor: u64) -> DeviceFacts {
        DeviceFacts {
            model: ModelId::parse("plug-2").expect("model"),
            hardware: "rev-c".into(),
            security_floor: floor,
            installed_version: Some("1.3.2".into()),
        }
    }

    #[test]
    fn the_floor_the_model_and_the_hardware_decide() {
        assert_eq!(may_install(&release(7), &device(7)), Ok(()));
        assert_eq!(may_install(&release(8), &device(7)), Ok(()));
        assert_eq!(may_install(&release(6), &device(7)), Err(InstallRefusal::BelowFloor { release: 6, floor: 7 }));
        let mut other = device(0);
        other.hardware = "rev-a".into();
        assert_eq!(may_install(&release(7), &other), Err(InstallRefusal::WrongHardware("rev-a".into())));
        other = device(0);
        other.model = ModelId::parse("cam-1").expect("model");
        assert!(matches!(may_install(&release(7), &other), Err(InstallRefusal::WrongModel { .. })));
        other = device(0);
        other.installed_version = Some("1.4.0".into());
        assert_eq!(may_install(&release(7), &other), Err(InstallRefusal::Installed("1.4.0".into())));
    }

    #[test]
    fn release_metadata_is_read_from_the_targets_custom_object_and_checked() {
        let json = serde_json::json!({ "hearth": serde_json::to_value(release(7)).expect("json") });
        assert_eq!(ReleaseInfo::from_custom(&json), Ok(release(7)));
        assert!(ReleaseInfo::from_custom(&serde_json::json!({})).is_err(), "no hearth object");
        let mut bad = serde_json::to_value(release(7)).expect("json");
        bad["hardware"] = serde_json::json!([]);
        assert!(ReleaseInfo::from_custom(&serde_json::json!({ "hearth": bad })).is_err(), "no hardware");
        let mut bad = serde_json::to_value(release(7)).expect("json");
        bad["fixes"] = serde_json::json!(" ");
        let err = ReleaseInfo::from_custom(&serde_json::json!({ "hearth": bad })).expect_err("a security release");
        assert!(err.to_string().contains("plain words"), "{err}");
        let mut bad = serde_json::to_value(release(7)).expect("json");
        bad["version"] = serde_json::json!("1.4.0; rm -rf /");
        assert!(ReleaseInfo::from_custom(&serde_json::json!({ "hearth": bad })).is_err(), "version alphabet");
        let mut bad = serde_json::to_value(release(7)).expect("json");
        bad["surprise"] = serde_json::json!(1);
        assert!(ReleaseInfo::from_custom(&serde_json::json!({ "hearth": bad })).is_err(), "unknown fields");
        let mut bad = serde_json::to_value(release(7)).expect("json");
        bad["notes"] = serde_json::json!("x".repeat(MAX_NOTES + 1));
        assert!(ReleaseInfo::from_custom(&serde_json::json!({ "hearth": bad })).is_err(), "notes too long");
    }
}
