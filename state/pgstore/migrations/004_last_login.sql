-- popbridge state, schema 4: the time of each client's last login (NULL
-- when none was recorded). Rows written before it read as never.

ALTER TABLE popbridge_client ADD COLUMN IF NOT EXISTS last_login timestamptz;
