//! MySQL/MariaDB's type matrix: BIT, YEAR, ENUM, SET, JSON (whitespace kept), every BLOB
//! and TEXT size, BINARY/VARBINARY with trailing zero bytes, DATETIME(6), TIMESTAMP(6)
//! written from other time zones, FLOAT/DOUBLE (−0 included), DECIMAL(65,30), UNSIGNED
//! integers at their maximum, GEOMETRY, 4-byte UTF-8; and a key in a case-insensitive
//! collation ('a' and 'A' are one key). Values are compared as exact text: bytes as hex,
//! TIMESTAMP as its epoch (whatever the session's time zone), long values by md5 and length.

use crate::harness::Kind;
use crate::types_matrix::{Matrix, every_type_migrates_verifies_and_rolls_back};

const CREATE: &str = "CREATE TABLE {t} (id BIGINT PRIMARY KEY, qty BIGINT, tag BIGINT,
 bt BIT(10), yr YEAR, en ENUM('a', 'b', 'c d'), st SET('x', 'y', 'z'), js JSON,
 tb TINYBLOB, bl BLOB, mb MEDIUMBLOB, lb LONGBLOB, tt TINYTEXT, tx TEXT, mt MEDIUMTEXT,
 lt LONGTEXT, bn BINARY(4), vbn VARBINARY(8), dt DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL,
 fl FLOAT, db DOUBLE, de DECIMAL(65,30), ti TINYINT UNSIGNED, si SMALLINT UNSIGNED,
 mi MEDIUMINT UNSIGNED, ii INT UNSIGNED, bi BIGINT UNSIGNED, g GEOMETRY, emo VARCHAR(32))
 DEFAULT CHARSET utf8mb4";

const COLS: &[&str] = &[
    "BIN(bt)",
    "yr",
    "en",
    "st",
    "js",
    "HEX(tb)",
    "HEX(bl)",
    "MD5(mb)",
    "CONCAT(MD5(lb), ':', LENGTH(lb))",
    "tt",
    "tx",
    "CONCAT(MD5(mt), ':', CHAR_LENGTH(mt))",
    "CONCAT(MD5(lt), ':', CHAR_LENGTH(lt))",
    "HEX(bn)",
    "HEX(vbn)",
    "dt",
    "UNIX_TIMESTAMP(ts)",
    "fl",
    "db",
    "de",
    "ti",
    "si",
    "mi",
    "ii",
    "bi",
    "HEX(g)",
    "HEX(emo)",
];

const EDGE: &str = "INSERT INTO kinds VALUES
 (1, 1, 1, b'1111111111', 2155, 'c d', 'x,z', '{\"b\":  1,   \"a\": [1, 2]}', x'00ff00', x'0000', REPEAT(x'ab', 70000), REPEAT(x'cd', 300000), 'tiny', 'text', REPEAT('é', 30000), REPEAT('x', 1048576), x'61000000', x'6100', '2024-02-29 23:59:59.999999', FROM_UNIXTIME(1700000000.123456), 3.40282e38, -0e0, 99999999999999999999999999999999999.999999999999999999999999999999, 255, 65535, 16777215, 4294967295, 18446744073709551615, ST_GeomFromText('POINT(1 2)'), '😀👩‍👩‍👧 4-byte'),
 (2, 2, NULL, b'0', 1901, 'a', '', '[]', x'', x'', x'', x'', '', '', '', '', x'00000000', x'', '1000-01-01 00:00:00', FROM_UNIXTIME(1), 1.17549e-38, 1.7976931348623157e308, -99999999999999999999999999999999999.999999999999999999999999999999, 0, 0, 0, 0, 0, ST_GeomFromText('LINESTRING(0 0, 1 1)'), 'Ελληνικά 中文 עברית'),
 (3, 3, 3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 4, 4, b'1', 0, 'b', 'x,y,z', '{\"k\": \"v\", \"n\": null}', x'00', x'000000', x'00', x'00', ' ', 'trailing  ', 'x', 'y', x'00000000', x'0000', '9999-12-31 23:59:59.999999', FROM_UNIXTIME(2147483647.999999), 0.1, 0.1, 0.000000000000000000000000000001, 127, 32767, 8388607, 2147483647, 9223372036854775808, ST_GeomFromText('POLYGON((0 0, 1 0, 1 1, 0 0))'), '🦀')";

