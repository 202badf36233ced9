//! Rollouts: a release goes to a model's devices in waves (a canary, then growing shares). A wave opens only when
//! enough of the devices told so far succeeded (the success gate), within the rollout's schedule and daily
//! window; when too many of them failed or rolled back, the rollout pauses by itself (the failure gate). Operators
//! pause, resume and abort. Devices learn their goal at check-in, and are told over MQTT (an `update_check`
//! command, delivered by whichever node holds the connection) when their wave opens.
//!
//! Every node runs the engine; each decision is a conditional update in the store (open wave N only while N-1 is
//! the highest open; pause only a running rollout), so two nodes deciding at once change it once.

use std::time::Duration;

use aws_lc_rs::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

use hearth_proto::DeviceId;
use hearth_proto::release::ReleaseKind;

use super::{Result, UpdateError, Updates, refused};
use crate::store::{RolloutRow, WaveCount};

/// How long the `update_check` command waits for a device that is offline.
pub const NOTICE_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// A rollout as an operator asks for it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutPlan {
    /// The release (its image's target name).
    pub release: String,
    /// Devices in the first wave (the canary), at least 1.
    #[serde(default = "default_canary")]
    #[schema(minimum = 1, maximum = 1000)]
    pub canary: u32,
    /// The later waves, as cumulative shares of the model's devices in percent, rising, the last 100.
    #[serde(default = "default_percents")]
    pub percents: Vec<u8>,
    /// Share of told devices that must have succeeded before the next wave opens, percent.
    #[serde(default = "default_success")]
    #[schema(minimum = 1, maximum = 100)]
    pub success_percent: u8,
    /// Share of told devices that failed or rolled back at which the rollout pauses itself, percent.
    #[serde(default = "default_failure")]
    #[schema(minimum = 1, maximum = 100)]
    pub pause_failure_percent: u8,
    /// No wave opens before this time, Unix ms (default: now).
    #[serde(default)]
    pub starts_at: Option<i64>,
    /// Waves open only from this minute of the day, UTC (with `window_end`).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1439)]
    pub window_start: Option<u16>,
    /// …until this minute of the day, UTC (may be before `window_start`: the window spans midnight).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1439)]
    pub window_end: Option<u16>,
}

fn default_canary() -> u32 {
    1
}
fn default_percents() -> Vec<u8> {
    vec![10, 50, 100]
}
fn default_success() -> u8 {
    90
}
fn default_failure() -> u8 {
    20
}

/// A rollout with its progress.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RolloutView {
    /// Its id.
    pub id: String,
    /// The release.
    pub release: String,
    /// The model.
    pub model: String,
    /// running, paused, aborted or completed.
    pub state: String,
    /// Why it is paused, aborted or completed.
    pub reason: String,
    /// How many waves.
    pub waves: i64,
    /// The highest wave opened (-1: none yet).
    pub wave: i64,
    /// Success gate, percent.
    pub success_percent: i64,
    /// Failure gate, percent.
    pub pause_failure_percent: i64,
    /// Starts at, Unix ms.
    pub starts_at: i64,
    /// Daily window start (minutes, UTC).
    pub window_start: Option<i64>,
    /// Daily window end (minutes, UTC).
    pub window_end: Option<i64>,
    /// Devices in it.
    pub devices: i64,
    /// Devices by state.
    pub counts: std::collections::BTreeMap<String, i64>,
    /// Created, Unix ms.
    pub created_at: i64,
}

/// A device's software as its owner sees it: what it runs, its model's support period, and the update waiting
/// for it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceUpdateView {
    /// The version it last said it runs (none before its first check-in).
    pub installed_version: Option<String>,
    /// That image's SHA-256, hex.
    pub installed_sha256: Option<String>,
    /// Its security-version floor: it never installs a release below it.
    pub security_floor: Option<i64>,
    /// Its last check-in, Unix ms.
    pub checked_in_at: Option<i64>,
    /// Security updates for its model until, Unix ms, if the maker said.
    pub support_until: Option<i64>,
    /// The maker's support policy in plain words.
    pub support_policy: Option<String>,
    /// The update waiting for it, if any.
    pub pending: Option<PendingUpdate>,
}

