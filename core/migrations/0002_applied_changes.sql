-- Schema version 2: downstream changes already applied, so a page delivered twice is applied
-- once. Rows older than the server's retention (48 h) are pruned as pages are applied.
CREATE TABLE applied_changes (
    id         TEXT PRIMARY KEY NOT NULL,
    applied_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX applied_changes_by_age ON applied_changes (applied_at);
