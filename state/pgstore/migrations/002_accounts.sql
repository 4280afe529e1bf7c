-- popbridge state, schema 2: enrolled accounts. See the package
-- documentation of state/pgstore. Secrets are only ever stored sealed
-- (sealed_grant) or wrapped (wrapped_dek, server_wrapped_dek); hash is an
-- argon2id PHC string.

CREATE TABLE popbridge_account (
	name               text        PRIMARY KEY,
	version            bigint      NOT NULL, -- uint64 bits
	kind               text        NOT NULL,
	upstream           text        NOT NULL,
	provider           text        NOT NULL,
	identity           text        NOT NULL,
	mailbox            text        NOT NULL,
	dek_version        bigint      NOT NULL, -- uint64 bits
	server_wrapped_dek bytea,
	sealed_grant       bytea,
	grant_version      bigint      NOT NULL, -- uint64 bits
	grant_expiry       timestamptz,
	grant_updated      timestamptz,
	grant_status       text        NOT NULL,
	grant_reason       text        NOT NULL,
	grant_since        timestamptz,
	created            timestamptz,
	updated            timestamptz
);

CREATE TABLE popbridge_account_password (
	account     text        NOT NULL REFERENCES popbridge_account (name) ON DELETE CASCADE,
	position    integer     NOT NULL,
	label       text        NOT NULL,
	hash        text        NOT NULL,
	wrapped_dek bytea,
	created     timestamptz,
	last_used   timestamptz,
	PRIMARY KEY (account, position)
);