/// An update a device has been told to install and has not finished.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PendingUpdate {
    /// The rollout.
    pub rollout: String,
    /// The release's target name.
    pub release: String,
    /// The release's version.
    pub version: String,
    /// security or feature.
    pub kind: String,
    /// What risk it fixes, in plain words.
    pub fixes: String,
    /// Release notes.
    pub notes: String,
    /// The device restarts while installing.
    pub restarts: bool,
    /// About how long the device does not do its job, seconds.
    pub disruption_seconds: u32,
    /// The device's step: waiting, notified, downloading, installing, …
    pub state: String,
    /// Postponed until, Unix ms.
    pub postponed_until: Option<i64>,
    /// How many more times it may be postponed (0 once it has started installing).
    pub postpones_left: u32,
    /// A security update is installed by then at the latest, Unix ms.
    pub deadline: Option<i64>,
    /// The rollout is paused: nothing starts until an operator resumes it.
    pub rollout_paused: bool,
}

/// What the engine decided for one rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing now.
    Wait,
    /// Open the next wave.
    Open,
    /// Pause: too many failures.
    Pause(String),
    /// Every device has finished.
    Complete,
}

/// Decides what to do with a running rollout, from its devices' states per wave, at `now`.
pub fn decide(r: &RolloutRow, counts: &[WaveCount], now: i64) -> Decision {
    let opened = |c: &&WaveCount| c.wave <= r.wave;
    let told: i64 = counts.iter().filter(opened).map(|c| c.count).sum();
    let of = |states: &[&str]| -> i64 {
        counts.iter().filter(opened).filter(|c| states.contains(&c.state.as_str())).map(|c| c.count).sum()
    };
    let succeeded = of(&["succeeded"]);
    let failed = of(&["rolled_back", "failed"]);
    let counted = failed - r.accepted_failures;
    if told > 0 && counted > 0 && counted * 100 >= r.pause_failure_percent * told {
        return Decision::Pause(format!(
            "health gate: {counted} of {told} devices told failed or rolled back (the limit is {}%)",
            r.pause_failure_percent
        ));
    }
    let total: i64 = counts.iter().map(|c| c.count).sum();
    if r.wave + 1 >= r.waves {
        return if succeeded + failed >= total { Decision::Complete } else { Decision::Wait };
    }
    // Failures accepted by resuming count as neither success nor failure.
    let gate_passed = r.wave < 0 || succeeded * 100 >= r.success_percent * (told - r.accepted_failures);
    if gate_passed && now >= r.starts_at && in_window(r, now) { Decision::Open } else { Decision::Wait }
}

/// Whether `now` is inside the rollout's daily window (always, without one).
fn in_window(r: &RolloutRow, now: i64) -> bool {
    let (Some(start), Some(end)) = (r.window_start, r.window_end) else { return true };
    let minute = now.rem_euclid(86_400_000) / 60_000;
    if start <= end { (start..end).contains(&minute) } else { minute >= start || minute < end }
}

/// Assigns each device its wave: a canary, then cumulative shares. The order is a hash of the rollout id and the
/// device id: fixed for a rollout, different between rollouts, and not chosen by anyone.
pub fn assign_waves(rollout: &str, devices: &[DeviceId], canary: u32, percents: &[u8]) -> Vec<(DeviceId, i64)> {
    let mut order: Vec<(Vec<u8>, &DeviceId)> =
        devices.iter().map(|d| (digest(&SHA256, format!("{rollout}/{d}").as_bytes()).as_ref().to_vec(), d)).collect();
    order.sort();
    let n = devices.len();
    let mut cut_offs = vec![(canary as usize).min(n)];
    for p in percents {
        let upto = (n * usize::from(*p)).div_ceil(100).max(*cut_offs.last().unwrap_or(&0));
        if upto > *cut_offs.last().unwrap_or(&0) {
            cut_offs.push(upto);
        }
    }
    order
        .into_iter()
        .enumerate()
        .map(|(i, (_, d))| (d.clone(), cut_offs.iter().position(|c| i < *c).unwrap_or(cut_offs.len() - 1) as i64))
        .collect()
}

