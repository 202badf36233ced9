-- Claiming (issue 8): a consumer account owns the devices it claimed with their claim codes.
ALTER TABLE devices ADD COLUMN owner_account_id TEXT REFERENCES accounts(id);
ALTER TABLE devices ADD COLUMN claimed_at BIGINT;
CREATE INDEX devices_owner ON devices (owner_account_id);
