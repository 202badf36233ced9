//! Over-the-air updates, the device's side. At every start (a boot) the agent asks its installer what runs,
//! hashes that image (the hub compares the hash with what it released; a mismatch with the slot's own record is
//! logged), raises its security floor for a
//! committed image, and, when the image is on trial, health-checks it (back in contact with the hub, and the
//! device's own health command) before committing it or rolling back. Then it checks in with the hub over mutual
//! TLS (after boot, every `check_after_seconds`, and when an `update_check` command arrives), and when its
//! rollout names a release: refreshes TUF, refuses what the signed metadata or [`may_install`] forbid, downloads
//! the image (resuming with HTTP ranges, never past the signed length, each read within an idle limit), verifies
//! length and SHA-256, installs it into the inactive slot, switches and restarts. Every check-in before the switch
//! confirms the hub still wants that release: a rollout aborted or paused meanwhile is not installed.
//!
//! The job and the reports not yet delivered are kept in `{state_dir}/update/state.json` (written atomically), so a
//! power cut at any point resumes where it was: a partial download continues, an interrupted install is
//! redone, a trial boot is counted by the bootloader.

pub mod download;
pub mod installer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hearth_proto::release::{DeviceFacts, may_install};
use hearth_proto::update::{CheckIn, CheckInAnswer, InstalledImage, StepReport, UpdateStep};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::AgentStats;
use crate::enrol;
use crate::floor::SecurityFloor;
use crate::keystore::KeyStore;
use crate::tuf;
pub use installer::{Boot, DirSlots, ExternalInstaller, InstallError, Installer, SlotImage};

/// How updates are done on this device.
#[derive(Clone)]
pub struct UpdateConfig {
    /// Where images go.
    pub installer: Arc<dyn Installer>,
    /// This device's hardware revision.
    pub hardware: String,
    /// The TUF root the device trusts at first (shipped with its software); later roots are followed.
    pub trust_root: Option<PathBuf>,
    /// How long a new image has to get back in contact with the hub (and pass the health command).
    pub health_timeout: Duration,
    /// Run on a trial boot with `HEARTH_IMAGE` set to the image; exit 0 means healthy.
    pub health_command: Option<PathBuf>,
    /// Boots a new image gets before the bootloader goes back.
    pub boot_tries: u32,
    /// Check in at least this often, whatever the hub says (tests).
    pub max_check_interval: Option<Duration>,
}

impl std::fmt::Debug for UpdateConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateConfig").field("hardware", &self.hardware).finish_non_exhaustive()
    }
}

impl UpdateConfig {
    /// Defaults around `installer`: hardware `rev-a`, 120 s health timeout, 3 boot tries.
    pub fn new(installer: Arc<dyn Installer>) -> UpdateConfig {
        UpdateConfig {
            installer,
            hardware: "rev-a".into(),
            trust_root: None,
            health_timeout: Duration::from_secs(120),
            health_command: None,
            boot_tries: 3,
            max_check_interval: None,
        }
    }
}

/// The job under way, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Job {
    rollout: String,
    image: SlotImage,
    length: u64,
    phase: Phase,
    /// Complete downloads that did not hash to the signed SHA-256 so far.
    #[serde(default)]
    bad_downloads: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    Downloading,
    Installing,
    Switched,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Persisted {
    job: Option<Job>,
    reports: Vec<StepReport>,
}

/// Why an update step failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// Local state.
    #[error("{0}")]
    Local(String),
    /// The hub or the network; tried again later.
    #[error("{0}")]
    Network(String),
}

/// What the updater asks of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdaterEnd {
    /// Restart the agent (the simulated bootloader's reboot).
    Reboot,
    /// The device is restarting; stop.
    Stop,
}

/// The device's updater. Built at agent start with [`Updater::boot`].
pub struct Updater {
    state_dir: PathBuf,
    key: Arc<dyn KeyStore>,
    config: UpdateConfig,
    floor: SecurityFloor,
    persisted: Persisted,
    boot: Boot,
    running_sha: Option<String>,
    stats: Arc<AgentStats>,
    connects_at_boot: u64,
    nudge: Arc<Notify>,
    /// When to check in next, as the hub last said.
    next_check: Duration,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater").field("state_dir", &self.state_dir).finish_non_exhaustive()
    }
}

fn local(e: impl std::fmt::Display) -> UpdateError {
    UpdateError::Local(e.to_string())
}

