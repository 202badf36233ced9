-- Scale-out (issue 7): session state that a device resumes on any node.

-- Raised by every connection of a device; a node closes its session of the device when another node reports a
-- newer epoch (takeover across nodes).
ALTER TABLE devices ADD COLUMN session_epoch INTEGER NOT NULL DEFAULT 0;
-- Whether the device's persistent MQTT session holds a subscription to its command topic.
ALTER TABLE devices ADD COLUMN session_subscribed INTEGER NOT NULL DEFAULT 0;
-- Whether a connection of the device is open on some node (cleared by that connection as it ends).
ALTER TABLE devices ADD COLUMN session_open INTEGER NOT NULL DEFAULT 0;
-- The node holding that connection; it counts only while the node is alive (see `nodes`).
ALTER TABLE devices ADD COLUMN session_node TEXT;

-- Hub nodes and their heartbeats (every 5 s): a device whose node stopped beating is not connected.
CREATE TABLE nodes (
    name        TEXT PRIMARY KEY,
    started_at  INTEGER NOT NULL,
    seen_at     INTEGER NOT NULL
);
-- Revocations since a time (the periodic backstop beside the bus).
CREATE INDEX devices_by_revoked ON devices (revoked_at);
