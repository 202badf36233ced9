-- Vulnerability reports (issue 10): what anyone may send without an account, and the conversation with the
-- reporter. The reporter reaches the report through a private status link whose token is stored hashed.
CREATE TABLE vuln_reports (
    -- VR-… tracking id, shown to the reporter.
    id                 TEXT PRIMARY KEY,
    -- new, acknowledged, triaging, fixing, fixed, published, rejected.
    state              TEXT NOT NULL,
    summary            TEXT NOT NULL,
    details            TEXT NOT NULL,
    affected           TEXT NOT NULL,
    reporter_name      TEXT NOT NULL,
    reporter_email     TEXT NOT NULL,
    -- The details are an OpenPGP message to the maker's key (shown as sent, never decrypted here).
    encrypted          BOOLEAN NOT NULL,
    -- SHA-256 of the status link's token, hex.
    token_hash         TEXT NOT NULL,
    -- The proof-of-work challenge it was sent with: each is good for one report.
    challenge          TEXT NOT NULL UNIQUE,
    source             TEXT,
    created_at         BIGINT NOT NULL,
    acknowledged_at    BIGINT,
    -- The last time the reporter was told the status (a message, or a change of state).
    status_at          BIGINT NOT NULL,
    -- Marked actively exploited (the CRA clock starts here).
    exploited_at       BIGINT,
    -- First moved to fixed (the CRA's final report is due 14 days after a fix is available).
    fixed_at           BIGINT,
    -- When an operator recorded filing each CRA report with ENISA's platform (the hub never files anything).
    early_warning_filed_at  BIGINT,
    notification_filed_at   BIGINT,
    final_report_filed_at   BIGINT,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX vuln_reports_by_state ON vuln_reports (state, created_at);
-- The intake's limits count by time and by source.
CREATE INDEX vuln_reports_by_time ON vuln_reports (created_at);
CREATE INDEX vuln_reports_by_source ON vuln_reports (source, created_at);

CREATE TABLE vuln_report_messages (
    id          TEXT PRIMARY KEY,
    report_id   TEXT NOT NULL REFERENCES vuln_reports(id),
    at          BIGINT NOT NULL,
    -- reporter or operator.
    author      TEXT NOT NULL,
    -- The operator's account id (empty for the reporter).
    account_id  TEXT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX vuln_report_messages_by_report ON vuln_report_messages (report_id, at);
