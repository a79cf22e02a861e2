-- Exactly-once by sequence numbers (docs/adr/0006-sequenced-outbox-and-the-hello.md): every item is numbered per
-- producer and tier, and the server keeps only the last number it stored per producer and tier.

-- The producers of this outbox. One is current; an older one lives on only while items it
-- numbered wait. `gen` orders them: a tier sends an older producer's items first.
CREATE TABLE outbox_producers (
    gen INTEGER PRIMARY KEY,
    id  TEXT NOT NULL UNIQUE
);
INSERT INTO outbox_producers (gen, id) VALUES (1, lower(hex(randomblob(16))));

-- The current producer's numbering, per tier. `unverified_from` is the last number assigned when
-- the database was first opened since the server last confirmed it was not ahead (the hello);
-- NULL once confirmed. A server ahead of it means the file was restored from an older copy.
CREATE TABLE outbox_tiers (
    tier            INTEGER PRIMARY KEY CHECK (tier BETWEEN 1 AND 4),
    next_seq        INTEGER NOT NULL CHECK (next_seq >= 1),
    unverified_from INTEGER
);

ALTER TABLE outbox ADD COLUMN producer_gen INTEGER NOT NULL DEFAULT 1;
ALTER TABLE outbox ADD COLUMN tier_seq INTEGER NOT NULL DEFAULT 0;
-- Items queued before this version are numbered in their queue order.
UPDATE outbox SET tier_seq =
    (SELECT count(*) FROM outbox AS o WHERE o.tier = outbox.tier AND o.seq <= outbox.seq);
INSERT INTO outbox_tiers (tier, next_seq)
    SELECT t.tier, coalesce((SELECT max(tier_seq) FROM outbox WHERE tier = t.tier), 0) + 1
    FROM (SELECT 1 AS tier UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4) AS t;

CREATE UNIQUE INDEX outbox_by_number ON outbox (tier, producer_gen, tier_seq);
DROP INDEX outbox_queue;
CREATE INDEX outbox_queue ON outbox (state, tier, producer_gen, tier_seq);
