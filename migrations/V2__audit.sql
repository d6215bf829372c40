-- authz schema, version 2: the admin API's audit log.
--
-- Every admin write inserts its row in the transaction that makes the write, so a write
-- is never committed without its audit row, nor an audit row without its write. The
-- table has no capture trigger: recording a write is not itself a policy change.
CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    -- The admin token's name.
    actor text NOT NULL,
    -- The tenant written; '' for a whole-policy apply.
    tenant_id text NOT NULL,
    -- The RPC, e.g. `GrantRole`.
    action text NOT NULL,
    -- The request's values.
    detail jsonb NOT NULL,
    -- The revision the write committed (the current one when it changed nothing).
    revision bigint NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);
