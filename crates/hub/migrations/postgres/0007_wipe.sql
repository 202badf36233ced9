-- Unclaim and transfer (issue 8): a released device is sent a wipe command and cannot be claimed again until the
-- device confirms it erased its user data.
ALTER TABLE devices ADD COLUMN wipe_command_id TEXT;
ALTER TABLE devices ADD COLUMN wiped_at BIGINT;
