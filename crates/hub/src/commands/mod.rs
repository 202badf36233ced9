//! Commands to devices: recorded first (so nothing is lost if the device is offline or the hub restarts), sent
//! when the device is connected and subscribed, answered by the device's acknowledgement, or timed out at expiry.
//! A new command is announced on the bus, so the node that holds the device's connection sends it, whichever
//! node's API took it.

use std::time::Duration;

use hearth_proto::command::{Command, CommandAck, validate_command_name};
use hearth_proto::uplink::Fields;
use hearth_proto::{DeviceId, ValidationError};

use crate::bus::{Bus, Notice};
use crate::clock::Clock;
use crate::routing::Downlink;
use crate::secrets::random_base32;
use crate::store::{CommandRow, CommandStatus, DeviceStatus, NewCommand, Release, Store, StoreError};

/// The command a released device gets: erase user data and settings, and confirm.
pub const WIPE: &str = "wipe";

/// Longest command timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a command was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No such device.
    #[error("no such device")]
    UnknownDevice,
    /// The device is revoked or not enrolled.
    #[error("the device is {0}; commands go only to enrolled devices")]
    NotEnrolled(DeviceStatus),
    /// Bad name, arguments or timeout.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The commands capability.
#[derive(Debug, Clone)]
pub struct Commands {
    store: Store,
    bus: Bus,
    clock: Clock,
}

impl Commands {
    /// Builds the capability.
    pub fn new(store: Store, bus: Bus, clock: Clock) -> Self {
        Commands { store, bus, clock }
    }

    /// Records a command and, if the device is connected, sends it now.
    pub async fn send(
        &self,
        device: &DeviceId,
        name: &str,
        args: Fields,
        timeout: Duration,
    ) -> Result<CommandRow, CommandError> {
        if name == WIPE {
            return Err(ValidationError::Schema {
                what: "name",
                detail: "`wipe` is sent by releasing the device (POST /api/v1/devices/{id}/unclaim)".into(),
            }
            .into());
        }
        let new = self.prepare(device, name, args, timeout).await?;
        self.store.insert_command(&new).await?;
        self.announce(device, &new.id).await;
        self.store.command(device.as_str(), &new.id).await?.ok_or(CommandError::UnknownDevice)
    }

    /// Releases a claimed device (unclaim, or the first half of a transfer): it is no longer its owner's, and
    /// if it is enrolled it is sent a `wipe` command, recorded in the same transaction; nobody can claim it until
    /// it confirms the wipe (the agent erases its user data and settings). The wipe command's id, if one was
    /// sent; `Ok(None)` for a device that never enrolled or is revoked (nothing to wipe, or nobody can reach it).
    /// [`CommandError::UnknownDevice`] if `by` may not release it or it is not claimed.
    pub async fn release(&self, device: &DeviceId, by: Release<'_>) -> Result<Option<String>, CommandError> {
        let row = self.store.device(device.as_str()).await?.ok_or(CommandError::UnknownDevice)?;
        let wipe = match row.status {
            DeviceStatus::Enrolled => Some(self.prepare(device, WIPE, Fields::new(), MAX_TIMEOUT).await?),
            _ => None,
        };
        if !self.store.release_device(device.as_str(), by, wipe.as_ref()).await? {
            return Err(CommandError::UnknownDevice);
        }
        let Some(wipe) = wipe else { return Ok(None) };
        self.announce(device, &wipe.id).await;
        Ok(Some(wipe.id))
    }

