-- The strictest grants on MariaDB 11.7+ (the same statements as MySQL 9's): the daemon may only read and write its own six tables, and create nothing.
-- First create them as an administrator (clipwatch db init with an administrator's store.url or
-- CLIPWATCH_STORE__URL), then run this as a MariaDB administrator:
--   mariadb -u root -p < config/mariadb-strict-grants.sql
-- (for another store.table, replace `images` below). tests/test_cli.py runs this very file.
-- images: one row per image; images_deleted: tombstones for other servers' indexes; images_decisions: what
-- people decided about verdicts (clipwatch dismiss / confirm); images_moves: the journal of file moves; images_actions: the history of actions;
-- images_instances: the instance registry (which host and data directory runs each instance's daemon).
REVOKE ALL PRIVILEGES, GRANT OPTION FROM 'clipwatch'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON clipwatch.images TO 'clipwatch'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON clipwatch.images_deleted TO 'clipwatch'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON clipwatch.images_decisions TO 'clipwatch'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON clipwatch.images_moves TO 'clipwatch'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON clipwatch.images_actions TO 'clipwatch'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON clipwatch.images_instances TO 'clipwatch'@'%';
