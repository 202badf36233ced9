//! Installers: where a verified image goes and how the device boots it. Behind one trait so that the update
//! logic is the same for the directory A/B slots with a simulated bootloader (tests, demo, simulator) and for a
//! hand-off to a real device's installer (RAUC, SWUpdate, Mender's client…) through an external command.
//!
//! The directory installer keeps `{dir}/a/` and `{dir}/b/` (each an `image` and its `slot.json`) and
//! `{dir}/bootloader.json`, written atomically, as a real bootloader keeps its environment:
//!
//! ```json
//! {"active":"a","trial":{"slot":"b","tries_left":2}}
//! ```
//!
//! Each start of the agent is a boot: with a trial pending, one try is used up and the trial slot is booted; with
//! no try left, the trial is dropped and the active slot is booted again (rollback). Committing makes the trial
//! slot active. A power cut at any point leaves either the old or the new `bootloader.json`, never a mix.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a slot holds, as written at install time from TUF-verified metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotImage {
    /// The target name.
    pub target: String,
    /// Its version.
    pub version: String,
    /// Its security version.
    pub security_version: u64,
    /// SHA-256 of the image, lowercase hex.
    pub sha256: String,
}

/// What a boot came up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// The image running now, with its file (to hash it), if the slot has one.
    pub running: Option<(SlotImage, PathBuf)>,
    /// The image is on trial: commit it after the health check, or roll back.
    pub trial: bool,
    /// A trial image that the bootloader gave up on (no tries left) at this boot.
    pub gave_up_on: Option<SlotImage>,
}

/// Why an installer step failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Reading or writing the slots.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The bootloader state is not readable: the device keeps booting the active slot and installs nothing.
    #[error("bootloader state {0}: {1}")]
    Corrupt(String, String),
    /// The external installer failed.
    #[error("installer command {0}: {1}")]
    Command(String, String),
}

/// Where images go and how the device boots them.
pub trait Installer: Send + Sync {
    /// Called once at each start (a boot): applies the boot counter and says what runs.
    fn boot(&self) -> Result<Boot, InstallError>;
    /// Writes `image` (verified) into the inactive slot.
    fn install(&self, image: &Path, meta: &SlotImage) -> Result<(), InstallError>;
    /// Makes the next boot try the inactive slot, with `tries` attempts.
    fn switch(&self, tries: u32) -> Result<(), InstallError>;
    /// The running trial image is healthy: keep it.
    fn commit(&self) -> Result<(), InstallError>;
    /// The running trial image is not healthy: the next boot goes back to the previous one.
    fn reject(&self) -> Result<(), InstallError>;
    /// Restarts the device into whatever the bootloader chooses. `Ok(true)`: the agent itself must restart (the
    /// directory slots' simulated reboot); `Ok(false)`: the device is restarting and the agent will be stopped.
    fn reboot(&self) -> Result<bool, InstallError>;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Trial {
    slot: String,
    tries_left: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Bootloader {
    active: String,
    /// The slot booted last (the trial slot while on trial).
    #[serde(default)]
    booted: Option<String>,
    trial: Option<Trial>,
}

/// A/B slots in a directory with a simulated bootloader.
#[derive(Debug, Clone)]
pub struct DirSlots {
    dir: PathBuf,
}

impl DirSlots {
    /// The slots in `dir`. With no image installed yet, `factory` (an image and its metadata) is put into slot
    /// `a` as the active one (the device's first boot).
    pub fn open(dir: &Path, factory: Option<(&Path, &SlotImage)>) -> Result<DirSlots, InstallError> {
        let slots = DirSlots { dir: dir.to_owned() };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        if !slots.bootloader_path().exists()
            && let Some((image, meta)) = factory
        {
            slots.write_slot("a", image, meta)?;
            slots.save(&Bootloader { active: "a".into(), booted: None, trial: None })?;
        }
        Ok(slots)
    }

    fn bootloader_path(&self) -> PathBuf {
        self.dir.join("bootloader.json")
    }

    fn load(&self) -> Result<Bootloader, InstallError> {
        let path = self.bootloader_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| InstallError::Corrupt(path.display().to_string(), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Bootloader { active: "a".into(), booted: None, trial: None })
            }
            Err(e) => Err(io(&path, e)),
        }
    }

    fn save(&self, b: &Bootloader) -> Result<(), InstallError> {
        let path = self.bootloader_path();
        let bytes =
            serde_json::to_vec(b).map_err(|e| InstallError::Corrupt(path.display().to_string(), e.to_string()))?;
        hearth_fsutil::write_atomic(&path, &bytes, 0o600).map_err(|e| io(&path, e))
    }

