-- Idempotency keys belong to the token that sent them: the same key from another token
-- (or from a client without one) is another request, never a way to read a job it did not
-- make. COALESCE makes "no token" one scope, since NULLs never collide in a unique index.
DROP INDEX jobs_idempotency;
CREATE UNIQUE INDEX jobs_idempotency ON jobs (task, COALESCE(token_name, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;
