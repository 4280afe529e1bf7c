-- popbridge state, schema 1. See the package documentation of state/pgstore.

CREATE TABLE popbridge_mailbox (
	name           text   PRIMARY KEY,
	version        bigint NOT NULL, -- uint64 bits
	uid_validity   bigint NOT NULL,
	uid_next       bigint NOT NULL,
	num_messages   bigint NOT NULL,
	highest_modseq bigint NOT NULL  -- uint64 bits
);

CREATE TABLE popbridge_entry (
	mailbox     text   NOT NULL REFERENCES popbridge_mailbox (name) ON DELETE CASCADE,
	uid         bigint NOT NULL,
	uidl        text   NOT NULL,
	size        bigint NOT NULL,
	fingerprint text   NOT NULL,
	PRIMARY KEY (mailbox, uid)
);

CREATE TABLE popbridge_client (
	mailbox text  NOT NULL,
	client  text  NOT NULL,
	pending jsonb,
	PRIMARY KEY (mailbox, client)
);

CREATE TABLE popbridge_hidden (
	mailbox text NOT NULL,
	client  text NOT NULL,
	uidl    text NOT NULL,
	PRIMARY KEY (mailbox, client, uidl),
	FOREIGN KEY (mailbox, client) REFERENCES popbridge_client (mailbox, client) ON DELETE CASCADE
);