    fn slot_image(&self, slot: &str) -> Option<(SlotImage, PathBuf)> {
        let dir = self.dir.join(slot);
        let meta: SlotImage = serde_json::from_slice(&std::fs::read(dir.join("slot.json")).ok()?).ok()?;
        Some((meta, dir.join("image")))
    }

    fn write_slot(&self, slot: &str, image: &Path, meta: &SlotImage) -> Result<(), InstallError> {
        let dir = self.dir.join(slot);
        // The slot's metadata goes first: a slot with metadata but a partial image fails its hash check at boot
        // and is never made active (only a switch after a complete install makes a slot bootable).
        let _ = std::fs::remove_file(dir.join("slot.json"));
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let tmp = dir.join("image.tmp");
        std::fs::copy(image, &tmp).map_err(|e| io(&tmp, e))?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, dir.join("image")).map_err(|e| io(&dir, e))?;
        let bytes = serde_json::to_vec(meta).map_err(|e| InstallError::Corrupt(slot.into(), e.to_string()))?;
        hearth_fsutil::write_atomic(&dir.join("slot.json"), &bytes, 0o600).map_err(|e| io(&dir, e))
    }

    fn inactive(b: &Bootloader) -> &'static str {
        if b.active == "a" { "b" } else { "a" }
    }
}

fn io(path: &Path, e: std::io::Error) -> InstallError {
    InstallError::Io(path.display().to_string(), e)
}

impl Installer for DirSlots {
    fn boot(&self) -> Result<Boot, InstallError> {
        let mut b = self.load()?;
        let mut gave_up_on = None;
        let booted = match b.trial.clone() {
            Some(mut trial) if trial.tries_left > 0 => {
                trial.tries_left -= 1;
                let slot = trial.slot.clone();
                b.trial = Some(trial);
                slot
            }
            Some(trial) => {
                gave_up_on = self.slot_image(&trial.slot).map(|(m, _)| m);
                b.trial = None;
                b.active.clone()
            }
            None => b.active.clone(),
        };
        b.booted = Some(booted.clone());
        self.save(&b)?;
        Ok(Boot { running: self.slot_image(&booted), trial: b.trial.is_some(), gave_up_on })
    }

    fn install(&self, image: &Path, meta: &SlotImage) -> Result<(), InstallError> {
        let b = self.load()?;
        if b.trial.is_some() {
            return Err(InstallError::Corrupt(
                "bootloader".into(),
                "a trial is pending; commit or reject it first".into(),
            ));
        }
        self.write_slot(Self::inactive(&b), image, meta)
    }

    fn switch(&self, tries: u32) -> Result<(), InstallError> {
        let mut b = self.load()?;
        let slot = Self::inactive(&b).to_owned();
        if self.slot_image(&slot).is_none() {
            return Err(InstallError::Corrupt(slot, "the inactive slot holds no image".into()));
        }
        b.trial = Some(Trial { slot, tries_left: tries.max(1) });
        self.save(&b)
    }

    fn commit(&self) -> Result<(), InstallError> {
        let mut b = self.load()?;
        if let Some(trial) = b.trial.take() {
            b.active = trial.slot;
            self.save(&b)?;
        }
        Ok(())
    }

    fn reject(&self) -> Result<(), InstallError> {
        let mut b = self.load()?;
        if b.trial.take().is_some() {
            self.save(&b)?;
        }
        Ok(())
    }

    fn reboot(&self) -> Result<bool, InstallError> {
        Ok(true)
    }
}

/// Hands images to a real device's installer, RAUC-style: `{command} install FILE` writes the inactive slot and
/// marks it for the next boot, `{command} status` prints the running image's `slot.json`-style JSON with
/// `image_path` (a file holding exactly the running image, which the agent hashes) and `"trial": true` while on
/// trial, `{command} mark-good` / `mark-bad` commit or reject it, `{command} reboot`
/// restarts the device. The environment carries `HEARTH_TARGET`, `HEARTH_VERSION` and `HEARTH_SHA256`.
#[derive(Debug, Clone)]
pub struct ExternalInstaller {
    command: PathBuf,
}

impl ExternalInstaller {
    /// The installer program at `command`.
    pub fn new(command: &Path) -> ExternalInstaller {
        ExternalInstaller { command: command.to_owned() }
    }

