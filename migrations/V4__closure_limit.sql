-- authz schema, version 4: a limit on the size of a tenant's include closures.
--
-- The include depth limit (V3) bounds a chain of includes, not a fan-out: 5,000 roles
-- each including one hub that includes 5,000 roles have closures of 5,001 roles each,
-- 25 million entries in all, which every replica would hold (12 bytes an entry) and
-- compute. `max_closure_entries` bounds the sum, over a tenant's roles, of the roles each
-- reaches through includes (itself, its includes, theirs ..., built-in roles too); the
-- built-in roles are held to the same number. The compiler has the same limit
-- (`policy::Limits::closure_entries_per_tenant`, `--max-closure-entries`), the same
-- default and the same message (docs/policy-rules.md, R47).
--
-- Cost. The check walks the closures breadth first (a recursive query, every reached
-- role of every root once) and stops one entry past the limit, so a commit touching one
-- tenant costs at most the limit, whatever was written. A commit touching the built-in
-- section or the limits counts every tenant's closures in one pass, capped at
-- (tenants + 1) × limit entries, O(all closure entries): linear in what the replicas
-- hold; only when that cap is hit is each tenant counted alone (each stopping one entry
-- past the limit) to name the first one over it.

ALTER TABLE authz_limits
    ADD COLUMN max_closure_entries bigint NOT NULL DEFAULT 1000000 CHECK (max_closure_entries >= 0);

COMMENT ON COLUMN authz_limits.max_closure_entries IS
    'Sum over a tenant''s roles of the roles each reaches through includes, itself and built-in roles included; built-in roles: the same.';

-- The message both enforcers give.
CREATE FUNCTION authz_closure_message(g text, lim bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT format(
        '%s: the roles'' include closures hold more than %s entries, more than the limit max_closure_entries = %s (each role counts itself and every role it reaches through includes)',
        CASE WHEN g = '' THEN 'built-in roles' ELSE format('tenant `%s`', g) END, lim, lim)
$$;

-- Counts the closure entries of group `g`'s roles ('' = the built-in roles), stopping one
-- past `lim`: at most lim + 1 rows are ever produced.
CREATE FUNCTION authz_closure_entries(g text, lim bigint) RETURNS bigint LANGUAGE sql
    SET plan_cache_mode = force_custom_plan SET enable_nestloop = off AS $$
    WITH RECURSIVE node AS MATERIALIZED (
        SELECT r.tenant_id, r.id, (row_number() OVER ())::int AS k
          FROM roles r WHERE r.tenant_id = '' OR r.tenant_id = g
    ), edge AS MATERIALIZED (
        -- A name resolves to the tenant's own role, else to a built-in one.
        SELECT s.k AS src, coalesce(c.k, b.k) AS dst
          FROM role_includes i
          JOIN node s ON s.tenant_id = i.tenant_id AND s.id = i.role_id
          LEFT JOIN node c ON c.tenant_id = i.tenant_id AND c.id = i.included
          LEFT JOIN node b ON b.tenant_id = '' AND b.id = i.included
         WHERE (i.tenant_id = '' OR i.tenant_id = g) AND coalesce(c.k, b.k) IS NOT NULL
    ), reach(root, role) AS (
        SELECT k, k FROM node WHERE tenant_id = g
        UNION
        SELECT r.root, e.dst FROM reach r JOIN edge e ON e.src = r.role
    )
    SELECT count(*) FROM (SELECT 1 FROM reach LIMIT lim + 1) x
$$;

-- Raises if a group of roles (for t = '': the built-in roles and every tenant's; else
-- tenant t's) holds more than max_closure_entries closure entries.
CREATE FUNCTION authz_check_closures(t text) RETURNS void LANGUAGE plpgsql
    SET plan_cache_mode = force_custom_plan SET enable_nestloop = off AS $$
DECLARE
    lim bigint;
    groups bigint;
    total bigint;
    bad text;
BEGIN
    SELECT max_closure_entries INTO lim FROM authz_limits;
    IF t <> '' THEN
        IF authz_closure_entries(t, lim) > lim THEN
            RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = authz_closure_message(t, lim);
        END IF;
        RETURN;
    END IF;
    -- Every group at once, capped: past (groups + 1) × lim entries some group is over.
    SELECT count(DISTINCT tenant_id) INTO groups FROM roles;
    WITH RECURSIVE node AS MATERIALIZED (
        SELECT r.tenant_id, r.id, (row_number() OVER ())::int AS k FROM roles r
    ), edge AS MATERIALIZED (
        SELECT s.k AS src, coalesce(c.k, b.k) AS dst
          FROM role_includes i
          JOIN node s ON s.tenant_id = i.tenant_id AND s.id = i.role_id
          LEFT JOIN node c ON c.tenant_id = i.tenant_id AND c.id = i.included
          LEFT JOIN node b ON b.tenant_id = '' AND b.id = i.included
         WHERE coalesce(c.k, b.k) IS NOT NULL
    ), reach(root, role) AS (
        SELECT k, k FROM node
        UNION
        SELECT r.root, e.dst FROM reach r JOIN edge e ON e.src = r.role
    ), capped AS (
        SELECT root FROM reach LIMIT (groups + 1) * lim + 1
    ), counts AS MATERIALIZED (
        SELECT node.tenant_id AS g, count(*) AS n FROM capped JOIN node ON node.k = capped.root
         GROUP BY node.tenant_id
    )
    SELECT (SELECT sum(n) FROM counts), (SELECT g FROM counts WHERE n > lim ORDER BY g LIMIT 1)
      INTO total, bad;
    IF coalesce(total, 0) > (groups + 1) * lim THEN
        -- The cap was hit: find the first group over the limit, one at a time.
        FOR bad IN SELECT DISTINCT tenant_id FROM roles ORDER BY tenant_id LOOP
            IF authz_closure_entries(bad, lim) > lim THEN
                RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = authz_closure_message(bad, lim);
            END IF;
        END LOOP;
        -- Unreachable (some group holds more than its share); refuse rather than pass.
        RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = format(
            'include closures hold more than %s entries in all, more than the limit max_closure_entries = %s allows', (groups + 1) * lim, lim);
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = authz_closure_message(bad, lim);
    END IF;
END
$$;

-- V3's validation, with the closure check last (after the include walk has refused
-- cycles and chains too deep, as the compiler does).
CREATE OR REPLACE FUNCTION authz_validate_tenant(t text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM authz_check_counts(t);
    PERFORM authz_check_references(t);
    PERFORM authz_check_endpoint_conflicts(t);
    PERFORM authz_check_includes(t);
    PERFORM authz_check_closures(t);
END
$$;