impl Updates {
    /// Creates a rollout of a published release to every enrolled device of its model. Refused while another
    /// rollout of that model runs or is paused.
    pub async fn create_rollout(&self, plan: &RolloutPlan, created_by: &str) -> Result<RolloutView> {
        let store = &self.inner.store;
        let release = store
            .release(&plan.release)
            .await?
            .ok_or_else(|| UpdateError::NotFound(format!("no published release {}", plan.release)))?;
        if plan.canary == 0 || plan.canary > 1000 {
            return Err(refused("canary: 1 to 1000 devices"));
        }
        if plan.percents.is_empty()
            || plan.percents.windows(2).any(|w| w[0] >= w[1])
            || plan.percents.last() != Some(&100)
            || plan.percents.len() > 20
        {
            return Err(refused("percents: up to 20 rising shares, the last 100"));
        }
        for (what, v) in
            [("success_percent", plan.success_percent), ("pause_failure_percent", plan.pause_failure_percent)]
        {
            if !(1..=100).contains(&v) {
                return Err(refused(format!("{what}: 1 to 100")));
            }
        }
        let window = match (plan.window_start, plan.window_end) {
            (None, None) => (None, None),
            (Some(s), Some(e)) if s < 1440 && e < 1440 && s != e => (Some(i64::from(s)), Some(i64::from(e))),
            _ => return Err(refused("window_start and window_end: both or neither, minutes 0 to 1439, not equal")),
        };
        let devices = store.rollout_candidates(&release.model).await?;
        if devices.is_empty() {
            return Err(UpdateError::Conflict(format!("no enrolled device of model {} to update", release.model)));
        }
        let id = format!("r{}", crate::secrets::random_base32(15).map_err(super::internal)?);
        let waves = assign_waves(&id, &devices, plan.canary, &plan.percents);
        let now = self.inner.clock.now_ms();
        let row = RolloutRow {
            id: id.clone(),
            release: release.target_name.clone(),
            model: release.model.clone(),
            state: "running".into(),
            waves: waves.iter().map(|(_, w)| *w).max().unwrap_or(0) + 1,
            wave: -1,
            success_percent: i64::from(plan.success_percent),
            pause_failure_percent: i64::from(plan.pause_failure_percent),
            accepted_failures: 0,
            starts_at: plan.starts_at.unwrap_or(now),
            window_start: window.0,
            window_end: window.1,
            reason: String::new(),
            created_by: created_by.to_owned(),
            created_at: now,
            updated_at: now,
        };
        if !store.create_rollout(&row, &waves).await? {
            return Err(UpdateError::Conflict(format!(
                "a rollout of model {} is running or paused: abort it first",
                release.model
            )));
        }
        tracing::info!(rollout = %id, release = %release.target_name, devices = devices.len(), "rollout created");
        self.step_rollout(&id).await?;
        self.rollout_view(&id).await?.ok_or_else(|| super::internal("the rollout vanished"))
    }

    /// A rollout with its progress.
    pub async fn rollout_view(&self, id: &str) -> Result<Option<RolloutView>> {
        let Some(r) = self.inner.store.rollout(id).await? else { return Ok(None) };
        let counts = self.inner.store.rollout_counts(id).await?;
        Ok(Some(view(r, &counts)))
    }

