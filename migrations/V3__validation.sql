-- authz schema, version 3: the database refuses what the compiler refuses.
--
-- Every rule `policy::compile` enforces is listed, with an example of each, in
-- docs/policy-rules.md (tests/policy_rules.rs proves each one is refused both by
-- `authzd validate` and by a direct SQL commit). This migration enforces them at the
-- database for every writer:
--
--   * per row, at the statement (BEFORE INSERT OR UPDATE triggers `<table>_check`): ids,
--     permission names, scopes, patterns, methods, an endpoint entry's `public`/`roles`,
--     an assignment's subject/group, and that a group member or assigned subject is
--     registered and an assigned group exists. O(length of the row) each. The V1 CHECK
--     constraints stay as a backstop for writes made with triggers disabled.
--   * per tenant, at commit (the deferred `<table>_validate` triggers, as in V1, now also
--     on role_permissions, role_routes and authz_limits): references between rows,
--     built-in/custom id clashes, endpoint conflicts, include cycles and depth, and the
--     count limits of `authz_limits`.
--
-- Messages name the tenant (omitted for the built-in section, like the compiler), the
-- role, entry, rule or assignment, and say what is wrong in the compiler's words.
--
-- Cost. Nothing here enumerates paths or pairs: every check is linear (or n log n, for
-- a sort) in the rows it reads, so no commit can make validation run for hours or spill
-- an unbounded amount to disk. A commit validates each tenant it touched once:
-- O(rows of the tenant + rows of the built-in section). A commit that touches the
-- built-in section (tenant '') or the limits validates every tenant in one set-based
-- pass, O(all rows), and then skips the per-tenant validations of that commit.

-- ---------------------------------------------------------------- limits

-- The per-tenant limits, one row (like authz_state). The compiler has the same limits
-- with the same names and defaults (`policy::Limits`, `authzd validate
-- --max-include-depth` ...); a server following the database compiles with these.
-- Changing a row here validates every tenant against the new values at commit, and is
-- captured like a built-in change (revision, NOTIFY) so followers reload with them.
CREATE TABLE authz_limits (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- The longest chain of `includes` edges starting at any role, counting edges into and
    -- through built-in roles: a role including nothing has depth 0, `a includes b` gives
    -- `a` depth 1.
    max_include_depth int NOT NULL DEFAULT 32 CHECK (max_include_depth >= 0),
    -- Custom roles of one tenant; the built-in roles (tenant '') are held to the same
    -- number.
    max_roles_per_tenant int NOT NULL DEFAULT 10000 CHECK (max_roles_per_tenant >= 0),
    -- Route rules of one role.
    max_rules_per_role int NOT NULL DEFAULT 1000 CHECK (max_rules_per_role >= 0),
    -- Named permissions of one role.
    max_permissions_per_role int NOT NULL DEFAULT 1000 CHECK (max_permissions_per_role >= 0),
    -- Endpoint entries of one tenant's own table; the table for all tenants (tenant '')
    -- likewise.
    max_endpoints_per_tenant int NOT NULL DEFAULT 10000 CHECK (max_endpoints_per_tenant >= 0)
);
INSERT INTO authz_limits DEFAULT VALUES;

COMMENT ON TABLE authz_limits IS
    'Per-tenant limits, one row; the compiler (policy::Limits) has the same names and defaults. See docs/policy-rules.md.';
COMMENT ON COLUMN authz_limits.max_include_depth IS
    'Longest chain of includes edges from any role, through built-in roles too (a role including nothing: 0; a includes b: 1).';
COMMENT ON COLUMN authz_limits.max_roles_per_tenant IS
    'Custom roles of one tenant; the built-in roles are held to the same number.';
COMMENT ON COLUMN authz_limits.max_rules_per_role IS 'Route rules of one role.';
COMMENT ON COLUMN authz_limits.max_permissions_per_role IS 'Named permissions of one role.';
COMMENT ON COLUMN authz_limits.max_endpoints_per_tenant IS
    'Endpoint entries of one tenant; the table for all tenants likewise.';

-- authz_limits rows belong to the built-in section: a change is a '' change.
CREATE OR REPLACE FUNCTION authz_row_tenant(entity text, r jsonb) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE entity
        WHEN 'tenants' THEN r ->> 'id'
        WHEN 'authz_limits' THEN ''
        ELSE r ->> 'tenant_id'
    END
$$;

CREATE TRIGGER authz_limits_capture AFTER INSERT OR UPDATE OR DELETE ON authz_limits
    FOR EACH ROW EXECUTE FUNCTION authz_capture();

-- The row is never deleted (a policy without limits would be one the compiler never
-- sees): limits change by UPDATE only.
CREATE FUNCTION authz_limits_keep_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'authz_limits keeps its one row: change the limits with UPDATE'
        USING ERRCODE = 'check_violation';
