//! PostgreSQL's type matrix: bytea, json (whitespace kept) and jsonb (key order
//! normalised), arrays (multi-dimensional, NULL elements), an enum, a domain, a composite
//! type, uuid, inet/cidr/macaddr, money, interval, date/time types with precision and
//! infinity, real/double with NaN, ±Infinity and −0, numeric with NaN and 40 digits,
//! bit/varbit, tsvector, xml, ranges, a 1 MB text (TOASTed), every script and emoji.
//! Values are compared as their text output (bytea as hex, the 1 MB text by md5 and
//! length), so a value that changed at all is a difference.

use crate::harness::Kind;
use crate::types_matrix::{Matrix, every_type_migrates_verifies_and_rolls_back};

/// The enum, domain and composite type, created once before the first table (`create`
/// runs for both tables). One line: the harness splits statements at a `;` ending a line.
const TYPES: &str = "DO $$ BEGIN IF to_regtype('mood') IS NULL THEN CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); CREATE DOMAIN posint AS integer CHECK (VALUE > 0); CREATE TYPE pair AS (a integer, b text); END IF; END $$;\n";

const CREATE: &str = "CREATE TABLE {t} (id bigint PRIMARY KEY, qty bigint, tag bigint,
 by bytea, js json, jb jsonb, arr integer[][], tarr text[], e mood, dom posint, comp pair,
 u uuid, ip inet, net cidr, mac macaddr, mon money, iv interval, d date, ts timestamp(3),
 tstz timestamptz, tm time(2), tmtz timetz, f4 real, f8 double precision, num numeric,
 num40 numeric(45,5), bits bit(8), vb varbit, tsv tsvector, x xml, rng int4range,
 trng tstzrange, big text, txt text)";

const COLS: &[&str] = &[
    "encode(by, 'hex')",
    "js::text",
    "jb::text",
    "arr::text",
    "tarr::text",
    "e::text",
    "dom::text",
    "comp::text",
    "u::text",
    "ip::text",
    "net::text",
    "mac::text",
    "mon::text",
    "iv::text",
    "d::text",
    "ts::text",
    "tstz::text",
    "tm::text",
    "tmtz::text",
    "f4::text",
    "f8::text",
    "num::text",
    "num40::text",
    "bits::text",
    "vb::text",
    "tsv::text",
    "x::text",
    "rng::text",
    "trng::text",
    "md5(big) || ':' || length(big)",
    "txt",
];

