-- authz schema, version 4: a limit on the cost of a tenant's include closures.
--
-- The include depth limit (V3) bounds a chain of includes, not a fan-out or a dense
-- graph: 5,000 roles each including one hub that includes 5,000 roles have closures of
-- 5,001 roles each, 25 million entries in all, which every replica would hold (12 bytes
-- an entry) and compute; three layers of 500 roles, each including every role of the
-- next, have only 750,000 entries but 125 million includes to follow to find them.
-- `max_closure_cost` bounds both: for each of a tenant's roles, every role it reaches
-- through includes (itself, its includes, theirs ..., built-in roles too) costs 1 plus
-- that role's number of includes. That is exactly the work of the breadth-first walks
-- that find the closures (a role reached, an include followed), and at least the number
-- of entries they hold. The built-in roles are held to the same number. The compiler has
-- the same limit (`policy::Limits::closure_cost_per_tenant`, `--max-closure-cost`), the
-- same default and the same message (docs/policy-rules.md, R46).
--
-- Cost. The count walks the closures breadth first (a recursive query returning each
-- reached role once per root, with its number of includes) and stops one unit past the
-- limit: every include the walk follows was counted when the role it leaves was returned,
-- so the work is at most about twice the limit, whatever was written. A commit touching
-- the built-in section or the limits counts every tenant in one walk, capped at
-- (tenants + 1) × limit units: linear in what the replicas hold.

ALTER TABLE authz_limits
    ADD COLUMN max_closure_cost bigint NOT NULL DEFAULT 2000000
        CHECK (max_closure_cost BETWEEN 0 AND 1000000000000);

COMMENT ON COLUMN authz_limits.max_closure_cost IS
    'Cost of a tenant''s include closures: every role each role reaches through includes (itself and built-in roles too) costs 1 plus its own includes; built-in roles: the same.';

-- The message both enforcers give.
CREATE FUNCTION authz_closure_message(g text, lim bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT format(
        '%s: the roles'' include closures cost more than %s, more than the limit max_closure_cost = %s (every role a role reaches through includes, itself too, costs 1 plus its own includes)',
        CASE WHEN g = '' THEN 'built-in roles' ELSE format('tenant `%s`', g) END, lim, lim)
$$;

-- Nested loops are off (as in V3's include walk: joins stay hash joins whatever the
-- planner's estimate); the per-row `generate_series` is then costed as a disabled nested
-- loop, which would start JIT compilation (0.8 s per call): JIT is off too.
--
-- The closure cost of group `g`'s roles ('' = the built-in roles), counted up to one
-- past `lim`. The recursive query returns each (root, reached role) once, carrying the
-- role's number of includes; the outer query turns each into 1 + includes units and
-- stops pulling at lim + 1, so the walk never gets further than that.
CREATE FUNCTION authz_closure_cost(g text, lim bigint) RETURNS bigint LANGUAGE sql
    SET plan_cache_mode = force_custom_plan SET enable_nestloop = off SET jit = off AS $$
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
    ), degree AS MATERIALIZED (
        SELECT node.k, count(edge.dst)::int AS n
          FROM node LEFT JOIN edge ON edge.src = node.k GROUP BY node.k
    ), step AS MATERIALIZED (
        SELECT edge.src, edge.dst, degree.n AS dst_degree
          FROM edge JOIN degree ON degree.k = edge.dst
    ), reach(root, role, degree) AS (
        SELECT node.k, node.k, degree.n
          FROM node JOIN degree ON degree.k = node.k WHERE node.tenant_id = g
        UNION
        SELECT r.root, s.dst, s.dst_degree FROM reach r JOIN step s ON s.src = r.role
    )
    SELECT count(*) FROM (
        SELECT 1 FROM reach, generate_series(0, reach.degree) LIMIT lim + 1
    ) x
$$;

-- Raises if a group of roles (for t = '': the built-in roles and every tenant's; else
-- tenant t's) costs more than max_closure_cost. For t = '' every group is counted in one
-- walk (one plan, not one per tenant), capped at (groups + 1) × limit units: past that
-- some group is over the limit, and only then is each group counted alone (each stopping
-- one unit past the limit) to name the first one over it.
CREATE FUNCTION authz_check_closures(t text) RETURNS void LANGUAGE plpgsql
    SET plan_cache_mode = force_custom_plan SET enable_nestloop = off SET jit = off AS $$
DECLARE
    lim bigint;
    groups bigint;
    total bigint;
    bad text;
BEGIN
    SELECT max_closure_cost INTO lim FROM authz_limits;
    IF t <> '' THEN
        IF authz_closure_cost(t, lim) > lim THEN
            RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = authz_closure_message(t, lim);
        END IF;
        RETURN;
    END IF;
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
    ), degree AS MATERIALIZED (
        SELECT node.k, count(edge.dst)::int AS n
          FROM node LEFT JOIN edge ON edge.src = node.k GROUP BY node.k
    ), step AS MATERIALIZED (
        SELECT edge.src, edge.dst, degree.n AS dst_degree
          FROM edge JOIN degree ON degree.k = edge.dst
    ), reach(grp, root, role, degree) AS (
        SELECT node.tenant_id, node.k, node.k, degree.n
          FROM node JOIN degree ON degree.k = node.k
        UNION
        SELECT r.grp, r.root, s.dst, s.dst_degree FROM reach r JOIN step s ON s.src = r.role
    ), capped AS (
        SELECT grp FROM reach, generate_series(0, reach.degree) LIMIT (groups + 1) * lim + 1
    ), counts AS MATERIALIZED (
        SELECT grp, count(*) AS n FROM capped GROUP BY grp
    )
    SELECT (SELECT sum(n) FROM counts), (SELECT grp FROM counts WHERE n > lim ORDER BY grp LIMIT 1)
      INTO total, bad;
    IF coalesce(total, 0) > (groups + 1) * lim THEN
        FOR bad IN SELECT DISTINCT tenant_id FROM roles ORDER BY tenant_id LOOP
            IF authz_closure_cost(bad, lim) > lim THEN
                RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = authz_closure_message(bad, lim);
            END IF;
        END LOOP;
        -- Unreachable (some group holds more than its share); refuse rather than pass.
        RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = format(
            'include closures cost more than %s in all, more than the limit max_closure_cost = %s allows',
            (groups + 1) * lim, lim);
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
