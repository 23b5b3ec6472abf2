-- Bulk jobs (docs/bulk.md): one packed batch of up to 8192 images, evaluated as one unit, so a
-- bulk job has a single job_images row (image 0). Its upload (the evaluation key, then the
-- batch: up to a few hundred MB) is a large object, written and read in pieces so that no
-- statement carries it whole, and unlinked by the sweeper once the job has ended. A bulk job
-- carries its own key, so it names no registered one. Its units of work are packed neurons:
-- jobs.bootstraps_total and job_images.bootstraps_done count those for a bulk job.
ALTER TABLE jobs
    ADD COLUMN kind text NOT NULL DEFAULT 'interactive' CHECK (kind IN ('interactive', 'bulk')),
    ADD COLUMN upload oid,
    ALTER COLUMN key_id DROP NOT NULL,
    ADD CHECK ((kind = 'bulk') = (key_id IS NULL));

CREATE INDEX jobs_bulk_uploads ON jobs (id) WHERE upload IS NOT NULL;
