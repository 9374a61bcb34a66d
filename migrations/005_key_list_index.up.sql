-- The admin API lists keys newest first, a page at a time (GET /v1/keys?after=…): each page
-- starts where the last one ended on (created_at, id), which this index serves without
-- sorting every key of a deployment with tens of thousands of them.
CREATE INDEX api_keys_created ON api_keys (created_at, id);