    /// The newest `limit` rollouts, newest first.
    pub async fn rollout_views(&self, limit: usize) -> Result<Vec<RolloutView>> {
        let mut out = Vec::new();
        for r in self.inner.store.rollouts(None).await?.into_iter().take(limit) {
            let counts = self.inner.store.rollout_counts(&r.id).await?;
            out.push(view(r, &counts));
        }
        Ok(out)
    }

    /// Pauses, resumes or aborts a rollout by hand.
    pub async fn control_rollout(&self, id: &str, action: &str, by: &str) -> Result<RolloutView> {
        let now = self.inner.clock.now_ms();
        let (from, to): (&[&str], &str) = match action {
            "pause" => (&["running"], "paused"),
            "resume" => (&["paused"], "running"),
            "abort" => (&["running", "paused"], "aborted"),
            _ => return Err(refused("action: pause, resume or abort")),
        };
        let current =
            self.inner.store.rollout(id).await?.ok_or_else(|| UpdateError::NotFound(format!("no rollout {id}")))?;
        let reason = match action {
            "pause" => format!("paused by {by}"),
            "abort" => format!("aborted by {by}"),
            _ => String::new(),
        };
        let changed = if action == "resume" {
            self.inner.store.resume_rollout(id, now).await?
        } else {
            self.inner.store.set_rollout_state(id, from, to, &reason, now).await?
        };
        if !changed {
            return Err(UpdateError::Conflict(format!("the rollout is {}; it cannot {action} now", current.state)));
        }
        tracing::info!(rollout = %id, action, "rollout changed by hand");
        if action == "resume" {
            self.step_rollout(id).await?;
        }
        self.rollout_view(id).await?.ok_or_else(|| super::internal("the rollout vanished"))
    }

