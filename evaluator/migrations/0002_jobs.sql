-- The job queue that every evaluator node shares. A job is one batch; each of its images is a
-- row of job_images, the unit that nodes claim, so one batch can be split across nodes and its
-- outputs joined in image order.
CREATE TABLE jobs (
    id               text        PRIMARY KEY,  -- 128 random bits in hex
    owner            text        NOT NULL,     -- the token that submitted it
    model            text        NOT NULL,
    fingerprint      text        NOT NULL,     -- the client spec's: only nodes serving it claim
    key_id           text        NOT NULL,
    images           integer     NOT NULL,
    bootstraps_total bigint      NOT NULL,
    state            text        NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'done', 'failed')),
    submitted        timestamptz NOT NULL DEFAULT clock_timestamp(),
    started          timestamptz,
    finished         timestamptz,
    error            text,
    error_code       text
);

CREATE INDEX jobs_active ON jobs (submitted) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_owner_active ON jobs (owner) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_finished ON jobs (finished) WHERE finished IS NOT NULL;

CREATE TABLE job_images (
    job_id          text        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    image           integer     NOT NULL,      -- its place in the batch, from 0
    state           text        NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'done', 'failed')),
    input           bytea,                     -- the encrypted image; cleared once done
    output          bytea,                     -- the encrypted output, written once
    node            text,                      -- the node that holds or held the claim
    attempt         integer     NOT NULL DEFAULT 0, -- claims so far: fences a lapsed claim
    lease_until     timestamptz,               -- a running claim lapses after this
    bootstraps_done bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, image)
);

CREATE INDEX job_images_claimable ON job_images (job_id) WHERE state <> 'done';
