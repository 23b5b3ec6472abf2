-- Registered server keys, shared by every evaluator node. A key's bytes are stored once,
-- whoever registered it; each token's registration of it is a row of key_owners.
CREATE TABLE key_blobs (
    id            text PRIMARY KEY,          -- first 128 bits of the SHA-256 of bytes, in hex
    parameter_set text   NOT NULL,
    checksum      text   NOT NULL,           -- the whole SHA-256 of bytes, in hex
    size          bigint NOT NULL,
    bytes         bytea  NOT NULL
);

CREATE TABLE key_owners (
    owner      text        NOT NULL,
    id         text        NOT NULL REFERENCES key_blobs (id) ON DELETE CASCADE,
    registered timestamptz NOT NULL DEFAULT now(),
    last_used  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, id)
);

CREATE INDEX key_owners_last_used ON key_owners (last_used);