impl Updater {
    /// The boot: what runs (hashed, checked), the floor, and what the last job came to.
    pub fn boot(
        state_dir: &Path,
        key: Arc<dyn KeyStore>,
        config: UpdateConfig,
        stats: Arc<AgentStats>,
        nudge: Arc<Notify>,
    ) -> Result<Updater, UpdateError> {
        let dir = state_dir.join("update");
        std::fs::create_dir_all(&dir).map_err(local)?;
        let meta = dir.join("tuf");
        if !meta.join("root.json").exists()
            && let Some(root) = &config.trust_root
        {
            tuf::init(&meta, root).map_err(local)?;
        }
        let persisted: Persisted = match std::fs::read(dir.join("state.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the update state is unreadable; starting afresh");
                Persisted::default()
            }),
            Err(_) => Persisted::default(),
        };
        let boot = config.installer.boot().map_err(local)?;
        let running_sha = match &boot.running {
            Some((_, path)) => Some(download::sha256_file(path).map_err(local)?),
            None => None,
        };
        let floor = SecurityFloor::in_dir(state_dir);
        let connects_at_boot = stats.connects.load(Ordering::Relaxed);
        let mut updater = Updater {
            state_dir: state_dir.to_owned(),
            key,
            config,
            floor,
            persisted,
            boot,
            running_sha,
            stats,
            connects_at_boot,
            nudge,
            next_check: Duration::from_secs(3600),
        };
        updater.after_boot()?;
        Ok(updater)
    }

    /// The directory of update state.
    fn dir(&self) -> PathBuf {
        self.state_dir.join("update")
    }

    fn save(&self) -> Result<(), UpdateError> {
        let bytes = serde_json::to_vec(&self.persisted).map_err(local)?;
        hearth_fsutil::write_atomic(&self.dir().join("state.json"), &bytes, 0o600).map_err(local)
    }

    fn report(&mut self, rollout: &str, state: UpdateStep, detail: impl Into<String>) -> Result<(), UpdateError> {
        let mut detail: String = detail.into();
        detail.retain(|c| !c.is_control());
        // At a character boundary: text from TUF errors or a health command may be any UTF-8.
        let mut end = detail.len().min(hearth_proto::update::MAX_DETAIL);
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        tracing::info!(rollout, step = state.as_str(), %detail, "update step");
        self.persisted.reports.push(StepReport { rollout: rollout.into(), state, detail });
        let excess = self.persisted.reports.len().saturating_sub(hearth_proto::update::MAX_STEPS);
        self.persisted.reports.drain(..excess);
        self.save()
    }

    /// What the boot means for the job and the floor.
    fn after_boot(&mut self) -> Result<(), UpdateError> {
        let running = self.boot.running.as_ref().map(|(m, _)| m.clone());
        if let (Some(m), Some(sha)) = (&running, &self.running_sha)
            && &m.sha256 != sha
        {
            tracing::error!(slot = %m.target, "the running image does not match its slot's hash");
        }
        if let Some(gave_up) = self.boot.gave_up_on.clone()
            && let Some(job) = self.persisted.job.clone()
            && job.image.target == gave_up.target
        {
            self.persisted.job = None;
            let detail = format!(
                "{} did not come up healthy in {} boots; back on the previous image",
                gave_up.version, self.config.boot_tries
            );
            self.report(&job.rollout, UpdateStep::RolledBack, detail)?;
        }
        if !self.boot.trial
            && let Some(m) = &running
            && self.running_sha.as_ref() == Some(&m.sha256)
        {
            // A committed image: the floor rises to it (also after a power cut between commit and this).
            self.floor.raise(m.security_version).map_err(local)?;
        }
        if let Some(job) = self.persisted.job.clone()
            && job.phase == Phase::Switched
            && !(self.boot.trial && running.as_ref().is_some_and(|m| m.target == job.image.target))
        {
            self.persisted.job = None;
            if running.as_ref().is_some_and(|m| m.target == job.image.target) {
                // Committed, and the power went before the report was kept: it runs the release.
                self.report(&job.rollout, UpdateStep::Succeeded, format!("running {}", job.image.version))?;
            } else {
                let detail = format!("the device did not boot {} after switching", job.image.version);
                self.report(&job.rollout, UpdateStep::Failed, detail)?;
            }
        }
        self.save()
    }

    /// The facts the check-in reports.
    fn check_in_body(&self) -> Result<CheckIn, UpdateError> {
        Ok(CheckIn {
            hardware: self.config.hardware.clone(),
            security_floor: self.floor.get().map_err(local)?,
            image: self.running_sha.clone().map(|sha256| InstalledImage {
                version: self.boot.running.as_ref().map(|(m, _)| m.version.clone()),
                sha256,
            }),
            steps: self.persisted.reports.clone(),
        })
    }

    /// A client with this device's current certificate (read again each time: the agent renews it).
    fn client(&self) -> Result<(reqwest::Client, String), UpdateError> {
        let identity = enrol::load(&self.state_dir, self.key.clone()).map_err(local)?;
        let tls = identity.tls_config().map_err(local)?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(15))
            .build()
            .map_err(local)?;
        Ok((client, identity.hub.hub_url.trim_end_matches('/').to_owned()))
    }

    /// Checks in; on success the delivered reports are dropped.
    async fn check_in(&mut self) -> Result<CheckInAnswer, UpdateError> {
        let body = self.check_in_body()?;
        let sent = body.steps.len();
        let (client, base) = self.client()?;
        let net = |e: reqwest::Error| UpdateError::Network(e.to_string());
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            client.post(format!("{base}/api/v1/device/update")).json(&body).send(),
        )
        .await
        .map_err(|_| UpdateError::Network("check-in: no answer in 30 s".into()))?
        .map_err(net)?;
        if !answer.status().is_success() {
            return Err(UpdateError::Network(format!("check-in: HTTP {}", answer.status())));
        }
        let answer: CheckInAnswer = answer.json().await.map_err(net)?;
        self.persisted.reports.drain(..sent.min(self.persisted.reports.len()));
        self.save()?;
        Ok(answer)
    }

    /// Runs until `stop`, or until the device must restart.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<UpdaterEnd, UpdateError> {
        if self.boot.trial {
            match self.health_check(&mut stop).await? {
                Some(end) => return Ok(end),
                None if *stop.borrow() => return Ok(UpdaterEnd::Stop),
                None => {}
            }
        }
        let mut retry = Duration::from_secs(2);
        loop {
            if *stop.borrow() {
                return Ok(UpdaterEnd::Stop);
            }
            let wait = match self.step().await {
                Ok(Some(end)) => return Ok(end),
                Ok(None) => {
                    retry = Duration::from_secs(2);
                    self.next_check
                }
                Err(UpdateError::Network(e)) => {
                    tracing::warn!(error = %e, retry_in = ?retry, "update check failed");
                    let wait = retry;
                    retry = (retry * 2).min(Duration::from_secs(300));
                    wait
                }
                Err(e) => return Err(e),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.nudge.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }
}

