-- Commands keep the time of their first delivery and count every delivery (a command is sent again on each
-- SUBSCRIBE until it is answered; devices de-duplicate by command id).
ALTER TABLE commands ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 0;
UPDATE commands SET deliveries = 1 WHERE sent_at IS NOT NULL;
