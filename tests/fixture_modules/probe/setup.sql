-- Objects the probe module needs; the tests create them, the migrations do not.
-- The schema is the tests' own, its comment says so: a schema probe of anyone else's in the server of
-- TEST_DATABASE_URL stops the run rather than being dropped (trial BU: a user's probe schema, a view on it, went).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_namespace WHERE nspname = 'probe' AND obj_description(oid, 'pg_namespace')
               IS DISTINCT FROM 'dbapi test fixture: each test run drops and makes it again') THEN
        RAISE EXCEPTION 'The test database has a schema probe that is not the tests'' own (its comment does not '
                        'say so), and the tests would drop it: run them on another database, or, if an older '
                        'dbapi made it, drop it (DROP SCHEMA probe CASCADE).';
    END IF;
END $$;
DROP SCHEMA IF EXISTS probe CASCADE;
CREATE SCHEMA probe;
COMMENT ON SCHEMA probe IS 'dbapi test fixture: each test run drops and makes it again';
CREATE TABLE probe.parents (id int PRIMARY KEY);
CREATE TABLE probe.things (
    id serial PRIMARY KEY,
    code text UNIQUE,
    parent_id int REFERENCES probe.parents (id),
    label text NOT NULL DEFAULT 'x',
    quantity int CHECK (quantity >= 0)
);
CREATE TABLE probe.bookings (id serial PRIMARY KEY, during int4range, EXCLUDE USING gist (during WITH &&));
CREATE TABLE probe.children (id int PRIMARY KEY,
                             parent_id int REFERENCES probe.parents (id) DEFERRABLE INITIALLY DEFERRED);
CREATE TABLE probe.keys (key text PRIMARY KEY);
CREATE VIEW probe.few_things AS SELECT * FROM probe.things WHERE quantity < 10 WITH CHECK OPTION;
CREATE SEQUENCE probe.attempts;
CREATE FUNCTION probe.refuse(message text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', message;
END $$;
CREATE FUNCTION probe.add(a int, b int) RETURNS int LANGUAGE sql AS 'SELECT a + b';
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dbapi_probe_nobody') THEN
        CREATE ROLE dbapi_probe_nobody NOLOGIN;
    END IF;
END $$;
CREATE TABLE probe."odd table" (id serial PRIMARY KEY, "select" text UNIQUE, "na me" text);
