-- Accounts of the accounts module: money never goes below zero.
CREATE TABLE accounts (
    id bigserial PRIMARY KEY,
    owner text NOT NULL,
    balance numeric(14, 2) NOT NULL DEFAULT 0 CONSTRAINT balance_not_negative CHECK (balance >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
