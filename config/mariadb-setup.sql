-- A database and a least-privilege user for clipwatch on MariaDB 11.7+ (11.8 LTS). Run it as an administrator:
--   mariadb -u root -p < config/mariadb-setup.sql
-- after replacing 'change-me' (or use `ALTER USER` afterwards). tests/test_cli.py runs this very file.
CREATE DATABASE IF NOT EXISTS clipwatch CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE USER IF NOT EXISTS 'clipwatch'@'%' IDENTIFIED BY 'change-me';
-- The daemon reads, inserts, updates and deletes rows of its table. CREATE lets it create the table on
-- first start, ALTER add the columns a newer version keeps to a table made by an older one (README "File
-- hashes in each row"); where an administrator runs `clipwatch db init` instead, grant only the first four.
GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER ON clipwatch.* TO 'clipwatch'@'%';
