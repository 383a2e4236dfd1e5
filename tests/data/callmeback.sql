-- A callmeback-like database (seed 000: PostgreSQL "callmeback" behind db-proxy):
-- JSONB columns, a trigger, a function, a sequence, a view, and a non-superuser
-- role that owns the tables. Used by tests and by `make demo`.
-- :owner is the owning role; it must exist.
CREATE SEQUENCE call_number_seq START 1000;

CREATE TABLE contacts (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    phone text NOT NULL UNIQUE,
    tags jsonb NOT NULL DEFAULT '[]',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE calls (
    id bigserial PRIMARY KEY,
    call_number integer NOT NULL DEFAULT nextval('call_number_seq'),
    contact_id bigint NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    transcript jsonb NOT NULL,
    duration_s integer NOT NULL CHECK (duration_s >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX calls_transcript_gin ON calls USING gin (transcript);

CREATE TABLE call_audit (
    id bigserial PRIMARY KEY,
    call_id bigint NOT NULL,
    action text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER contacts_touch BEFORE UPDATE ON contacts
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE FUNCTION audit_call() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO call_audit (call_id, action) VALUES (NEW.id, TG_OP);
    RETURN NEW;
END $$;

CREATE TRIGGER calls_audit AFTER INSERT ON calls
    FOR EACH ROW EXECUTE FUNCTION audit_call();

CREATE VIEW call_stats AS
    SELECT c.id AS contact_id, c.name, count(k.id) AS calls, sum(k.duration_s) AS seconds
    FROM contacts c LEFT JOIN calls k ON k.contact_id = c.id GROUP BY c.id, c.name;

INSERT INTO contacts (name, phone, tags)
SELECT 'Contact ' || g, '+1555' || lpad(g::text, 7, '0'),
       jsonb_build_array('tag' || (g % 7), CASE WHEN g % 3 = 0 THEN 'vip' ELSE 'std' END)
FROM generate_series(1, 500) g;

INSERT INTO calls (contact_id, transcript, duration_s)
SELECT 1 + (g % 500),
       jsonb_build_object('turns', jsonb_build_array(
           jsonb_build_object('role', 'caller', 'text', 'Hello, this is call ' || g || ' — café ✓'),
           jsonb_build_object('role', 'agent', 'text', repeat('ok ', g % 40))),
         'lang', CASE WHEN g % 2 = 0 THEN 'en' ELSE 'es' END),
       g % 900
FROM generate_series(1, 3000) g;

UPDATE contacts SET tags = tags || '["updated"]' WHERE id % 50 = 0;

ALTER SEQUENCE call_number_seq OWNER TO :"owner";
ALTER TABLE contacts OWNER TO :"owner";
ALTER TABLE calls OWNER TO :"owner";
ALTER TABLE call_audit OWNER TO :"owner";
ALTER VIEW call_stats OWNER TO :"owner";
ALTER FUNCTION touch_updated_at() OWNER TO :"owner";
ALTER FUNCTION audit_call() OWNER TO :"owner";
GRANT SELECT ON call_stats TO PUBLIC;
