-- authz schema, version 1.
--
-- The database is the source of truth; every authzd replica holds all of it in memory.
-- Every committed write gets a revision and a change-log entry (by trigger, so writes
-- from any client are captured), and NOTIFY `authz_changes` with the revision wakes the
-- replicas, which catch up from the change log. Bad data is rejected before commit by
-- keys, checks and deferred validation triggers.
--
-- The pseudo-tenant '' owns the built-in roles and the endpoint table shared by all
-- tenants.

-- The global revision. Writers serialize on this one row (the first change of a
-- transaction bumps it and holds the row lock until commit), so revisions commit in
-- order and a reader catching up "after revision N" can never miss a change.
CREATE TABLE authz_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    revision bigint NOT NULL
);
INSERT INTO authz_state VALUES (true, 0);

CREATE TABLE authz_changes (
    seq bigserial PRIMARY KEY,
    revision bigint NOT NULL,
    tenant_id text NOT NULL,
    entity text NOT NULL,
    op text NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE')),
    old jsonb,
    new jsonb,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX authz_changes_revision ON authz_changes (revision);

CREATE TABLE tenants (
    id text PRIMARY KEY
        CHECK (id = '' OR (length(id) <= 128 AND id !~ '[[:space:][:cntrl:]]'))
);
INSERT INTO tenants VALUES ('');

CREATE TABLE roles (
    tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id text NOT NULL CHECK (id ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    description text NOT NULL DEFAULT '',
    -- Creation order: roles are compiled in this order, so role indexes stay stable.
    position bigserial NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- A role's `includes`, by role id: a custom role of the same tenant or a built-in role.
CREATE TABLE role_includes (
    tenant_id text NOT NULL,
    role_id text NOT NULL,
    included text NOT NULL,
    position int NOT NULL,
    PRIMARY KEY (tenant_id, role_id, included),
    FOREIGN KEY (tenant_id, role_id) REFERENCES roles (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE role_permissions (
    tenant_id text NOT NULL,
    role_id text NOT NULL,
    permission text NOT NULL CHECK (permission ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    PRIMARY KEY (tenant_id, role_id, permission),
    FOREIGN KEY (tenant_id, role_id) REFERENCES roles (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE role_routes (
    tenant_id text NOT NULL,
    role_id text NOT NULL,
    position int NOT NULL,
    methods text[] NOT NULL CHECK (cardinality(methods) > 0),
    path text NOT NULL CHECK (path LIKE '/%'),
    PRIMARY KEY (tenant_id, role_id, position),
    FOREIGN KEY (tenant_id, role_id) REFERENCES roles (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE endpoints (
    tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    position int NOT NULL,
    path text NOT NULL CHECK (path LIKE '/%'),
    methods text[] NOT NULL CHECK (cardinality(methods) > 0),
    roles text[] NOT NULL DEFAULT '{}',
    public boolean NOT NULL DEFAULT false,
    CHECK (public = (cardinality(roles) = 0)),
    PRIMARY KEY (tenant_id, position)
);

CREATE TABLE default_roles (
    tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE CHECK (tenant_id <> ''),
    role_id text NOT NULL,
    position int NOT NULL,
    PRIMARY KEY (tenant_id, role_id)
);

CREATE TABLE subjects (
    tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE CHECK (tenant_id <> ''),
    id text NOT NULL CHECK (length(id) BETWEEN 1 AND 256 AND id !~ '[[:space:][:cntrl:]]'),
    disabled boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE groups (
    tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE CHECK (tenant_id <> ''),
    id text NOT NULL CHECK (length(id) BETWEEN 1 AND 256 AND id !~ '[[:space:][:cntrl:]]'),
    position bigserial NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE group_members (
    tenant_id text NOT NULL,
    group_id text NOT NULL,
    subject_id text NOT NULL,
    PRIMARY KEY (tenant_id, group_id, subject_id),
    FOREIGN KEY (tenant_id, group_id) REFERENCES groups (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, subject_id) REFERENCES subjects (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE assignments (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL CHECK (tenant_id <> ''),
    subject_id text,
    group_id text,
    role_id text NOT NULL,
    scope text NOT NULL DEFAULT ''
        CHECK (scope = '' OR (length(scope) <= 1024
            AND scope ~ '^[^/[:space:][:cntrl:]]+(/[^/[:space:][:cntrl:]]+)*$'
            AND ('/' || scope || '/') !~ '/\.\.?/')),
    CHECK ((subject_id IS NULL) <> (group_id IS NULL)),
    UNIQUE NULLS NOT DISTINCT (tenant_id, subject_id, group_id, role_id, scope),
    FOREIGN KEY (tenant_id, subject_id) REFERENCES subjects (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, group_id) REFERENCES groups (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX assignments_tenant ON assignments (tenant_id);

-- ---------------------------------------------------------------- change capture

-- The tenant a row belongs to (`tenants` rows are their own tenant).
CREATE FUNCTION authz_row_tenant(entity text, r jsonb) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN entity = 'tenants' THEN r ->> 'id' ELSE r ->> 'tenant_id' END
$$;

CREATE FUNCTION authz_capture() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    rev bigint := NULLIF(current_setting('authz.revision', true), '')::bigint;
    row_tenant text;
BEGIN
    IF rev IS NULL THEN
        UPDATE authz_state SET revision = revision + 1 RETURNING revision INTO rev;
        PERFORM set_config('authz.revision', rev::text, true);
        -- Delivered at commit, in commit order; the payload only wakes listeners up.
        PERFORM pg_notify('authz_changes', rev::text);
    END IF;
    row_tenant := authz_row_tenant(TG_TABLE_NAME, CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) ELSE to_jsonb(NEW) END);
    INSERT INTO authz_changes (revision, tenant_id, entity, op, old, new)
    VALUES (
        rev, row_tenant, TG_TABLE_NAME, TG_OP,
        CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
        CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END
    );
    RETURN NULL;
END
$$;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'roles', 'role_includes', 'role_permissions',
        'role_routes', 'endpoints', 'default_roles', 'subjects', 'groups', 'group_members',
        'assignments']
    LOOP
        EXECUTE format('CREATE TRIGGER %I_capture AFTER INSERT OR UPDATE OR DELETE ON %I
                        FOR EACH ROW EXECUTE FUNCTION authz_capture()', t, t);
    END LOOP;
END
$$;

-- ---------------------------------------------------------------- validation

-- Checks one tenant's references (or, for '', every tenant's references to built-in
-- roles) and include cycles; raises with a message naming the tenant and the role.
CREATE FUNCTION authz_validate_tenant(t text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    bad record;
    cycle text[];
BEGIN
    -- A custom role may not reuse a built-in role's id.
    SELECT r.tenant_id, r.id INTO bad FROM roles r JOIN roles b ON b.tenant_id = '' AND b.id = r.id
    WHERE r.tenant_id <> '' AND (t = '' OR r.tenant_id = t) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'tenant `%`, role `%`: custom role reuses the id of a built-in role', bad.tenant_id, bad.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    -- Every role reference resolves: a custom role of the tenant or a built-in role;
    -- built-in roles and global endpoints may only name built-in roles.
    SELECT x.tenant_id, x.what, x.name INTO bad FROM (
        SELECT i.tenant_id, format('role `%s` includes', i.role_id) AS what, i.included AS name
          FROM role_includes i WHERE t = '' OR i.tenant_id IN (t, '')
        UNION ALL
        SELECT d.tenant_id, 'default role', d.role_id FROM default_roles d WHERE t = '' OR d.tenant_id = t
        UNION ALL
        SELECT e.tenant_id, format('endpoint `%s %s` names', array_to_string(e.methods, ','), e.path), r
          FROM endpoints e, unnest(e.roles) AS r WHERE t = '' OR e.tenant_id IN (t, '')
        UNION ALL
        SELECT a.tenant_id, format('assignment %s', a.id), a.role_id FROM assignments a WHERE t = '' OR a.tenant_id = t
    ) x
    WHERE NOT EXISTS (SELECT 1 FROM roles r WHERE r.id = x.name AND r.tenant_id IN (x.tenant_id, ''))
    LIMIT 1;
    IF FOUND THEN
        IF bad.tenant_id = '' THEN
            RAISE EXCEPTION '%: `%` is not a built-in role', bad.what, bad.name
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RAISE EXCEPTION 'tenant `%`, %: role `%` is not defined', bad.tenant_id, bad.what, bad.name
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    -- Include cycles, walked from every role of the tenant (custom ids never clash with
    -- built-in ones, so a name resolves the same way everywhere in a tenant).
    WITH RECURSIVE walk (tenant_id, path, cur, closed) AS (
        SELECT i.tenant_id, ARRAY[i.role_id, i.included], i.included, i.included = i.role_id
          FROM role_includes i WHERE t = '' OR i.tenant_id IN (t, '')
        UNION ALL
        SELECT w.tenant_id, w.path || i.included, i.included, i.included = ANY (w.path)
          FROM walk w JOIN role_includes i
            ON i.role_id = w.cur AND i.tenant_id IN (w.tenant_id, '')
         WHERE NOT w.closed
    )
    SELECT path INTO cycle FROM walk WHERE closed AND cur = path[1] LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'role `%`: include cycle `%`', cycle[1], array_to_string(cycle, ' -> ')
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
END
$$;

-- Runs once per tenant per transaction, at commit (deferred), after all of the
-- transaction's statements: a transaction may pass through invalid states (delete a role,
-- then its references), but never commit one.
CREATE FUNCTION authz_validate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t text := authz_row_tenant(TG_TABLE_NAME, CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) ELSE to_jsonb(NEW) END);
BEGIN
    -- The tenants validated in this transaction: a keyed set, so a transaction touching
    -- thousands of tenants pays one lookup per row, not a scan of everything so far.
    IF to_regclass('pg_temp.authz_validated') IS NULL THEN
        CREATE TEMP TABLE authz_validated (tenant_id text PRIMARY KEY) ON COMMIT DELETE ROWS;
    END IF;
    INSERT INTO authz_validated VALUES (t) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM authz_validate_tenant(t);
    RETURN NULL;
END
$$;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['roles', 'role_includes', 'endpoints', 'default_roles',
        'assignments']
    LOOP
        EXECUTE format('CREATE CONSTRAINT TRIGGER %I_validate AFTER INSERT OR UPDATE OR DELETE ON %I
                        DEFERRABLE INITIALLY DEFERRED
                        FOR EACH ROW EXECUTE FUNCTION authz_validate()', t, t);
    END LOOP;
END
$$;
