-- Objects the probe module needs; the tests create them, the migrations do not.
DROP SCHEMA IF EXISTS probe CASCADE;
CREATE SCHEMA probe;
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