fn matrix() -> Matrix {
    let typed: Vec<String> = COLS.iter().map(|c| format!("CAST({c} AS CHAR)")).collect();
    Matrix {
        create: CREATE.into(),
        seed: vec![
            EDGE.into(),
            "INSERT INTO kinds SELECT id + 900000, qty, tag, bt, yr, en, st, js, tb, bl, mb, lb, tt, tx, mt, lt, bn, vbn, dt, ts, fl, db, de, ti, si, mi, ii, bi, g, emo FROM kinds".into(),
            "INSERT INTO kinds (id, qty, tag, bl, js, db, de, tx) WITH RECURSIVE s(k) AS (SELECT 5 UNION ALL SELECT k + 1 FROM s WHERE k < 200) SELECT k, k % 17, k % 5, UNHEX(MD5(k)), JSON_OBJECT('k', k), k / 7, k * 1.5, CONCAT('row ', k) FROM s".into(),
        ],
        rows: 200,
        plan: "version: 1
name: mysql-types
table: kinds
changes:
  - add_column: {name: note, type: VARCHAR(16), from: \"'copied'\"}
  - add_index: {name: kinds_qty_idx, columns: [qty]}
backfill: {batch_size: 40}
"
        .into(),
        during_dual_write: vec![
            // Written by an application in Tokyo: TIMESTAMP keeps the instant.
            "SET time_zone = '+09:00';\nINSERT INTO {t} (id, qty, bt, yr, en, st, js, lb, lt, bn, vbn, dt, ts, fl, db, de, bi, g, emo) VALUES (1000001, 1, b'1010101010', 1999, 'c d', 'y,z', '{\"z\":1,  \"a\":2}', REPEAT(x'00', 200000), REPEAT('y', 1048576), x'00', x'6100', '2024-03-10 02:30:00.000001', '2024-03-10 02:30:00.000001', -0e0, 2.2250738585072014e-308, 99999999999999999999999999999999999.999999999999999999999999999999, 18446744073709551615, ST_GeomFromText('POINT(-1.5 2.25)'), '👩‍👩‍👧');\nSET time_zone = DEFAULT".into(),
            "UPDATE {t} SET id = 1000003 WHERE id = 900001".into(),
            "DELETE FROM {t} WHERE id = 900002".into(),
        ],
        after_backfill: vec![
            "UPDATE {t} SET bn = x'00000001', vbn = x'00000000', st = 'x', js = '  {\"spaced\" : true}  ', yr = 2000 WHERE id = 900004".into(),
        ],
        after_cutover: vec![
            "SET time_zone = '-07:00';\nINSERT INTO {t} (id, qty, ts, tb, mt, ii, si) VALUES (1000004, 4, '1970-01-01 00:00:01', x'ff00', REPEAT('ü', 70000), 4294967295, 65535);\nSET time_zone = DEFAULT".into(),
            "UPDATE {t} SET fl = 3.40282e38, db = -1.7976931348623157e308, de = -0.000000000000000000000000000001 WHERE id = 1000001".into(),
            "UPDATE {t} SET id = 1000005 WHERE id = 1000003".into(),
            "DELETE FROM {t} WHERE id = 900003".into(),
        ],
        exact: format!(
            "SELECT CAST(id AS CHAR), CAST(qty AS CHAR), CAST(tag AS CHAR), {} FROM {{t}} ORDER BY id",
            typed.join(", ")
        ),
        shape: "SELECT CAST(COLUMN_NAME AS CHAR), CAST(COLUMN_TYPE AS CHAR), CAST(IS_NULLABLE AS CHAR), CAST(COALESCE(COLLATION_NAME, '') AS CHAR) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{t}' ORDER BY ORDINAL_POSITION".into(),
        tamper: vec![
            "UPDATE _kinds_new SET vbn = x'610001' WHERE id = 1000001".into(),
            "UPDATE _kinds_new SET lt = INSERT(lt, 700001, 1, 'Z') WHERE id = 1000001".into(),
            "UPDATE _kinds_new SET de = 99999999999999999999999999999999999.999999999999999999999999999998 WHERE id = 1000001".into(),
        ],
        tampered_shows: vec![
            "row with key [1000001] differs".into(),
            "\"610001\"".into(),
            "\"6100\"".into(),
            "(1,048,576 chars; from char 699,980:".into(),
            "99999999999999999999999999999999999.999999999999999999999999999998".into(),
            "99999999999999999999999999999999999.999999999999999999999999999999".into(),
        ],
        untamper: vec![
            "UPDATE _kinds_new SET vbn = x'6100', lt = REPEAT('y', 1048576), de = 99999999999999999999999999999999999.999999999999999999999999999999 WHERE id = 1000001".into(),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_every_type_migrates_verifies_and_rolls_back() {
    every_type_migrates_verifies_and_rolls_back(Kind::MySql, matrix()).await;
}

/// A key in a case-insensitive collation: 'apple copy' and 'APPLE COPY' are one key, so a
/// write that changes only the case of a key must move no row and lose none, through both
/// directions of the triggers. The writer's inserts (which name no key) fail here; its
/// updates, id changes and deletes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_case_insensitive_key_migrates_verifies_and_rolls_back() {
    let m = Matrix {
        create: "CREATE TABLE {t} (k VARCHAR(40) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NOT NULL PRIMARY KEY, id BIGINT NOT NULL UNIQUE, qty BIGINT, tag BIGINT, v VARBINARY(4))".into(),
        seed: vec![
            "INSERT INTO kinds VALUES ('apple', 1, 1, 1, x'00'), ('Banana', 2, 2, NULL, x'0000'), ('cherry', 3, 3, 3, NULL), ('Ébène', 4, 4, 4, x'ff'), ('zed', 5, 5, 5, x''), ('ΑΒΓ', 6, 6, 6, x'6100'), ('straße 😀', 7, 7, 7, x'01')".into(),
            "INSERT INTO kinds SELECT CONCAT(k, ' copy'), id + 900000, qty, tag, v FROM kinds".into(),
            "INSERT INTO kinds (k, id, qty, tag) WITH RECURSIVE s(n) AS (SELECT 8 UNION ALL SELECT n + 1 FROM s WHERE n < 200) SELECT CONCAT(IF(n % 2 = 0, 'k', 'K'), LPAD(n, 4, '0')), n, n % 17, n % 5 FROM s".into(),
        ],
        rows: 200,
        plan: "version: 1
name: mysql-ci-key
table: kinds
changes:
  - add_column: {name: note, type: VARCHAR(16), from: \"'copied'\"}
backfill: {batch_size: 25}
"
        .into(),
        during_dual_write: vec![
            "INSERT INTO {t} (k, id, qty, v) VALUES ('APPLE!', 1000001, 1, x'00000000')".into(),
            "UPDATE {t} SET k = 'CHERRY COPY' WHERE id = 900003".into(),
            "UPDATE {t} SET k = 'APPLE COPY', v = x'02' WHERE id = 900001".into(),
        ],
        after_backfill: vec![
            "UPDATE {t} SET k = 'éBÈNE COPY' WHERE id = 900004".into(),
            "UPDATE {t} SET k = 'Apple!' WHERE id = 1000001".into(),
        ],
        after_cutover: vec![
            "UPDATE {t} SET k = 'banana copy' WHERE id = 900002".into(),
            "INSERT INTO {t} (k, id, qty) VALUES ('ébène!', 1000004, 4)".into(),
            "DELETE FROM {t} WHERE k = 'ZED COPY'".into(),
            "UPDATE {t} SET k = 'apple!' WHERE k = 'APPLE!'".into(),
        ],
        exact: "SELECT HEX(k), CAST(id AS CHAR), CAST(qty AS CHAR), CAST(tag AS CHAR), HEX(v) FROM {t} ORDER BY id".into(),
        shape: "SELECT CAST(COLUMN_NAME AS CHAR), CAST(COLUMN_TYPE AS CHAR), CAST(IS_NULLABLE AS CHAR), CAST(COALESCE(COLLATION_NAME, '') AS CHAR), CAST(COLUMN_KEY AS CHAR) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{t}' ORDER BY ORDINAL_POSITION".into(),
        tamper: vec![
            "UPDATE _kinds_new SET k = 'Cherry Copy' WHERE id = 900003".into(),
            "UPDATE _kinds_new SET v = x'03' WHERE id = 900006".into(),
        ],
        tampered_shows: vec![
            "Cherry Copy".into(),
            "CHERRY COPY".into(),
            "\"6100\"".into(),
            "\"03\"".into(),
        ],
        untamper: vec![
            "UPDATE _kinds_new SET k = 'CHERRY COPY' WHERE id = 900003".into(),
            "UPDATE _kinds_new SET v = x'6100' WHERE id = 900006".into(),
        ],
    };
    every_type_migrates_verifies_and_rolls_back(Kind::MySql, m).await;
}
