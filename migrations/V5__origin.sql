-- authz schema, version 5: where each row's last write came from.
--
-- Every policy row (not tenants, which carry nothing but their id) records whether its
-- last INSERT or UPDATE came from a document apply (`authzd policy apply`, ApplyPolicy),
-- which set `authz.origin = 'document'` for their transaction, or from anything else:
-- the admin API's writes and plain SQL (`api`). A document apply that would delete
-- `api` rows refuses unless forced, so an apply never silently erases what was written
-- through the admin API since. Rows that existed before this migration count as
-- `document`: their origin is unknown, and an upgrade must not block the next apply.
-- A BEFORE trigger stamps the column, so no writer has to name it.

CREATE FUNCTION authz_stamp_origin() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.origin := CASE WHEN current_setting('authz.origin', true) = 'document'
                       THEN 'document' ELSE 'api' END;
    RETURN NEW;
END $$;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['roles', 'role_includes', 'role_permissions', 'role_routes',
                             'endpoints', 'default_roles', 'subjects', 'groups',
                             'group_members', 'assignments'] LOOP
        EXECUTE format('ALTER TABLE %I ADD COLUMN origin text NOT NULL DEFAULT ''document''
                        CHECK (origin IN (''document'', ''api''))', t);
        EXECUTE format('CREATE TRIGGER %I_origin BEFORE INSERT OR UPDATE ON %I
                        FOR EACH ROW EXECUTE FUNCTION authz_stamp_origin()', t, t);
    END LOOP;
END $$;