    /// One engine step for one rollout: open a wave, pause, or complete, as [`decide`] says.
    pub async fn step_rollout(&self, id: &str) -> Result<()> {
        let store = &self.inner.store;
        let Some(r) = store.rollout(id).await? else { return Ok(()) };
        if r.state != "running" {
            return Ok(());
        }
        let counts = store.rollout_counts(id).await?;
        let now = self.inner.clock.now_ms();
        match decide(&r, &counts, now) {
            Decision::Wait => {}
            Decision::Pause(reason) => {
                if store.set_rollout_state(id, &["running"], "paused", &reason, now).await? {
                    tracing::warn!(rollout = %id, %reason, "rollout paused by its health gate");
                }
            }
            Decision::Complete => {
                let reason = "every device finished".to_owned();
                store.set_rollout_state(id, &["running"], "completed", &reason, now).await?;
            }
            Decision::Open => {
                let told = store.open_wave(id, r.wave, now).await?;
                tracing::info!(rollout = %id, wave = r.wave + 1, devices = told.len(), "rollout wave opened");
                for device in told {
                    let args = hearth_proto::uplink::Fields::default();
                    if let Err(e) = self.inner.commands.send(&device, "update_check", args, NOTICE_VALIDITY).await {
                        tracing::warn!(device = %device, error = %e, "could not tell a device to check for its update");
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs the engine over every running rollout every `every`.
    pub fn spawn_engine(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let updates = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = updates.run_engine().await {
                    tracing::warn!(error = %e, "rollout engine step failed");
                }
            }
        })
    }

    /// One pass of the engine.
    pub async fn run_engine(&self) -> Result<()> {
        for r in self.inner.store.rollouts(Some(&["running"])).await? {
            self.step_rollout(&r.id).await?;
        }
        Ok(())
    }

    /// A device's software, support period and waiting update, for its owner.
    pub async fn device_update(&self, device: &DeviceId, model: &str) -> Result<DeviceUpdateView> {
        let store = &self.inner.store;
        let settings = &self.inner.settings;
        let software =
            store.device_software(device).await?.ok_or_else(|| UpdateError::NotFound("no such device".into()))?;
        let support = store.model_support(Some(model)).await?.into_iter().next();
        let pending = match store.pending_update(device).await? {
            None => None,
            Some(part) => {
                let rollout =
                    store.rollout(&part.rollout_id).await?.ok_or_else(|| super::internal("rollout vanished"))?;
                let release =
                    store.release(&rollout.release).await?.ok_or_else(|| super::internal("release vanished"))?;
                let info: hearth_proto::release::ReleaseInfo =
                    serde_json::from_str(&release.info_json).map_err(super::internal)?;
                let may_postpone = matches!(part.state.as_str(), "waiting" | "notified");
                let left = i64::from(settings.max_postpones).saturating_sub(part.postpones).max(0);
                Some(PendingUpdate {
                    rollout: part.rollout_id,
                    version: info.version,
                    kind: release.kind,
                    fixes: info.fixes,
                    notes: info.notes,
                    restarts: info.disruption.restarts,
                    disruption_seconds: info.disruption.seconds,
                    state: part.state,
                    postponed_until: part.postponed_until,
                    postpones_left: if may_postpone { u32::try_from(left).unwrap_or(0) } else { 0 },
                    deadline: (info.kind == ReleaseKind::Security)
                        .then(|| release.published_at.saturating_add(settings.security_deadline_ms)),
                    rollout_paused: rollout.state == "paused",
                    release: release.target_name,
                })
            }
        };
        Ok(DeviceUpdateView {
            installed_version: software.image_version,
            installed_sha256: software.image_sha256,
            security_floor: software.security_floor,
            checked_in_at: software.checked_in_at,
            support_until: support.as_ref().map(|s| s.support_until),
            support_policy: support.map(|s| s.policy),
            pending,
        })
    }

    /// A device's owner (or an operator) postpones its pending update by `days`: at most
    /// `updates.max_postpones` times, each at most `updates.max_postpone_days`, and never past the security
    /// deadline for a security release. The time it now waits until.
    pub async fn postpone(&self, device: &DeviceId, days: u32) -> Result<i64> {
        let settings = &self.inner.settings;
        let now = self.inner.clock.now_ms();
        let store = &self.inner.store;
        if days == 0 || i64::from(days) * 86_400_000 > settings.max_postpone_ms {
            return Err(refused(format!("days: 1 to {}", settings.max_postpone_ms / 86_400_000)));
        }
        let goal = store
            .device_goal(device, now)
            .await?
            .ok_or_else(|| UpdateError::Conflict("no update is waiting for this device".into()))?;
        let release = store.release(&goal.release).await?.ok_or_else(|| super::internal("release vanished"))?;
        let mut until = now + i64::from(days) * 86_400_000;
        let info: hearth_proto::release::ReleaseInfo =
            serde_json::from_str(&release.info_json).map_err(super::internal)?;
        if info.kind == ReleaseKind::Security {
            let deadline = release.published_at + settings.security_deadline_ms;
            if now >= deadline {
                return Err(UpdateError::Conflict(
                    "this security update has reached its deadline and is installed now".into(),
                ));
            }
            until = until.min(deadline);
        }
        let max = i64::from(settings.max_postpones);
        if !store.postpone_update(&goal.rollout_id, device, until, max, now).await? {
            return Err(UpdateError::Conflict(format!(
                "this update was postponed {max} times already, or has started installing"
            )));
        }
        Ok(until)
    }
}

fn view(r: RolloutRow, counts: &[WaveCount]) -> RolloutView {
    let mut by_state = std::collections::BTreeMap::new();
    for c in counts {
        *by_state.entry(c.state.clone()).or_insert(0) += c.count;
    }
    RolloutView {
        devices: counts.iter().map(|c| c.count).sum(),
        counts: by_state,
        id: r.id,
        release: r.release,
        model: r.model,
        state: r.state,
        reason: r.reason,
        waves: r.waves,
        wave: r.wave,
        success_percent: r.success_percent,
        pause_failure_percent: r.pause_failure_percent,
        starts_at: r.starts_at,
        window_start: r.window_start,
        window_end: r.window_end,
        created_at: r.created_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(wave: i64, waves: i64) -> RolloutRow {
        RolloutRow {
            id: "r1".into(),
            release: "x".into(),
            model: "m".into(),
            state: "running".into(),
            waves,
            wave,
            success_percent: 90,
            pause_failure_percent: 20,
            accepted_failures: 0,
            starts_at: 0,
            window_start: None,
            window_end: None,
            reason: String::new(),
            created_by: "a".into(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn c(wave: i64, state: &str, count: i64) -> WaveCount {
        WaveCount { wave, state: state.into(), count }
    }

    #[test]
    fn the_gates_decide_each_step() {
        let counts = [c(0, "notified", 1), c(1, "waiting", 9)];
        assert_eq!(decide(&rollout(-1, 2), &counts, 0), Decision::Open, "the canary opens at once");
        assert_eq!(decide(&rollout(0, 2), &counts, 0), Decision::Wait, "the canary has not succeeded yet");
        let ok = [c(0, "succeeded", 1), c(1, "waiting", 9)];
        assert_eq!(decide(&rollout(0, 2), &ok, 0), Decision::Open);
        let failed = [c(0, "rolled_back", 1), c(1, "waiting", 9)];
        assert!(matches!(decide(&rollout(0, 2), &failed, 0), Decision::Pause(r) if r.contains("1 of 1")));
        // Later waves: 1 failure in 10 told is below 20 %, 2 of 10 pauses.
        let some = [c(0, "succeeded", 1), c(1, "succeeded", 8), c(1, "failed", 1)];
        assert_eq!(decide(&rollout(1, 2), &some, 0), Decision::Complete, "10 of 10 finished, 10 % failed");
        let done = [c(0, "succeeded", 1), c(1, "succeeded", 9)];
        assert_eq!(decide(&rollout(1, 2), &done, 0), Decision::Complete);
        let more = [c(0, "succeeded", 1), c(1, "succeeded", 7), c(1, "failed", 2)];
        assert!(matches!(decide(&rollout(1, 2), &more, 0), Decision::Pause(_)));
        let mut resumed = rollout(0, 2);
        resumed.accepted_failures = 1;
        assert_eq!(decide(&resumed, &failed, 0), Decision::Open, "a failure accepted by resuming does not pause again");
        let mut later = rollout(-1, 2);
        later.starts_at = 1000;
        assert_eq!(decide(&later, &counts, 999), Decision::Wait, "not before its start");
        let mut window = rollout(-1, 2);
        (window.window_start, window.window_end) = (Some(120), Some(240));
        assert_eq!(decide(&window, &counts, 60 * 60_000), Decision::Wait, "01:00 is outside 02:00-04:00");
        assert_eq!(decide(&window, &counts, 3 * 60 * 60_000), Decision::Open);
        (window.window_start, window.window_end) = (Some(1380), Some(60));
        assert_eq!(decide(&window, &counts, 30 * 60_000), Decision::Open, "00:30 is inside 23:00-01:00");
    }

    #[test]
    fn waves_are_a_canary_then_cumulative_shares() {
        let devices: Vec<DeviceId> = (0..20)
            .map(|i| DeviceId::parse(&format!("dev{i:04}aaaaaaaa")).unwrap_or_else(|_| panic!("id {i}")))
            .collect();
        let waves = assign_waves("r1", &devices, 1, &[10, 50, 100]);
        let count = |w: i64| waves.iter().filter(|(_, x)| *x == w).count();
        assert_eq!((count(0), count(1), count(2), count(3)), (1, 1, 8, 10));
        let again = assign_waves("r1", &devices, 1, &[10, 50, 100]);
        assert_eq!(waves, again, "fixed for a rollout");
        let other = assign_waves("r2", &devices, 1, &[10, 50, 100]);
        assert_ne!(waves, other, "different between rollouts");
        let one = assign_waves("r1", &devices[..1], 1, &[10, 50, 100]);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].1, 0);
    }
}