impl Updater {
    /// One round: check in, then carry a job forward. `Some` when the device must restart.
    async fn step(&mut self) -> Result<Option<UpdaterEnd>, UpdateError> {
        let answer = self.check_in().await?;
        let hub_says = Duration::from_secs(answer.check_after_seconds.max(60));
        self.next_check = self.config.max_check_interval.map_or(hub_says, |m| m.min(hub_says));
        // A job still downloading goes on only while the hub still wants this release here: an aborted, paused or
        // replaced rollout stops it before anything is installed (a partial download is kept, so a resumed
        // rollout continues it). Once installing, the job is finished: the installer may already have switched
        // the bootloader before the phase was saved, and a job dropped then would leave a trial nobody judges.
        if let Some(job) = &self.persisted.job
            && job.phase == Phase::Downloading
            && answer.goal.as_ref().is_none_or(|g| g.rollout != job.rollout || g.target != job.image.target)
        {
            tracing::info!(rollout = %job.rollout, release = %job.image.target,
                "the hub no longer asks for this release (rollout paused, aborted or replaced): not installing it");
            self.persisted.job = None;
            self.save()?;
        }
        if self.persisted.job.is_none()
            && let Some(goal) = answer.goal
        {
            let running = self.boot.running.as_ref().map(|(m, _)| m.target.clone());
            if running.as_deref() != Some(goal.target.as_str()) {
                self.start_job(&goal.rollout, &goal.target).await?;
            } else if !self.boot.trial {
                // Already running it (a rollout made after the device updated another way): done, say so.
                self.report(&goal.rollout, UpdateStep::Succeeded, "already running this release")?;
                let _ = self.check_in().await;
            }
        }
        if self.persisted.job.is_some() {
            return self.execute().await;
        }
        Ok(None)
    }