END
$$;
CREATE TRIGGER authz_limits_keep_row BEFORE DELETE OR TRUNCATE ON authz_limits
    FOR EACH STATEMENT EXECUTE FUNCTION authz_limits_keep_row();

-- ---------------------------------------------------------------- value syntax
--
-- Each function mirrors one parser of the compiler and returns its message (without the
-- location), or NULL for a valid value. IMMUTABLE, O(length of the value).

-- `, ` joined location, like the compiler's: the built-in section ('') has no tenant part.
CREATE FUNCTION authz_loc(t text, inner_loc text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN t = '' THEN inner_loc ELSE format('tenant `%s`, %s', t, inner_loc) END
$$;

-- How the compiler names an endpoint entry: endpoint `GET,PUT /path`.
CREATE FUNCTION authz_endpoint_loc(t text, methods text[], path text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT authz_loc(t, format('endpoint `%s %s`', array_to_string(methods, ','), path))
$$;

-- Whitespace (Unicode White_Space, Rust's char::is_whitespace) or a control character
-- (category Cc, char::is_control). U+0000 cannot occur in text.
CREATE FUNCTION authz_has_space_or_control(s text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT s ~ '[\u0001-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]'
$$;

-- model::tenant_id / model::subject_id: non-empty, at most `max_bytes` bytes, no
-- whitespace or control characters.
CREATE FUNCTION authz_id_problem(s text, max_bytes int) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN s = '' THEN 'is required'
        WHEN octet_length(s) > max_bytes THEN format('is longer than %s bytes', max_bytes)
        WHEN authz_has_space_or_control(s)
            THEN 'has a character that is not allowed (no whitespace or control characters)'
    END
$$;

-- model::name (role ids, permissions): [A-Za-z0-9_.:-], 1 to 128 bytes.
CREATE FUNCTION authz_name_problem(s text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN s = '' THEN 'is required'
        WHEN octet_length(s) > 128 THEN 'is longer than 128 bytes'
        WHEN s !~ '^[A-Za-z0-9_.:-]+$'
            THEN 'has a character that is not allowed (letters, digits, `_`, `.`, `:` and `-`)'
    END
$$;

-- model::scope: '' (the root) or at most 1024 bytes of segments joined by `/`, no leading
-- or trailing slash, no empty, `.` or `..` segment, no whitespace or control character,
-- at most 128 segments. Checked in the compiler's order.
CREATE FUNCTION authz_scope_problem(s text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    seg text;
    n int := 0;
BEGIN
    IF s = '' THEN
        RETURN NULL;
    ELSIF octet_length(s) > 1024 THEN
        RETURN 'is longer than 1024 bytes';
    ELSIF left(s, 1) = '/' OR right(s, 1) = '/' THEN
        RETURN 'is written without leading or trailing slash, e.g. `workspaces/ws-1`; the tenant root is the empty string';
    END IF;
    FOREACH seg IN ARRAY string_to_array(s, '/') LOOP
        n := n + 1;
        IF seg IN ('', '.', '..') THEN
            RETURN 'has an empty, `.` or `..` segment';
        ELSIF authz_has_space_or_control(seg) THEN
            RETURN 'has a character that is not allowed (no whitespace or control characters)';
        END IF;
    END LOOP;
    IF n > 128 THEN
        RETURN 'has more than 128 segments';
    END IF;
    RETURN NULL;
END
$$;

-- Pattern::parse: at most 4096 bytes; absolute; ONE leading and ONE trailing `/` are
-- stripped before splitting (so `/` and `/a/` are fine, `/a//` is not); no empty, `.` or
-- `..` segment; `**` only last; `*` or `{name}` (a non-empty name without `{`, `}`, `*`)
-- or a literal without `*`, `{`, `}`; at most 128 segments.
CREATE FUNCTION authz_pattern_problem(p text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    body text;
    parts text[];
    seg text;
    i int := 0;
    n int;
BEGIN
    IF octet_length(p) > 4096 THEN
        RETURN format('pattern `%s` is too long', p);
    ELSIF left(p, 1) <> '/' OR p = '' THEN
        RETURN format('pattern `%s` must be absolute (start with `/`)', p);
    END IF;
    body := substr(p, 2);
    IF right(body, 1) = '/' THEN
        body := left(body, -1);
    END IF;
    IF body = '' THEN
        RETURN NULL;
    END IF;
    parts := string_to_array(body, '/');
    n := cardinality(parts);
    FOREACH seg IN ARRAY parts LOOP
        i := i + 1;
        IF seg IN ('', '.', '..') THEN
            RETURN format('pattern `%s` has an empty, `.` or `..` segment', p);
        ELSIF seg = '**' THEN
            IF i < n THEN
                RETURN format('pattern `%s` has `**` before its last segment', p);
            END IF;
        ELSIF seg = '*' OR seg ~ '^\{[^{}*]+\}$' THEN
            NULL;
        ELSIF seg ~ '[*{}]' THEN
            RETURN format('pattern `%s` has segment `%s` mixing text with `*` or `{}`', p, seg);
        END IF;
    END LOOP;
    IF n > 128 THEN
        RETURN format('pattern `%s` is too long', p);
    END IF;
    RETURN NULL;
END
$$;

-- MethodSet::parse: a non-empty list of `*` or upper-case tokens (first byte A-Z, the
-- rest A-Z 0-9 `_` `-`, at most 32 bytes); the first bad one is named. A database array
-- may also be multi-dimensional or hold NULLs, which no document can say: refused too.
CREATE FUNCTION authz_methods_problem(methods text[]) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    m text;
BEGIN
    IF cardinality(methods) = 0 THEN
        RETURN 'empty `methods` list';
    ELSIF array_ndims(methods) > 1 THEN
        RETURN '`methods` is not a one-dimensional list';
    END IF;
    FOREACH m IN ARRAY methods LOOP
        IF m = '*' THEN
            CONTINUE;
        ELSIF m IS NULL OR m = '' THEN
            RETURN 'method `` is required';
        ELSIF octet_length(m) > 32 THEN
            RETURN format('method `%s` is longer than 32 bytes', m);
        ELSIF m !~ '^[A-Z][A-Z0-9_-]*$' THEN
            RETURN format('method `%s` has a character that is not allowed (an upper-case HTTP method token such as `GET`)', m);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- The key two endpoint patterns share when the router cannot tell them apart: segments
-- compared one by one, `*` and `{name}` equal, one trailing slash insignificant. Only
-- for patterns that passed authz_pattern_problem. `/a/{id}/` and `/a/*` -> `/a/*/`.
CREATE FUNCTION authz_pattern_key(p text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT regexp_replace(
        '/' || CASE WHEN right(substr(p, 2), 1) = '/' THEN left(substr(p, 2), -1) ELSE substr(p, 2) END || '/',
        '/\{[^/{}*]+\}(?=/)', '/*', 'g')
$$;

-- ---------------------------------------------------------------- row checks

-- What is wrong with one row, with its location, or NULL. One function per table (the
-- row type selects it), shared by the `_check` triggers and this migration's sweep of
-- existing rows. O(length of the row).
CREATE FUNCTION authz_row_problem(r tenants) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT format('tenant `%s`: id %s', r.id, authz_id_problem(r.id, 128))
     WHERE r.id <> '' AND authz_id_problem(r.id, 128) IS NOT NULL
$$;

CREATE FUNCTION authz_row_problem(r roles) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT format('%s: id %s', authz_loc(r.tenant_id, format('role `%s`', r.id)), authz_name_problem(r.id))
     WHERE authz_name_problem(r.id) IS NOT NULL
$$;

CREATE FUNCTION authz_row_problem(r role_permissions) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT format('%s: permission `%s` %s', authz_loc(r.tenant_id, format('role `%s`', r.role_id)),
                  r.permission, authz_name_problem(r.permission))
     WHERE authz_name_problem(r.permission) IS NOT NULL
$$;

CREATE FUNCTION authz_row_problem(r role_routes) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT format('%s: %s',
                  authz_loc(r.tenant_id, format('role `%s`, rule at position %s (`%s`)', r.role_id, r.position, r.path)),
                  coalesce(authz_pattern_problem(r.path), authz_methods_problem(r.methods)))
     WHERE coalesce(authz_pattern_problem(r.path), authz_methods_problem(r.methods)) IS NOT NULL
$$;

CREATE FUNCTION authz_row_problem(r endpoints) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT format('%s: %s', authz_endpoint_loc(r.tenant_id, r.methods, r.path), p)
      FROM (SELECT CASE
                WHEN r.public AND cardinality(r.roles) > 0 THEN 'entry is `public` and names `roles`; choose one'
                WHEN NOT r.public AND cardinality(r.roles) = 0 THEN 'entry needs `roles` or `public: true`'
                WHEN array_ndims(r.roles) > 1 THEN '`roles` is not a one-dimensional list'
                WHEN array_position(r.roles, NULL) IS NOT NULL THEN 'names a NULL role'
                ELSE coalesce(authz_pattern_problem(r.path), authz_methods_problem(r.methods))
            END) AS x(p)
     WHERE p IS NOT NULL
$$;

CREATE FUNCTION authz_row_problem(r subjects) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT format('tenant `%s`, subject `%s`: id %s', r.tenant_id, r.id, authz_id_problem(r.id, 256))
     WHERE authz_id_problem(r.id, 256) IS NOT NULL
$$;

CREATE FUNCTION authz_row_problem(r groups) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT format('tenant `%s`, group `%s`: id %s', r.tenant_id, r.id, authz_id_problem(r.id, 256))
     WHERE authz_id_problem(r.id, 256) IS NOT NULL
$$;

-- A membership has no value of its own to check (authz_check_row checks the member).
CREATE FUNCTION authz_row_problem(r group_members) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT NULL::text
$$;

CREATE FUNCTION authz_row_problem(r assignments) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT format('tenant `%s`, assignment %s: %s', r.tenant_id, r.id, p)
      FROM (SELECT CASE
                WHEN authz_scope_problem(r.scope) IS NOT NULL
                    THEN format('scope `%s` %s', r.scope, authz_scope_problem(r.scope))
                WHEN (r.subject_id IS NULL) = (r.group_id IS NULL)
                    THEN 'needs exactly one of `subject` and `group`'
            END) AS x(p)
     WHERE p IS NOT NULL
$$;

-- BEFORE INSERT OR UPDATE, per row: refuses the statement with the row's problem. Also
-- names an unregistered member or assigned subject and an unknown assigned group (the
-- foreign keys refuse them too, but without the tenant and in other words).
CREATE FUNCTION authz_check_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    problem text := authz_row_problem(NEW);
BEGIN
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION USING MESSAGE = problem, ERRCODE = 'check_violation';
    END IF;
    IF TG_TABLE_NAME = 'group_members' THEN
        IF NOT EXISTS (SELECT 1 FROM subjects s WHERE s.tenant_id = NEW.tenant_id AND s.id = NEW.subject_id) THEN
            RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', MESSAGE = format(
                'tenant `%s`, group `%s`: member `%s` is not a registered subject',
                NEW.tenant_id, NEW.group_id, NEW.subject_id);
        END IF;
    ELSIF TG_TABLE_NAME = 'assignments' THEN
        IF NEW.subject_id IS NOT NULL AND NOT EXISTS
            (SELECT 1 FROM subjects s WHERE s.tenant_id = NEW.tenant_id AND s.id = NEW.subject_id) THEN
            RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', MESSAGE = format(
                'tenant `%s`, assignment %s: subject `%s` is not registered',
                NEW.tenant_id, NEW.id, NEW.subject_id);
        ELSIF NEW.group_id IS NOT NULL AND NOT EXISTS
            (SELECT 1 FROM groups g WHERE g.tenant_id = NEW.tenant_id AND g.id = NEW.group_id) THEN
            RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', MESSAGE = format(
                'tenant `%s`, assignment %s: group `%s` is not defined',
                NEW.tenant_id, NEW.id, NEW.group_id);
        END IF;
    END IF;
    RETURN NEW;
END
$$;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'roles', 'role_permissions', 'role_routes',
        'endpoints', 'subjects', 'groups', 'group_members', 'assignments']
    LOOP
        EXECUTE format('CREATE TRIGGER %I_check BEFORE INSERT OR UPDATE ON %I
                        FOR EACH ROW EXECUTE FUNCTION authz_check_row()', t, t);
    END LOOP;
END
$$;

-- ---------------------------------------------------------------- tenant checks
--
-- Each takes a tenant, or '' for the built-in section and every tenant at once, and
-- raises the first problem it finds. `t = '' OR x.tenant_id = t` filters use the primary
-- keys' leading tenant_id column for one tenant and scan each table once for all; the
-- functions are planned for the tenant at hand on every call (force_custom_plan), never
-- with a generic plan that would scan every tenant's rows to validate one.

-- The count limits. O(rows counted): one grouped pass over roles, role_routes,
-- role_permissions and endpoints of the tenant (of everything, for '').
CREATE FUNCTION authz_check_counts(t text) RETURNS void LANGUAGE plpgsql
    SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    lim authz_limits;
    bad record;
BEGIN
    SELECT * INTO lim FROM authz_limits;
    SELECT r.tenant_id, count(*) AS n INTO bad FROM roles r
     WHERE t = '' OR r.tenant_id = t
     GROUP BY r.tenant_id HAVING count(*) > lim.max_roles_per_tenant
     ORDER BY r.tenant_id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = CASE WHEN bad.tenant_id = ''
            THEN format('built-in roles: %s built-in roles, more than the limit max_roles_per_tenant = %s',
                        bad.n, lim.max_roles_per_tenant)
            ELSE format('tenant `%s`: %s custom roles, more than the limit max_roles_per_tenant = %s',
                        bad.tenant_id, bad.n, lim.max_roles_per_tenant)
        END;
    END IF;
    SELECT e.tenant_id, count(*) AS n INTO bad FROM endpoints e
     WHERE t = '' OR e.tenant_id = t
     GROUP BY e.tenant_id HAVING count(*) > lim.max_endpoints_per_tenant
     ORDER BY e.tenant_id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = format(
            '%s: %s endpoint entries, more than the limit max_endpoints_per_tenant = %s',
            CASE WHEN bad.tenant_id = '' THEN 'endpoints for all tenants' ELSE format('tenant `%s`', bad.tenant_id) END,
            bad.n, lim.max_endpoints_per_tenant);
    END IF;
    SELECT x.tenant_id, x.role_id, count(*) AS n INTO bad FROM role_routes x
     WHERE t = '' OR x.tenant_id = t
     GROUP BY x.tenant_id, x.role_id HAVING count(*) > lim.max_rules_per_role
     ORDER BY x.tenant_id, x.role_id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = format(
            '%s: %s route rules, more than the limit max_rules_per_role = %s',
            authz_loc(bad.tenant_id, format('role `%s`', bad.role_id)), bad.n, lim.max_rules_per_role);
    END IF;
    SELECT x.tenant_id, x.role_id, count(*) AS n INTO bad FROM role_permissions x
     WHERE t = '' OR x.tenant_id = t
     GROUP BY x.tenant_id, x.role_id HAVING count(*) > lim.max_permissions_per_role
     ORDER BY x.tenant_id, x.role_id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = format(
            '%s: %s permissions, more than the limit max_permissions_per_role = %s',
            authz_loc(bad.tenant_id, format('role `%s`', bad.role_id)), bad.n, lim.max_permissions_per_role);
    END IF;
END
$$;

-- Built-in/custom id clashes and references between rows. O(references), one index
-- probe each.
CREATE FUNCTION authz_check_references(t text) RETURNS void LANGUAGE plpgsql
    SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    bad record;
BEGIN
    -- A custom role may not reuse a built-in role's id.
    SELECT r.tenant_id, r.id INTO bad FROM roles r JOIN roles b ON b.tenant_id = '' AND b.id = r.id
     WHERE r.tenant_id <> '' AND (t = '' OR r.tenant_id = t)
     ORDER BY r.tenant_id, r.position LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'tenant `%`, role `%`: custom role reuses the id of a built-in role', bad.tenant_id, bad.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    -- Every role reference resolves: a custom role of the tenant or a built-in role;
    -- built-in roles and entries for all tenants only to built-in roles. The built-in
    -- section's own references change only with a '' change, so they are checked then.
    SELECT x.message INTO bad FROM (
        SELECT i.tenant_id, i.included AS name,
               CASE WHEN i.tenant_id = ''
                   THEN format('role `%s`: built-in role includes `%s`, which is not a built-in role', i.role_id, i.included)
                   ELSE format('tenant `%s`, role `%s`: includes unknown role `%s`', i.tenant_id, i.role_id, i.included)
               END AS message
          FROM role_includes i WHERE t = '' OR i.tenant_id = t
        UNION ALL
        SELECT d.tenant_id, d.role_id, format('tenant `%s`: default role `%s` is not defined', d.tenant_id, d.role_id)
          FROM default_roles d WHERE t = '' OR d.tenant_id = t
        UNION ALL
        SELECT e.tenant_id, r,
               CASE WHEN e.tenant_id = ''
                   THEN format('%s: names `%s`, which is not a built-in role (entries for all tenants may only name built-in roles)',
                               authz_endpoint_loc('', e.methods, e.path), r)
                   ELSE format('%s: names unknown role `%s`', authz_endpoint_loc(e.tenant_id, e.methods, e.path), r)
               END
          FROM endpoints e, unnest(e.roles) AS r WHERE t = '' OR e.tenant_id = t
        UNION ALL
        SELECT a.tenant_id, a.role_id, format('tenant `%s`, assignment %s: role `%s` is not defined', a.tenant_id, a.id, a.role_id)
          FROM assignments a WHERE t = '' OR a.tenant_id = t
    ) x
    WHERE NOT EXISTS (SELECT 1 FROM roles r WHERE r.id = x.name AND r.tenant_id IN (x.tenant_id, ''))
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', MESSAGE = bad.message;
    END IF;
END
$$;

-- Two entries of one endpoint table with the same pattern (authz_pattern_key) and a
-- common method (`*` shares every method) conflict. Linear: entries are grouped by
-- (tenant, key, method) and by (tenant, key); no pair of entries is ever enumerated.
-- Reports the first conflict the compiler reports: the earliest entry that conflicts
-- with an earlier one, and the first earlier entry it conflicts with.
CREATE FUNCTION authz_check_endpoint_conflicts(t text) RETURNS void LANGUAGE plpgsql
    SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    bad record;
BEGIN
    WITH e AS MATERIALIZED (
        SELECT tenant_id, position, methods, authz_pattern_key(path) AS key, '*' = ANY (methods) AS star
          FROM endpoints WHERE t = '' OR tenant_id = t
    ), token AS (
        SELECT DISTINCT e.tenant_id, e.key, e.position, m
          FROM e, unnest(e.methods) AS m
         WHERE m <> '*'
    ), pair AS (
        -- Two entries naming the same method: the first two of each (tenant, key, method).
        SELECT tenant_id, a[1] AS a, a[2] AS b FROM (
            SELECT tenant_id, (array_agg(position ORDER BY position))[1:2] AS a
              FROM token GROUP BY tenant_id, key, m HAVING count(*) > 1) g
        UNION ALL
        -- An entry with `*` and any other entry of the same pattern: the first `*` entry
        -- and the first other entry.
        SELECT tenant_id, least(s, o), greatest(s, o) FROM (
            SELECT tenant_id, s, CASE WHEN two[1] = s THEN two[2] ELSE two[1] END AS o FROM (
                SELECT tenant_id, min(position) FILTER (WHERE star) AS s,
                       (array_agg(position ORDER BY position))[1:2] AS two
                  FROM e GROUP BY tenant_id, key HAVING bool_or(star) AND count(*) > 1) g) h
    )
    SELECT p.tenant_id, ea.methods AS a_methods, ea.path AS a_path, eb.methods AS b_methods, eb.path AS b_path
      INTO bad
      FROM pair p
      JOIN endpoints ea ON ea.tenant_id = p.tenant_id AND ea.position = p.a
      JOIN endpoints eb ON eb.tenant_id = p.tenant_id AND eb.position = p.b
     ORDER BY p.tenant_id, p.b, p.a LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'integrity_constraint_violation', MESSAGE = format(
            '%s: conflicts with endpoint `%s %s`: same pattern, common method',
            authz_endpoint_loc(bad.tenant_id, bad.b_methods, bad.b_path),
            array_to_string(bad.a_methods, ','), bad.a_path);
    END IF;
END
$$;

-- Include cycles and include depth, linear in roles + includes: the graph (the tenant's
-- roles and the built-in ones; for '', every role) is read once into arrays (one sort),
-- then walked depth-first without recursion, each role and each edge once, computing
-- every role's depth (the longest chain of includes from it). No path is enumerated. A
-- back edge is a cycle, named like the compiler's `a -> b -> a`; otherwise the first
-- role (built-in ones first, then by tenant and creation order) deeper than
-- max_include_depth is named with its chain (always on to a deepest include, as the
-- compiler does, at most max_include_depth + 2 roles).
--
-- Nested loops are off for this function: the graph's rows are joined with each other
-- (not probed through an index), and the planner's estimate for a tenant written in this
-- very transaction can be far too small, which made a nested loop over 50,000 roles run
-- for minutes. Hash joins keep every join linear whatever the estimate.
CREATE FUNCTION authz_check_includes(t text) RETURNS void LANGUAGE plpgsql
    SET plan_cache_mode = force_custom_plan SET enable_nestloop = off AS $$
DECLARE
    lim int;
    tenant_of text[];
    name_of text[];
    deg int[];          -- number of includes of each role
    tgt int[];          -- the included roles, role by role, in include order
    first int[];        -- where a role's includes start in tgt
    n int;
    state int[];        -- 0 new, 1 on the current path, 2 done
    depth int[];
    stack int[];        -- the current path
    next_edge int[];    -- per path entry: the next of its includes to follow
    on_path_at int[];   -- a role's index in the current path
    lo int;             -- the group of roles being walked
    hi int;
    sp int;
    v int;
    w int;
    i int;
    d int;
    cycle text[];
    chain text[];
BEGIN
    SELECT max_include_depth INTO lim FROM authz_limits;
    WITH node AS MATERIALIZED (
        SELECT r.tenant_id, r.id, (row_number() OVER (ORDER BY r.tenant_id, r.position))::int AS k
          FROM roles r WHERE r.tenant_id = '' OR t = '' OR r.tenant_id = t
    ), edge AS MATERIALIZED (
        -- A name resolves to the tenant's own role, else to a built-in one (ids never
        -- clash; unresolved names were refused by authz_check_references).
        SELECT s.k AS src, coalesce(c.k, b.k) AS dst, i.position
          FROM role_includes i
          JOIN node s ON s.tenant_id = i.tenant_id AND s.id = i.role_id
          LEFT JOIN node c ON c.tenant_id = i.tenant_id AND c.id = i.included
          LEFT JOIN node b ON b.tenant_id = '' AND b.id = i.included
         WHERE (i.tenant_id = '' OR t = '' OR i.tenant_id = t) AND coalesce(c.k, b.k) IS NOT NULL
    )
    SELECT (SELECT array_agg(tenant_id ORDER BY k) FROM node),
           (SELECT array_agg(id ORDER BY k) FROM node),
           (SELECT array_agg(coalesce(c.cnt, 0) ORDER BY node.k)
              FROM node LEFT JOIN (SELECT src, count(*)::int AS cnt FROM edge GROUP BY src) c ON c.src = node.k),
           (SELECT array_agg(dst ORDER BY src, position) FROM edge)
      INTO tenant_of, name_of, deg, tgt;
    n := coalesce(cardinality(name_of), 0);
    IF n = 0 THEN
        RETURN;
    END IF;
    first := array_fill(0, ARRAY[n]);
    i := 1;
    FOR v IN 1 .. n LOOP
        first[v] := i;
        i := i + deg[v];
    END LOOP;
    state := array_fill(0, ARRAY[n]);
    depth := array_fill(0, ARRAY[n]);
    stack := array_fill(0, ARRAY[n]);
    next_edge := array_fill(0, ARRAY[n]);
    on_path_at := array_fill(0, ARRAY[n]);

    -- One group of roles at a time (the built-in ones, then each tenant's, contiguous in
    -- node order), cycles before depth, like the compiler: its first problem is ours.
    lo := 1;
    WHILE lo <= n LOOP
        hi := lo;
        WHILE hi < n AND tenant_of[hi + 1] = tenant_of[lo] LOOP
            hi := hi + 1;
        END LOOP;

        FOR root IN lo .. hi LOOP
            CONTINUE WHEN state[root] <> 0;
            sp := 1;
            stack[1] := root;
            next_edge[1] := first[root];
            state[root] := 1;
            on_path_at[root] := 1;
            WHILE sp > 0 LOOP
                v := stack[sp];
                i := next_edge[sp];
                IF i < first[v] + deg[v] THEN
                    next_edge[sp] := i + 1;
                    w := tgt[i];
                    IF state[w] = 0 THEN
                        sp := sp + 1;
                        stack[sp] := w;
                        next_edge[sp] := first[w];
                        state[w] := 1;
                        on_path_at[w] := sp;
                    ELSIF state[w] = 1 THEN
                        -- A back edge: the path from w to here, and back to w.
                        cycle := ARRAY[]::text[];
                        FOR j IN on_path_at[w] .. sp LOOP
                            cycle := cycle || name_of[stack[j]];
                        END LOOP;
                        cycle := cycle || name_of[w];
                        RAISE EXCEPTION USING ERRCODE = 'integrity_constraint_violation', MESSAGE = format(
                            '%s: include cycle `%s`',
                            authz_loc(tenant_of[w], format('role `%s`', name_of[w])), array_to_string(cycle, ' -> '));
                    END IF;
                ELSE
                    -- Every include of v is done: its depth is known.
                    d := 0;
                    FOR j IN first[v] .. first[v] + deg[v] - 1 LOOP
                        d := greatest(d, depth[tgt[j]] + 1);
                    END LOOP;
                    depth[v] := d;
                    state[v] := 2;
                    sp := sp - 1;
                END IF;
            END LOOP;
        END LOOP;

        FOR v IN lo .. hi LOOP
            CONTINUE WHEN depth[v] <= lim;
            -- The chain: from v always on to a deepest include (the last of equals, like
            -- Rust's max_by_key), at most lim + 2 roles.
            chain := ARRAY[name_of[v]];
            w := v;
            WHILE deg[w] > 0 LOOP
                i := tgt[first[w]];
                FOR j IN first[w] + 1 .. first[w] + deg[w] - 1 LOOP
                    IF depth[tgt[j]] >= depth[i] THEN
                        i := tgt[j];
                    END IF;
                END LOOP;
                w := i;
                chain := chain || name_of[w];
                EXIT WHEN cardinality(chain) > lim + 1;
            END LOOP;
            RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = format(
                '%s: include chain `%s%s` is %s deep, more than the limit max_include_depth = %s',
                authz_loc(tenant_of[v], format('role `%s`', name_of[v])), array_to_string(chain, ' -> '),
                CASE WHEN depth[v] + 1 > cardinality(chain) THEN ' -> ...' ELSE '' END, depth[v], lim);
        END LOOP;
        lo := hi + 1;
    END LOOP;
END
$$;

-- Checks one tenant (or, for '', the built-in section and every tenant) against every
-- rule between rows; raises the first problem, naming the tenant and the role, entry or
-- assignment. O(rows of the tenant + rows of the built-in section); for '', O(all rows).
CREATE OR REPLACE FUNCTION authz_validate_tenant(t text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM authz_check_counts(t);
    PERFORM authz_check_references(t);
    PERFORM authz_check_endpoint_conflicts(t);
    PERFORM authz_check_includes(t);
END
$$;

-- The tenants validated in each running transaction, keyed by transaction id. Not a
-- temporary table: a session could fill its own temporary table before committing and
-- so skip validation. Writers have no privilege on this table; only the two SECURITY
-- DEFINER functions below (owned, like it, by the role that migrates) write it. UNLOGGED:
-- it holds nothing worth recovering after a crash. Rows of finished transactions are
-- removed by later writes (skipping rows another writer is removing at the same time).
CREATE UNLOGGED TABLE authz_validated (
    xact xid8 NOT NULL,
    tenant_id text NOT NULL,
    PRIMARY KEY (xact, tenant_id)
);
REVOKE ALL ON authz_validated FROM PUBLIC;

-- Both are SECURITY DEFINER with a fixed search_path (this schema, then pg_temp last), so
-- a session's own temporary `authz_validated` cannot stand in for the real one.
-- The deferred constraint trigger: validates each tenant a transaction touched, once, at
-- commit. Once '' (everything) is validated, the other tenants need not be again.
DO $do$ BEGIN EXECUTE format($fmt$
CREATE OR REPLACE FUNCTION authz_validate() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = %1$I, pg_temp AS $body$
DECLARE
    t text := authz_row_tenant(TG_TABLE_NAME, CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) ELSE to_jsonb(NEW) END);
    me xid8 := pg_current_xact_id();
BEGIN
    -- A keyed set, so a transaction touching thousands of tenants pays one lookup per
    -- row, not a scan of everything so far.
    IF t <> '' AND EXISTS (SELECT 1 FROM authz_validated WHERE xact = me AND tenant_id = '') THEN
        RETURN NULL;
    END IF;
    INSERT INTO authz_validated VALUES (me, t) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM authz_validate_tenant(t);
    RETURN NULL;
END
$body$
$fmt$, current_schema()); END $do$;

-- A write statement makes earlier validations of its transaction stale. With the default
-- (deferred) triggers this changes nothing: every validation runs at commit, after the
-- last write. After `SET CONSTRAINTS ALL IMMEDIATE` the validations run at the end of
-- each statement, and without this a later statement could change a tenant validated
-- before it and commit unchecked. Also removes the rows of finished transactions.
DO $do$ BEGIN EXECUTE format($fmt$
CREATE FUNCTION authz_forget_validated() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = %1$I, pg_temp AS $body$
BEGIN
    DELETE FROM authz_validated WHERE ctid IN (
        SELECT ctid FROM authz_validated
         WHERE xact = pg_current_xact_id()
            OR xact < pg_snapshot_xmin(pg_current_snapshot())
         FOR UPDATE SKIP LOCKED);
    RETURN NULL;
END
$body$
$fmt$, current_schema()); END $do$;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['role_permissions', 'role_routes', 'authz_limits']
    LOOP
        EXECUTE format('CREATE CONSTRAINT TRIGGER %I_validate AFTER INSERT OR UPDATE OR DELETE ON %I
                        DEFERRABLE INITIALLY DEFERRED
                        FOR EACH ROW EXECUTE FUNCTION authz_validate()', t, t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['roles', 'role_includes', 'role_permissions', 'role_routes',
        'endpoints', 'default_roles', 'assignments', 'authz_limits']
    LOOP
        EXECUTE format('CREATE TRIGGER %I_forget_validated BEFORE INSERT OR UPDATE OR DELETE ON %I
                        FOR EACH STATEMENT EXECUTE FUNCTION authz_forget_validated()', t, t);
    END LOOP;
END
$$;

-- A row never moves to another tenant (or a tenant to another id): change capture and
-- validation follow the row's tenant, and a move would change two tenants while naming
-- one, so replicas would miss the change to the tenant the row left. Delete the row and
-- insert it in the other tenant instead (one transaction: one revision).
CREATE FUNCTION authz_keep_tenant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF authz_row_tenant(TG_TABLE_NAME, to_jsonb(OLD)) IS DISTINCT FROM
       authz_row_tenant(TG_TABLE_NAME, to_jsonb(NEW)) THEN
        RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = format(
            'tenant `%s`, %s: a row cannot move to another tenant (`%s`); delete it and insert it there',
            authz_row_tenant(TG_TABLE_NAME, to_jsonb(OLD)), TG_TABLE_NAME,
            authz_row_tenant(TG_TABLE_NAME, to_jsonb(NEW)));
    END IF;
    RETURN NEW;
END
$$;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'roles', 'role_includes', 'role_permissions',
        'role_routes', 'endpoints', 'default_roles', 'subjects', 'groups', 'group_members',
        'assignments']
    LOOP
        EXECUTE format('CREATE TRIGGER %I_keep_tenant BEFORE UPDATE ON %I
                        FOR EACH ROW EXECUTE FUNCTION authz_keep_tenant()', t, t);
    END LOOP;
END
$$;

-- ---------------------------------------------------------------- existing rows

-- Rows written before this migration are held to the same rules: the migration refuses
-- to apply over data the compiler would refuse (fix the rows it names, then migrate).
DO $$
DECLARE
    problem text;
BEGIN
    SELECT p INTO problem FROM (
        SELECT authz_row_problem(x) AS p FROM tenants x
        UNION ALL SELECT authz_row_problem(x) FROM roles x
        UNION ALL SELECT authz_row_problem(x) FROM role_permissions x
        UNION ALL SELECT authz_row_problem(x) FROM role_routes x
        UNION ALL SELECT authz_row_problem(x) FROM endpoints x
        UNION ALL SELECT authz_row_problem(x) FROM subjects x
        UNION ALL SELECT authz_row_problem(x) FROM groups x
        UNION ALL SELECT authz_row_problem(x) FROM assignments x
    ) q WHERE p IS NOT NULL LIMIT 1;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'check_violation',
            MESSAGE = format('existing data breaks a policy rule: %s', problem),
            HINT = 'fix the row, then run the migration again (docs/policy-rules.md lists the rules)';
    END IF;
    PERFORM authz_validate_tenant('');
END
$$;
