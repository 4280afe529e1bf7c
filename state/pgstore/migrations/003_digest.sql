-- popbridge state, schema 3: the content digest of messages whose
-- fingerprint another message shares ('' for every other message). A
-- pending UPDATE's new fields (attempts, fingerprints, digests) live in its
-- jsonb and need no column.

ALTER TABLE popbridge_entry ADD COLUMN IF NOT EXISTS digest text NOT NULL DEFAULT '';