    fn run(&self, args: &[&str], meta: Option<&SlotImage>) -> Result<String, InstallError> {
        let mut cmd = std::process::Command::new(&self.command);
        cmd.args(args);
        if let Some(m) = meta {
            cmd.env("HEARTH_TARGET", &m.target).env("HEARTH_VERSION", &m.version).env("HEARTH_SHA256", &m.sha256);
        }
        let out = cmd.output().map_err(|e| InstallError::Command(args.join(" "), e.to_string()))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).chars().take(300).collect::<String>();
            return Err(InstallError::Command(args.join(" "), format!("{}: {err}", out.status)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[derive(Deserialize)]
struct ExternalStatus {
    #[serde(flatten)]
    image: SlotImage,
    #[serde(default)]
    trial: bool,
    /// The running image as a file the agent can hash (for a partition, a file of exactly the image's length).
    image_path: PathBuf,
}

impl Installer for ExternalInstaller {
    fn boot(&self) -> Result<Boot, InstallError> {
        let out = self.run(&["status"], None)?;
        let status: ExternalStatus =
            serde_json::from_str(&out).map_err(|e| InstallError::Command("status".into(), e.to_string()))?;
        Ok(Boot { running: Some((status.image, status.image_path)), trial: status.trial, gave_up_on: None })
    }

    fn install(&self, image: &Path, meta: &SlotImage) -> Result<(), InstallError> {
        self.run(&["install", &image.display().to_string()], Some(meta)).map(|_| ())
    }

    fn switch(&self, _tries: u32) -> Result<(), InstallError> {
        // `install` marks the slot for the next boot, as RAUC does.
        Ok(())
    }

    fn commit(&self) -> Result<(), InstallError> {
        self.run(&["mark-good"], None).map(|_| ())
    }

    fn reject(&self) -> Result<(), InstallError> {
        self.run(&["mark-bad"], None).map(|_| ())
    }

    fn reboot(&self) -> Result<bool, InstallError> {
        self.run(&["reboot"], None).map(|_| false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(v: &str) -> SlotImage {
        SlotImage { target: format!("m-{v}.img"), version: v.into(), security_version: 1, sha256: "0".repeat(64) }
    }

    #[test]
    fn a_trial_boots_its_tries_then_rolls_back_unless_committed() {
        let dir = tempfile::tempdir().expect("tmp");
        let factory = dir.path().join("factory");
        std::fs::write(&factory, b"v1").expect("write");
        let slots = DirSlots::open(&dir.path().join("slots"), Some((&factory, &meta("1")))).expect("open");
        let boot = slots.boot().expect("boot");
        assert_eq!(boot.running.as_ref().map(|r| r.0.version.as_str()), Some("1"));
        assert!(!boot.trial);

        let new = dir.path().join("new");
        std::fs::write(&new, b"v2").expect("write");
        slots.install(&new, &meta("2")).expect("install");
        assert_eq!(slots.boot().expect("boot").running.map(|r| r.0.version), Some("1".into()), "not switched yet");
        slots.switch(2).expect("switch");
        for _ in 0..2 {
            let boot = slots.boot().expect("boot");
            assert!(boot.trial);
            assert_eq!(boot.running.map(|r| r.0.version), Some("2".into()));
        }
        let boot = slots.boot().expect("boot");
        assert!(!boot.trial, "no tries left");
        assert_eq!(boot.gave_up_on.map(|m| m.version), Some("2".into()));
        assert_eq!(boot.running.map(|r| r.0.version), Some("1".into()), "rolled back");

        slots.install(&new, &meta("2")).expect("install");
        slots.switch(3).expect("switch");
        assert!(slots.boot().expect("boot").trial);
        slots.commit().expect("commit");
        let boot = slots.boot().expect("boot");
        assert!(!boot.trial);
        assert_eq!(
            boot.running.map(|r| (r.0.version, std::fs::read(r.1).expect("image"))),
            Some(("2".into(), b"v2".to_vec()))
        );

        // A rejected trial: the next boot runs the old image.
        let newer = dir.path().join("newer");
        std::fs::write(&newer, b"v3").expect("write");
        slots.install(&newer, &meta("3")).expect("install");
        slots.switch(3).expect("switch");
        assert!(slots.boot().expect("boot").trial);
        assert!(slots.install(&newer, &meta("3")).is_err(), "no install over a pending trial");
        slots.reject().expect("reject");
        assert_eq!(slots.boot().expect("boot").running.map(|r| r.0.version), Some("2".into()));

        std::fs::write(dir.path().join("slots/bootloader.json"), b"{garbage").expect("write");
        assert!(matches!(slots.boot(), Err(InstallError::Corrupt(..))));
    }
}