const EDGE: &str = "INSERT INTO kinds VALUES
 (1, 1, 1, '\\x00ff00'::bytea, '{\"b\":  1,   \"a\": [1, 2]}', '{\"b\": 1, \"a\": {\"z\": null, \"y\": [true]}}', '{{1,NULL},{3,4}}', '{\"a b\",NULL,\"\",\"NULL\"}', 'happy', 7, ROW(1, 'x y'), 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', '-12.34', '1 year 2 mons -3 days 04:05:06.789', 'infinity', '2024-02-29 23:59:59.999', '-infinity', '23:59:59.99', '12:00:00.5+05:30', 'NaN', '-0', 'NaN', 1234567890123456789012345678901234567890.12345, '10101010', '1', 'a fat cat sat on a mat', '<a b=\"1\">x &amp; y</a>', '[1,10)', '[2024-01-01 00:00+00,infinity)', repeat('x', 1048576), 'Ελληνικά русский 中文 日本語 한국어 עברית العربية हिन्दी ไทย 😀👩‍👩‍👧'),
 (2, 2, NULL, '\\x'::bytea, '[]', '{}', '{}', '{}', 'sad', 1, ROW(NULL, NULL), '00000000-0000-0000-0000-000000000000', '::1', '2001:db8::/32', 'ff:ff:ff:ff:ff:ff', '0', '0', '-infinity', 'infinity', 'infinity', '00:00', '00:00-12', 'Infinity', '-Infinity', '-0.000', -1234567890123456789012345678901234567890, '00000000', '', '', '<empty/>', 'empty', '(,)', '', ''),
 (3, 3, 3, '\\x000000'::bytea, 'null', 'null', '{{{1}}}', '{\"\\\\\"}', 'ok', 2147483647, ROW(-1, ''), 'ffffffff-ffff-ffff-ffff-ffffffffffff', '0.0.0.0/0', '0.0.0.0/0', '00:00:00:00:00:00', '92233720368547758.07', '-178000000 years', '4713-01-01 BC', '294276-12-31 23:59:59.999', '1970-01-01 00:00:00.000001+00', '24:00', '24:00:00-15:59', '-Infinity', 'Infinity', 'Infinity', 0.00001, '11111111', '1111111111111111111111111111111111', 'a:1A b:2B,3', 'text only', '(0,0)', '[2024-01-01 00:00+00,2024-01-01 00:00+00]', repeat('é', 200), E'tab\\there\\nnewline \\\\ quote '' \"'),
 (4, 4, 4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 3.4028235e38, 1.7976931348623157e308, 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)";

fn matrix() -> Matrix {
    let typed: Vec<String> = COLS.iter().map(|c| format!("({c})")).collect();
    Matrix {
        create: format!("{TYPES}{CREATE}"),
        seed: vec![
            EDGE.into(),
            "INSERT INTO kinds SELECT id + 900000, qty, tag, by, js, jb, arr, tarr, e, dom, comp, u, ip, net, mac, mon, iv, d, ts, tstz, tm, tmtz, f4, f8, num, num40, bits, vb, tsv, x, rng, trng, left(big, 1000), txt FROM kinds".into(),
            "INSERT INTO kinds (id, qty, tag, by, jb, f8, num, txt) SELECT k, k % 17, k % 5, decode(md5(k::text), 'hex'), jsonb_build_object('k', k), k / 7.0, k * 1.5, 'row ' || k FROM generate_series(5, 200) AS k".into(),
        ],
        rows: 200,
        plan: "version: 1
name: postgres-types
table: kinds
changes:
  - add_column: {name: note, type: text, from: \"'copied'\"}
  - add_index: {name: kinds_qty_idx, columns: [qty]}
backfill: {batch_size: 40}
"
        .into(),
        during_dual_write: vec![
            "INSERT INTO {t} (id, qty, by, js, jb, arr, f4, f8, num, num40, ts, tstz, big, x, rng, comp, e) VALUES (1000001, 1, '\\x0001020300'::bytea, '{\"z\":1,  \"a\":2}', '{\"z\": 1, \"a\": 2}', '{{NULL,NULL},{NULL,5}}', '-0', 'NaN', 'NaN', 9999999999999999999999999999999999999999.99999, 'infinity', '-infinity', repeat('y', 1048576), '<b/>', 'empty', ROW(3, 'z'), 'ok')".into(),
            "UPDATE {t} SET id = 1000003 WHERE id = 900004".into(),
            "DELETE FROM {t} WHERE id = 900002".into(),
        ],
        after_backfill: vec![
            "UPDATE {t} SET by = '\\xdeadbeef'::bytea, jb = '{\"b\": [1, {\"a\": null}]}', f8 = '-Infinity', iv = '-1 day' WHERE id = 900003".into(),
        ],
        after_cutover: vec![
            "INSERT INTO {t} (id, qty, by, tarr, mon, tmtz, bits, vb, tsv, trng, txt) VALUES (1000004, 4, '\\x00'::bytea, '{NULL}', '0.01', '01:02:03.456789-01', '00000001', '0101', 'late:1', '(2024-01-01 00:00+00,)', '🦀 late')".into(),
            "UPDATE {t} SET f4 = 'Infinity', f8 = '-0', num = '-0.0', js = '  {\"spaced\" : true}  ' WHERE id = 1000001".into(),
            "UPDATE {t} SET id = 1000005 WHERE id = 1000003".into(),
            "DELETE FROM {t} WHERE id = 900001".into(),
        ],
        exact: format!(
            "SELECT id::text, qty::text, tag::text, {} FROM {{t}} ORDER BY id",
            typed.join(", ")
        ),
        shape: "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull::text FROM pg_attribute WHERE attrelid = '{t}'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum".into(),
        tamper: vec![
            "UPDATE _kinds_new SET by = '\\xdeadbeef00'::bytea WHERE id = 1000001".into(),
            "UPDATE _kinds_new SET big = overlay(big placing 'Z' from 700001) WHERE id = 1000001".into(),
            "UPDATE _kinds_new SET num40 = num40 - 0.00001 WHERE id = 1000001".into(),
            "UPDATE _kinds_new SET f4 = '0' WHERE id = 1000001".into(),
        ],
        tampered_shows: vec![
            "row with key [1000001] differs".into(),
            "\\\\xdeadbeef00".into(),
            "\\\\x0001020300".into(),
            "(1,048,576 chars; from char 699,980:".into(),
            "9999999999999999999999999999999999999999.99999".into(),
            "9999999999999999999999999999999999999999.99998".into(),
        ],
        untamper: vec![
            "UPDATE _kinds_new SET by = '\\x0001020300'::bytea, big = repeat('y', 1048576), num40 = 9999999999999999999999999999999999999999.99999, f4 = '-0' WHERE id = 1000001".into(),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_type_migrates_verifies_and_rolls_back() {
    every_type_migrates_verifies_and_rolls_back(Kind::Postgres, matrix()).await;
}
