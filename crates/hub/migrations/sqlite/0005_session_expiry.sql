-- MQTT session expiry (issue 14): a session outlives its connection by its expiry interval, then ends.
-- The interval the current (or last) connection asked for, ms (0: the session ends with the connection).
ALTER TABLE devices ADD COLUMN session_expiry_ms INTEGER NOT NULL DEFAULT 0;
-- When the session of a closed connection ends, Unix ms; NULL while a connection is open (or never had one).
ALTER TABLE devices ADD COLUMN session_expires_at INTEGER;
-- Whether the last connection resumed an earlier session (what its CONNACK said as Session Present).
ALTER TABLE devices ADD COLUMN session_resumed INTEGER NOT NULL DEFAULT 0;
-- Sessions stored before expiry was kept were persistent with no known interval: they are kept as 3.1.1
-- sessions are (0xFFFFFFFF seconds, which is "never").
UPDATE devices SET session_expiry_ms = 4294967295000, session_expires_at = 4294967295000 WHERE session_subscribed <> 0;
