#!/usr/bin/env bash
# Measures MariaDB's MDEV-26048 on this server: a statement executed again and again
# (a prepared INSERT inside a procedure's loop) fails with 1146 on a table that exists
# when its table's triggers change a second time. turnout refuses plans of several
# tables on MariaDB while this reproduces (README, "Several tables in one plan"); run it
# against a new server version to see whether the refusal can go.
#
#   scripts/mdev-26048.sh [ROUNDS]      (default 6; needs the `mariadb` client)
#
# Connection: MYSQL_HOST (127.0.0.1), MYSQL_PORT (3306), MYSQL_USER (root), no password.
# It creates and drops the database `turnout_mdev_26048`.
set -u
rounds=${1:-6}
db=turnout_mdev_26048
client=(mariadb -u"${MYSQL_USER:-root}" -h"${MYSQL_HOST:-127.0.0.1}" -P"${MYSQL_PORT:-3306}" -N)

# One scenario: SETUP runs before the loop starts, CHANGE while it runs.
scenario() {
  local name=$1 setup=$2 change=$3 failed=0
  for _ in $(seq 1 "$rounds"); do
    "${client[@]}" -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db"
    "${client[@]}" "$db" -e "
      CREATE TABLE t1 (a INT, b INT); CREATE TABLE t3 (a INT, b INT); CREATE TABLE t4 (a INT);
      CREATE TABLE t1b (a INT, b INT);
      CREATE TRIGGER t1b_ai AFTER INSERT ON t1b FOR EACH ROW INSERT INTO t4 VALUES (1);
      $setup
      DELIMITER //
      CREATE PROCEDURE loop_insert() BEGIN
        DECLARE i INT DEFAULT 1;
        PREPARE s FROM 'INSERT INTO t1 VALUES (?, 1)';
        WHILE i <= 20000 DO EXECUTE s USING i; SET i = i + 1; END WHILE;
      END //
      DELIMITER ;" || exit 1
    local err
    err=$(mktemp)
    "${client[@]}" "$db" -e "CALL loop_insert()" 2>"$err" &
    local loop=$!
    sleep 0.2
    "${client[@]}" "$db" -e "$change" >/dev/null
    wait "$loop"
    if grep -q 1146 "$err"; then
      failed=$((failed + 1))
    elif [ -s "$err" ]; then
      cat "$err" >&2
      exit 1
    fi
    rm -f "$err"
  done
  printf '%-58s %d of %d runs failed with 1146\n' "$name" "$failed" "$rounds"
}

"${client[@]}" -e "SELECT VERSION()"
scenario "one trigger created (first change since prepare)" "" \
  "CREATE TRIGGER t1_ai AFTER INSERT ON t1 FOR EACH ROW INSERT INTO t3 VALUES (1, 1)"
scenario "ALTER TABLE, then one trigger" "" \
  "ALTER TABLE t1 COMMENT = 'x'; CREATE TRIGGER t1_ai AFTER INSERT ON t1 FOR EACH ROW INSERT INTO t3 VALUES (1, 1)"
scenario "two triggers, each naming a new table" "" \
  "CREATE TRIGGER t1_ai AFTER INSERT ON t1 FOR EACH ROW INSERT INTO t3 VALUES (1, 1);
   CREATE TRIGGER t1_ai2 AFTER INSERT ON t1 FOR EACH ROW INSERT INTO t4 VALUES (1)"
scenario "two triggers, each under its own LOCK TABLES" "" \
  "LOCK TABLES t1 WRITE, t3 WRITE; CREATE TRIGGER t1_ad AFTER DELETE ON t1 FOR EACH ROW DELETE FROM t3; UNLOCK TABLES;
   LOCK TABLES t1 WRITE, t3 WRITE; CREATE TRIGGER t1_ai AFTER INSERT ON t1 FOR EACH ROW INSERT INTO t3 VALUES (1, 1); UNLOCK TABLES"
scenario "two triggers under one LOCK TABLES" "" \
  "LOCK TABLES t1 WRITE, t3 WRITE; CREATE TRIGGER t1_ad AFTER DELETE ON t1 FOR EACH ROW DELETE FROM t3;
   CREATE TRIGGER t1_ai AFTER INSERT ON t1 FOR EACH ROW INSERT INTO t3 VALUES (1, 1); UNLOCK TABLES"
scenario "RENAME TABLE swap, then a trigger naming a new table" "" \
  "RENAME TABLE t1 TO t1x, t1b TO t1;
   CREATE TRIGGER t1_ai AFTER INSERT ON t1 FOR EACH ROW INSERT INTO t3 VALUES (1, 1)"
"${client[@]}" -e "DROP DATABASE IF EXISTS $db"
