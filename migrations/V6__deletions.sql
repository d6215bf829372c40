-- authz schema, version 6: rows deleted outside a document apply.
--
-- Migration V5 records where each row's last write came from, so a document apply that
-- would delete or overwrite a row the admin API wrote refuses unless forced. A deletion
-- leaves no row to carry that mark: an assignment revoked through the admin API would
-- be granted again by the next apply of a document that still has it. This table keeps
-- one entry per row key deleted by anything but a document apply (the admin API, plain
-- SQL, a cascade from either), until a row with that key exists again; an apply that
-- would re-create such a row refuses unless forced (`authzd policy apply --force`,
-- ApplyPolicy's `force`).
--
-- A row's key is its natural key as a JSON object of the key columns, the same columns
-- `authzd policy apply` identifies rows by (src/store/sync.rs `TABLES`): never a serial.
--
-- TRUNCATE fires no row trigger: it would write no change row, bump no revision, wake
-- no replica and leave nothing here. It is refused on the policy tables (DELETE does the
-- same and is captured), and on the change log and this table, whose rows are pruned
-- deliberately with DELETE (docs/policy-diff.md, docs/operations.md).

CREATE TABLE authz_deleted (
    entity text NOT NULL,
    tenant_id text NOT NULL,
    key jsonb NOT NULL,
    -- The revision of the deletion.
    revision bigint NOT NULL,
    PRIMARY KEY (entity, key)
);

-- The natural key of a row of `entity`, as a JSON object of its key columns.
CREATE FUNCTION authz_natural_key(entity text, r jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE entity
        WHEN 'tenants' THEN jsonb_build_object('id', r -> 'id')
        WHEN 'roles' THEN jsonb_build_object('tenant_id', r -> 'tenant_id', 'id', r -> 'id')
        WHEN 'role_includes' THEN jsonb_build_object('tenant_id', r -> 'tenant_id',
            'role_id', r -> 'role_id', 'included', r -> 'included')
        WHEN 'role_permissions' THEN jsonb_build_object('tenant_id', r -> 'tenant_id',
            'role_id', r -> 'role_id', 'permission', r -> 'permission')
        WHEN 'role_routes' THEN jsonb_build_object('tenant_id', r -> 'tenant_id',
            'role_id', r -> 'role_id', 'position', r -> 'position')
        WHEN 'endpoints' THEN jsonb_build_object('tenant_id', r -> 'tenant_id',
            'position', r -> 'position')
        WHEN 'default_roles' THEN jsonb_build_object('tenant_id', r -> 'tenant_id',
            'role_id', r -> 'role_id')
        WHEN 'subjects' THEN jsonb_build_object('tenant_id', r -> 'tenant_id', 'id', r -> 'id')
        WHEN 'groups' THEN jsonb_build_object('tenant_id', r -> 'tenant_id', 'id', r -> 'id')
        WHEN 'group_members' THEN jsonb_build_object('tenant_id', r -> 'tenant_id',
            'group_id', r -> 'group_id', 'subject_id', r -> 'subject_id')
        WHEN 'assignments' THEN jsonb_build_object('tenant_id', r -> 'tenant_id',
            'subject_id', r -> 'subject_id', 'group_id', r -> 'group_id',
            'role_id', r -> 'role_id', 'scope', r -> 'scope')
    END
$$;

-- Statement-level, over the statement's transition tables: one set-based pass per
-- statement, so a bulk apply's INSERT of many rows costs one join against this table,
-- not one lookup per row.
CREATE FUNCTION authz_track_deletions() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- Set by the row-level capture trigger, which has run for every row of the
    -- statement before a statement-level AFTER trigger fires.
    rev bigint := coalesce(NULLIF(current_setting('authz.revision', true), '')::bigint, 0);
BEGIN
    -- Keys that exist again (whoever wrote them): nothing left to protect.
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        DELETE FROM authz_deleted d
         USING (SELECT DISTINCT authz_natural_key(TG_TABLE_NAME, to_jsonb(n)) AS key
                  FROM authz_new_rows n) k
         WHERE d.entity = TG_TABLE_NAME AND d.key = k.key;
    END IF;
    -- Keys gone (deleted, or moved by an UPDATE of a key column) outside a document
    -- apply.
    IF TG_OP IN ('DELETE', 'UPDATE')
       AND current_setting('authz.origin', true) IS DISTINCT FROM 'document' THEN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO authz_deleted (entity, tenant_id, key, revision)
            SELECT DISTINCT ON (key) TG_TABLE_NAME, tenant_id, key, rev FROM (
                SELECT authz_row_tenant(TG_TABLE_NAME, to_jsonb(o)) AS tenant_id,
                       authz_natural_key(TG_TABLE_NAME, to_jsonb(o)) AS key
                  FROM authz_old_rows o) gone
            ON CONFLICT (entity, key) DO UPDATE
               SET revision = EXCLUDED.revision, tenant_id = EXCLUDED.tenant_id;
        ELSE
            INSERT INTO authz_deleted (entity, tenant_id, key, revision)
            SELECT DISTINCT ON (key) TG_TABLE_NAME, tenant_id, key, rev FROM (
                SELECT authz_row_tenant(TG_TABLE_NAME, to_jsonb(o)) AS tenant_id,
                       authz_natural_key(TG_TABLE_NAME, to_jsonb(o)) AS key
                  FROM authz_old_rows o) gone
             WHERE NOT EXISTS (SELECT 1 FROM authz_new_rows n
                                WHERE authz_natural_key(TG_TABLE_NAME, to_jsonb(n)) = gone.key)
            ON CONFLICT (entity, key) DO UPDATE
               SET revision = EXCLUDED.revision, tenant_id = EXCLUDED.tenant_id;
        END IF;
    END IF;
    RETURN NULL;
END $$;

-- A trigger with transition tables fires for one kind of statement each.
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'roles', 'role_includes', 'role_permissions',
                             'role_routes', 'endpoints', 'default_roles', 'subjects',
                             'groups', 'group_members', 'assignments'] LOOP
        EXECUTE format('CREATE TRIGGER %I_deletion_insert AFTER INSERT ON %I
                        REFERENCING NEW TABLE AS authz_new_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION authz_track_deletions()', t, t);
        EXECUTE format('CREATE TRIGGER %I_deletion_update AFTER UPDATE ON %I
                        REFERENCING OLD TABLE AS authz_old_rows NEW TABLE AS authz_new_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION authz_track_deletions()', t, t);
        EXECUTE format('CREATE TRIGGER %I_deletion_delete AFTER DELETE ON %I
                        REFERENCING OLD TABLE AS authz_old_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION authz_track_deletions()', t, t);
    END LOOP;
END $$;

CREATE FUNCTION authz_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE % is refused: it bypasses the change log (replicas would not see it); use DELETE', TG_TABLE_NAME
        USING ERRCODE = 'feature_not_supported';
END $$;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'roles', 'role_includes', 'role_permissions',
                             'role_routes', 'endpoints', 'default_roles', 'subjects',
                             'groups', 'group_members', 'assignments', 'authz_changes',
                             'authz_deleted'] LOOP
        EXECUTE format('CREATE TRIGGER %I_no_truncate BEFORE TRUNCATE ON %I
                        FOR EACH STATEMENT EXECUTE FUNCTION authz_no_truncate()', t, t);
    END LOOP;
END $$;
