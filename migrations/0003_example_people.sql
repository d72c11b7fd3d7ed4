-- People of the seed's example module, upserted by name.
CREATE TABLE example_people (
    id bigserial PRIMARY KEY,
    name text NOT NULL CONSTRAINT example_people_name_key UNIQUE,
    email text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