    /// Checks a command and gives it an id, for the device as it is now (it must be enrolled).
    async fn prepare(
        &self,
        device: &DeviceId,
        name: &str,
        args: Fields,
        timeout: Duration,
    ) -> Result<NewCommand, CommandError> {
        validate_command_name(name)?;
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(ValidationError::OutOfRange {
                field: "timeout_secs",
                detail: format!("1 to {}", MAX_TIMEOUT.as_secs()),
            }
            .into());
        }
        let args_json = serde_json::to_string(&args)
            .map_err(|e| ValidationError::Schema { what: "args", detail: e.to_string() })?;
        if args_json.len() > hearth_proto::limits::MAX_COMMAND_PAYLOAD / 2 {
            return Err(ValidationError::TooLong {
                what: "args",
                len: args_json.len(),
                max: hearth_proto::limits::MAX_COMMAND_PAYLOAD / 2,
            }
            .into());
        }
        let row = self.store.device(device.as_str()).await?.ok_or(CommandError::UnknownDevice)?;
        if row.status != DeviceStatus::Enrolled {
            return Err(CommandError::NotEnrolled(row.status));
        }
        let now = self.clock.now_ms();
        let id = format!("c{}", random_base32(15).map_err(|e| StoreError::Random(e.to_string()))?);
        Ok(NewCommand {
            id,
            device_id: device.to_string(),
            name: name.to_owned(),
            args_json,
            created_at: now,
            expires_at: now + timeout.as_millis() as i64,
        })
    }

    /// Tells the node that holds the device's connection to send the command now.
    async fn announce(&self, device: &DeviceId, id: &str) {
        let notice = Notice::Downlink { device: device.clone(), downlink: Downlink::Command { id: id.to_owned() } };
        if let Err(e) = self.bus.publish(notice).await {
            // Recorded all the same: the device gets it when it next subscribes.
            tracing::warn!(error = %e, command = %id, "could not announce a command to other nodes");
        }
    }

    /// One command.
    pub async fn get(&self, device: &DeviceId, id: &str) -> Result<Option<CommandRow>, StoreError> {
        self.store.command(device.as_str(), id).await
    }

    /// A command to send now because a notice announced it: recorded for this device, not yet sent and
    /// unexpired (`None` otherwise: a notice that arrives late, twice or forged sends nothing; a command already
    /// sent goes again only with the open commands at the next subscribe).
    pub async fn deliverable(&self, device: &DeviceId, id: &str) -> Result<Option<Command>, StoreError> {
        let now = self.clock.now_ms();
        Ok(self
            .store
            .command(device.as_str(), id)
            .await?
            .filter(|c| c.status == CommandStatus::Pending && c.expires_at > now)
            .map(|c| to_command(&c)))
    }

    /// Commands waiting for delivery or an answer.
    pub async fn open_for(&self, device: &DeviceId) -> Result<Vec<CommandRow>, StoreError> {
        self.store.open_commands(device.as_str(), self.clock.now_ms()).await
    }

    /// Records that a command went out.
    pub async fn mark_sent(&self, id: &str) -> Result<(), StoreError> {
        self.store.mark_command_sent(id, self.clock.now_ms()).await
    }

    /// Records a device's answer; false if it answers nothing open.
    /// An `ok` answer to the device's outstanding wipe command records the wipe, so the device may be claimed
    /// again (audited in the same transaction).
    pub async fn answer(&self, device: &DeviceId, ack: &CommandAck) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let status = CommandStatus::from(ack.status);
        // The wipe first: if the hub stops between the two writes, the answer comes again with the redelivered
        // command and is recorded then; the other order could leave a confirmed wipe unrecorded for ever.
        let wiped = status == CommandStatus::Ok && self.store.confirm_wipe(device.as_str(), &ack.id, now).await?;
        let answered = self.store.answer_command(device.as_str(), &ack.id, status, ack.detail.as_deref(), now).await?;
        if wiped {
            // Audited by `confirm_wipe`, in its transaction.
            tracing::info!(device = %device, command = %ack.id, "the device confirmed it erased its user data");
        }
        Ok(answered)
    }

    /// Runs the expiry sweep every second until the task is dropped.
    pub fn spawn_expiry(&self) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        let clock = self.clock.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                match store.expire_commands(clock.now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(count = n, "commands timed out"),
                    Err(e) => tracing::warn!(error = %e, "command expiry sweep failed"),
                }
            }
        })
    }
}

/// A stored command as the device receives it.
pub fn to_command(row: &CommandRow) -> Command {
    let args: Fields = serde_json::from_str(&row.args_json).unwrap_or_default();
    Command {
        v: 1,
        id: row.id.clone(),
        name: row.name.clone(),
        args,
        expires_at: u64::try_from(row.expires_at).unwrap_or(0),
    }
}