    /// Decides on the goal's release from the signed metadata: refused (reported as failed) or a new job.
    async fn start_job(&mut self, rollout: &str, target: &str) -> Result<(), UpdateError> {
        let (client, base) = self.client()?;
        let fetcher = tuf::Fetcher::new(client);
        let meta = self.dir().join("tuf");
        let repository =
            match tuf::refresh(&fetcher, &meta, &format!("{base}/tuf"), Some(&format!("{base}/tuf/targets"))).await {
                Ok(r) => r,
                // The network, or metadata that is stale or older than what the device trusts (a hub whose timestamp
                // lapsed, a clock that stepped, a replay): refused now, tried again later; the release is not failed.
                Err(tuf::TufError::Tuf(e)) if is_transient(&e) => return Err(UpdateError::Network(e.to_string())),
                Err(e) => {
                    // The trusted metadata is unchanged; the release cannot be verified.
                    return self.report(rollout, UpdateStep::Failed, format!("refused by TUF: {e}"));
                }
            };
        let info = match tuf::release_info(&repository, target) {
            Ok(info) => info,
            Err(e) => return self.report(rollout, UpdateStep::Failed, format!("{e}")),
        };
        let identity = enrol::load(&self.state_dir, self.key.clone()).map_err(local)?;
        let facts = DeviceFacts {
            model: identity.hub.model.clone(),
            hardware: self.config.hardware.clone(),
            security_floor: self.floor.get().map_err(local)?,
            installed_version: self.boot.running.as_ref().map(|(m, _)| m.version.clone()),
        };
        if let Err(refusal) = may_install(&info, &facts) {
            return self.report(rollout, UpdateStep::Failed, format!("not installed: {refusal}"));
        }
        let name = tough::TargetName::new(target).map_err(local)?;
        let signed = repository.targets().signed.targets.get(&name).ok_or_else(|| local("target vanished"))?;
        let sha256: String = signed.hashes.sha256.iter().map(|b| format!("{b:02x}")).collect();
        let image = SlotImage {
            target: target.into(),
            version: info.version.clone(),
            security_version: info.security_version,
            sha256,
        };
        // Partial downloads of other images (a job given up) are not needed any more.
        if let Ok(entries) = std::fs::read_dir(self.dir().join("download")) {
            let keep = format!("{}.part", image.sha256);
            for e in entries.flatten().filter(|e| e.file_name().to_str() != Some(keep.as_str())) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        self.persisted.job = Some(Job {
            rollout: rollout.into(),
            image,
            length: signed.length,
            phase: Phase::Downloading,
            bad_downloads: 0,
        });
        self.save()
    }

    /// Carries the job forward: download, verify, install, switch; `Some` to restart into it.
    async fn execute(&mut self) -> Result<Option<UpdaterEnd>, UpdateError> {
        let Some(job) = self.persisted.job.clone() else { return Ok(None) };
        let part = self.dir().join("download").join(format!("{}.part", job.image.sha256));
        if job.phase == Phase::Downloading {
            self.report(
                &job.rollout,
                UpdateStep::Downloading,
                format!("{} ({} bytes)", job.image.version, job.length),
            )?;
            let (client, base) = self.client()?;
            let url = format!("{base}/tuf/targets/{}.{}", job.image.sha256, job.image.target);
            let fetched = std::sync::atomic::AtomicU64::new(0);
            let got =
                download::resumable(&client, &url, &part, job.length, &job.image.sha256, tuf::IDLE_TIMEOUT, &fetched);
            match got.await {
                Ok(()) => tracing::info!(bytes = fetched.load(Ordering::Relaxed), "image downloaded and verified"),
                Err(download::DownloadError::Network(e)) => return Err(UpdateError::Network(e)),
                Err(e @ download::DownloadError::HashMismatch { .. }) if job.bad_downloads < 2 => {
                    // The file is gone; fetch it again from the start (a corrupted cache or transfer), a few times.
                    if let Some(j) = self.persisted.job.as_mut() {
                        j.bad_downloads += 1;
                    }
                    self.save()?;
                    return Err(UpdateError::Network(e.to_string()));
                }
                Err(e) => {
                    self.persisted.job = None;
                    self.report(&job.rollout, UpdateStep::Failed, format!("download: {e}"))?;
                    return Ok(None);
                }
            }
            // The download may have taken long: ask once more before installing (offline, it goes on).
            if let Ok(answer) = self.check_in().await
                && answer.goal.as_ref().is_none_or(|g| g.rollout != job.rollout || g.target != job.image.target)
            {
                tracing::info!(rollout = %job.rollout, "the rollout stopped while the image downloaded: not installing");
                self.persisted.job = None;
                self.save()?;
                return Ok(None);
            }
            self.set_phase(Phase::Installing)?;
        }
        if matches!(self.persisted.job.as_ref().map(|j| j.phase), Some(Phase::Installing)) {
            self.report(&job.rollout, UpdateStep::Installing, job.image.version.clone())?;
            // The file is checked again: a power cut may have come between the download and now.
            let verified = download::sha256_file(&part).map_err(local)? == job.image.sha256;
            if !verified {
                let _ = std::fs::remove_file(&part);
                self.set_phase(Phase::Downloading)?;
                return Err(UpdateError::Network("the downloaded image no longer verifies; fetching it again".into()));
            }
            let installer = self.config.installer.clone();
            let (image, tries) = (job.image.clone(), self.config.boot_tries);
            let part2 = part.clone();
            tokio::task::spawn_blocking(move || {
                installer.install(&part2, &image)?;
                installer.switch(tries)
            })
            .await
            .map_err(local)?
            .map_err(local)?;
            self.set_phase(Phase::Switched)?;
            let _ = std::fs::remove_file(&part);
            self.report(&job.rollout, UpdateStep::Rebooting, format!("restarting into {}", job.image.version))?;
            // Best effort: the report is kept and sent after the restart if this fails.
            let _ = self.check_in().await;
            let restart_here = self.config.installer.reboot().map_err(local)?;
            return Ok(Some(if restart_here { UpdaterEnd::Reboot } else { UpdaterEnd::Stop }));
        }
        Ok(None)
    }

    fn set_phase(&mut self, phase: Phase) -> Result<(), UpdateError> {
        if let Some(job) = self.persisted.job.as_mut() {
            job.phase = phase;
        }
        self.save()
    }

    /// A trial boot: healthy when the agent is back in contact with the hub (an MQTT session and a check-in)
    /// and the health command passes, within the health timeout. Healthy: commit, raise the floor, report.
    /// Not: reject and restart into the previous image. `Some` to restart.
    async fn health_check(&mut self, stop: &mut watch::Receiver<bool>) -> Result<Option<UpdaterEnd>, UpdateError> {
        let deadline = tokio::time::Instant::now() + self.config.health_timeout;
        let running = self.boot.running.clone();
        let verdict = loop {
            if *stop.borrow() {
                return Ok(None);
            }
            if tokio::time::Instant::now() >= deadline {
                break Err(format!("no contact with the hub within {:?}", self.config.health_timeout));
            }
            if self.stats.connects.load(Ordering::Relaxed) > self.connects_at_boot && self.check_in().await.is_ok() {
                break match (&self.config.health_command, &running) {
                    (Some(cmd), Some((_, image))) => run_health_command(cmd, image).await,
                    _ => Ok(()),
                };
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => {}
            }
        };
        let job = self.persisted.job.take();
        let rollout = job.as_ref().map(|j| j.rollout.clone());
        let version = running.as_ref().map(|(m, _)| m.version.clone()).unwrap_or_default();
        match verdict {
            Ok(()) => {
                self.config.installer.commit().map_err(local)?;
                if let Some((m, _)) = &running {
                    self.floor.raise(m.security_version).map_err(local)?;
                }
                self.boot.trial = false;
                match rollout {
                    Some(r) => self.report(&r, UpdateStep::Succeeded, format!("running {version}"))?,
                    None => self.save()?,
                }
                let _ = self.check_in().await;
                Ok(None)
            }
            Err(why) => {
                self.config.installer.reject().map_err(local)?;
                match rollout {
                    Some(r) => {
                        self.report(&r, UpdateStep::RolledBack, format!("{version} failed its health check: {why}"))?
                    }
                    None => self.save()?,
                }
                tracing::warn!(%why, "the new image is not healthy; going back to the previous one");
                let restart_here = self.config.installer.reboot().map_err(local)?;
                Ok(Some(if restart_here { UpdaterEnd::Reboot } else { UpdaterEnd::Stop }))
            }
        }
    }
}

/// Whether a TUF error may pass by itself (try again later) rather than refuse the release.
fn is_transient(e: &tough::error::Error) -> bool {
    matches!(
        e,
        tough::error::Error::Transport { .. }
            | tough::error::Error::ExpiredMetadata { .. }
            | tough::error::Error::OlderMetadata { .. }
    )
}

async fn run_health_command(cmd: &Path, image: &Path) -> Result<(), String> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(cmd).env("HEARTH_IMAGE", image).kill_on_drop(true).output(),
    )
    .await
    .map_err(|_| "the health command did not finish in 60 s".to_string())?
    .map_err(|e| format!("the health command did not run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("the health command said {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}
