-- The least-privilege PostgreSQL roles of the runbooks (PostgreSQL 15; why each grant: docs/least-privilege.md).
--
-- Run once per cluster as a superuser; rerunning creates only what is missing:
--   psql "postgresql://postgres@db-host/postgres" -v owner=trading_user -v database=trading_db \
--        -f deployments/roles.sql
--   owner     the role that owns the platform's databases and their objects (default trading_user)
--   database  the database whose monitored tables rb_freshness reads (default trading_db)
-- Then give each login role a password (psql: \password rb_backup), store it in the Prefect Secret block the
-- runbook's deployment names, and point that deployment's DSNs at the role (docs/least-privilege.md, "How the
-- runbooks connect").
-- No password appears in this file. tests/test_least_privilege.py runs this very file and each runbook with it.

\set ON_ERROR_STOP on
\if :{?owner}
\else
  \set owner trading_user
\endif
\if :{?database}
\else
  \set database trading_db
\endif

SELECT format('CREATE ROLE %I LOGIN', name)
FROM unnest(ARRAY['rb_backup', 'rb_restore', 'rb_cleanup', 'rb_freshness', 'rb_health', 'rb_connections']) AS name
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name) \gexec

-- backup: pg_dump of every database and pg_dumpall --globals-only (which reads pg_authid: this role sees the
-- password hashes, as the globals backup must). Large objects are NOT covered by pg_read_all_data: grant SELECT
-- on them one by one, or the backup fails (it never skips them). Row-level security is not bypassed either.
GRANT pg_read_all_data TO rb_backup;

-- restore: create the copy (CREATEDB), keep the restored objects' owners and replace the owner's database
-- (membership in the owner), end the live database's sessions on replace (pg_signal_backend), and read
-- data_directory for the free-space check (pg_read_all_settings). CREATEROLE only if restores must recreate
-- roles missing from the cluster: ALTER ROLE rb_restore CREATEROLE;
ALTER ROLE rb_restore CREATEDB;
GRANT pg_signal_backend, pg_read_all_settings TO rb_restore;
GRANT :"owner" TO rb_restore;

-- disk cleanup: sizes and the kept-database report need only LOGIN; VACUUM (ANALYZE) of the owner's tables and
-- DROP DATABASE of a copy a replace restore kept need the owner's privileges (PostgreSQL 15 has no pg_maintain).
-- A cleanup that only reports can do without this grant.
GRANT :"owner" TO rb_cleanup;

-- database connections: every session's state, role and query (pg_read_all_stats), and ending the idle
-- transactions of non-superusers (pg_signal_backend; never a superuser's, whatever is granted).
GRANT pg_read_all_stats, pg_signal_backend TO rb_connections;

-- data freshness: SELECT on the monitored tables and on what [databases.<name>.checks] read, nothing else
-- (the USD/COP playbook's bars table, the incident response playbook's integrity checks on positions and trades). Adapt the list to your settings.
\connect :"database"
GRANT USAGE ON SCHEMA public TO rb_freshness;
GRANT SELECT ON public.ohlcv_usdcop_5m, public.positions, public.trades TO rb_freshness;

-- health check: LOGIN and the CONNECT every role has through PUBLIC (SELECT 1, pg_stat_activity, settings).
