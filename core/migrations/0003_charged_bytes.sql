-- Schema version 3: `cache_entries.stored_size` held the bytes charged to the namespace budget
-- (stored value plus key), not the size of the stored value; the column is renamed for what it
-- holds. No value changes.
ALTER TABLE cache_entries RENAME COLUMN stored_size TO charged_bytes;
