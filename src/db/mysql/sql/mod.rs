//! Pure SQL generation for MySQL/MariaDB: no I/O, so every statement turnout runs (and
//! the whole plan `turnout plan` shows) is tested without a server. This file holds
//! quoting, the generated names of a migration, the key helpers (typed placeholders,
//! index-friendly key comparisons, key values as text), the [`Gen`] struct with its
//! core helpers and the preview of every phase; each phase's SQL is in a file of its
//! own: `shadow`, `triggers`, `backfill`, `verify`, `cutover`.

mod backfill;
mod blockers;
mod cutover;
pub(in crate::db::mysql) mod foreign_keys;
pub(in crate::db::mysql) mod instant;
pub(in crate::db::mysql) mod own_triggers;
pub(super) mod replicas;
pub(in crate::db::mysql) mod shadow;
mod triggers;
mod verify;

use sha2::{Digest, Sha256};

use crate::db::{Cursor, PhaseSql};
use crate::error::{Error, Result};
use crate::schema::{Generated, Mapped, Migration, TableShape};

/// Quotes an identifier with backticks, doubling any inside. Every name goes through here.
pub fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// A string literal for generated SQL (the session never sets NO_BACKSLASH_ESCAPES).
pub(in crate::db::mysql) fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

pub(in crate::db::mysql) fn hash_hex(s: &str, n: usize) -> String {
    let d = Sha256::digest(s.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect::<String>()[..n].to_string()
}

/// A readable, deterministic stem for generated object names (≤ 64 chars with suffixes).
fn stem(migration: &str) -> String {
    let clean: String = migration
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    format!("{clean}_{}", hash_hex(migration, 8))
}

/// `ALTER TABLE <name> NOWAIT …` for `ALTER TABLE <name> …`, and `DROP TABLE … NOWAIT`
/// for `DROP TABLE …` (MariaDB): the statement then fails at once rather than wait for a
/// metadata lock. `sql` unchanged when it is neither an ALTER of a quoted name nor a DROP.
pub fn with_nowait(sql: &str) -> String {
    if sql.starts_with("DROP TABLE ") && !sql.ends_with(" NOWAIT") {
        return format!("{sql} NOWAIT");
    }
    let Some(rest) = sql.strip_prefix("ALTER TABLE `") else {
        return sql.to_string();
    };
    // The quoted name ends at a backtick not doubled, unless a `.` and a second part follow.
    let bytes = rest.as_bytes();
    let mut i = 0;
    loop {
        match bytes.get(i) {
            None => return sql.to_string(),
            Some(b'`') if bytes.get(i + 1) == Some(&b'`') => i += 2,
            Some(b'`') if bytes.get(i + 1) == Some(&b'.') && bytes.get(i + 2) == Some(&b'`') => {
                i += 3
            }
            Some(b'`') => break,
            Some(_) => i += 1,
        }
    }
    let split = "ALTER TABLE `".len() + i + 1;
    if sql[split..].starts_with(" NOWAIT") {
        return sql.to_string();
    }
    format!("{} NOWAIT{}", &sql[..split], &sql[split..])
}

/// How a column's values are compared, bound and shown; from its SQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int { unsigned: bool },
    Decimal,
    Float,
    Binary,
    Date,
    DateTime,
    Time,
    Json,
    Text,
}

fn kind(sql_type: &str) -> Kind {
    let t = sql_type.trim().to_ascii_lowercase();
    let base: String = t
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let unsigned = t.contains("unsigned");
    match base.as_str() {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" | "bit"
        | "serial" => Kind::Int {
            unsigned: unsigned || base == "bit" || base == "serial" || base == "year",
        },
        "bool" | "boolean" => Kind::Int { unsigned: false },
        "decimal" | "numeric" | "dec" | "fixed" => Kind::Decimal,
        "float" | "double" | "real" => Kind::Float,
        "binary" | "varbinary" | "blob" | "tinyblob" | "mediumblob" | "longblob" | "geometry"
        | "point" => Kind::Binary,
        "date" => Kind::Date,
        "datetime" | "timestamp" => Kind::DateTime,
        "time" => Kind::Time,
        "json" => Kind::Json,
        _ => Kind::Text,
    }
}

/// The `(n)` of `datetime(n)` / the `(p,s)` of `decimal(p,s)`, if written.
fn type_args(sql_type: &str) -> Option<String> {
    let open = sql_type.find('(')?;
    let close = sql_type[open..].find(')')? + open;
    Some(sql_type[open + 1..close].trim().to_string())
}

/// A key value as text for the cursor and messages (binary keys as hex).
fn key_text(col: &str, sql_type: &str) -> String {
    match kind(sql_type) {
        Kind::Binary => format!("HEX({col})"),
        _ => format!("CAST({col} AS CHAR)"),
    }
}

/// A placeholder taking a key value back from its text, typed so the comparison stays
/// on the index (an int column compared with a string would compare as doubles).
fn key_param(sql_type: &str) -> &'static str {
    match kind(sql_type) {
        Kind::Int { unsigned: true } => "CAST(? AS UNSIGNED)",
        Kind::Int { unsigned: false } => "CAST(? AS SIGNED)",
        Kind::Decimal => "CAST(? AS DECIMAL(65,30))",
        Kind::Float => "CAST(? AS DOUBLE)",
        Kind::Binary => "UNHEX(?)",
        _ => "?",
    }
}

/// SQL with its `?` values (always text; `key_param` types them in the server).
#[derive(Debug, Clone, Default)]
pub(in crate::db::mysql) struct Bound {
    pub(in crate::db::mysql) sql: String,
    pub(in crate::db::mysql) binds: Vec<String>,
}

/// `(k1, k2) OP (v1, v2)` expanded lexicographically: MariaDB does not use an index
/// range for row-value comparisons, but it does for this OR of ANDs.
/// `op` is `>` or `<`; `or_equal` adds the all-equal case (`>=`, `<=`).
pub(in crate::db::mysql) fn key_cmp(
    cols: &[(String, String)],
    values: &[String],
    op: &str,
    or_equal: bool,
) -> Bound {
    let mut ors = Vec::new();
    let mut binds = Vec::new();
    for i in 0..cols.len() {
        let mut ands = Vec::new();
        for (j, (c, t)) in cols.iter().enumerate().take(i) {
            ands.push(format!("{c} = {}", key_param(t)));
            binds.push(values[j].clone());
        }
        ands.push(format!("{} {op} {}", cols[i].0, key_param(&cols[i].1)));
        binds.push(values[i].clone());
        ors.push(format!("({})", ands.join(" AND ")));
    }
    if or_equal {
        let ands: Vec<String> = cols
            .iter()
            .map(|(c, t)| format!("{c} = {}", key_param(t)))
            .collect();
        binds.extend(values.iter().cloned());
        ors.push(format!("({})", ands.join(" AND ")));
    }
    Bound {
        sql: format!("({})", ors.join(" OR ")),
        binds,
    }
}

pub(in crate::db::mysql) fn cursor_values(c: &Cursor, n: usize) -> Result<Vec<String>> {
    let values: Vec<String> = match c {
        serde_json::Value::Array(a) => a
            .iter()
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    };
    if values.len() != n {
        return Err(Error::State(format!(
            "the saved backfill cursor {c} does not match a {n}-column primary key"
        )));
    }
    Ok(values)
}

pub(in crate::db::mysql) fn parse_key_json(s: &str) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(s)
        .map_err(|e| Error::State(format!("unreadable key {s:?} from the server: {e}")))?;
    let n = v.as_array().map_or(0, |a| a.len());
    cursor_values(&v, n)
}

pub(in crate::db::mysql) fn show_key(values: &[String]) -> String {
    values.join(", ")
}

/// Every generated name of one migration, raw and quoted.
#[derive(Debug, Clone)]
pub struct Names {
    pub schema: Option<String>,
    pub home: Option<String>,
    pub table: String,
    pub shadow: String,
    pub old: String,
    /// The gate's name (read by every trigger) and the two parked names.
    pub gate: String,
    pub gate_f: String,
    pub gate_r: String,
    pub forward: [String; 3],
    pub reverse: [String; 3],
    /// The table's own triggers (MariaDB): their saved definitions, the flag saying
    /// which copy holds each one's work while its name moves, and the stem of the
    /// copies' temporary names.
    pub own_saved: String,
    pub own_flag: String,
    pub own_prefix: String,
}

impl Names {
    pub fn new(m: &Migration, schema: Option<&str>, home: Option<&str>) -> Names {
        let s = if m.nth == 0 {
            stem(&m.name)
        } else {
            stem(&format!("{} @ {}", m.name, m.table))
        };
        Names {
            schema: schema.map(str::to_string),
            home: home.map(str::to_string),
            table: m.table.clone(),
            shadow: m.shadow.clone(),
            old: m.old.clone(),
            gate: format!("_turnout_{s}_g"),
            gate_f: format!("_turnout_{s}_gf"),
            gate_r: format!("_turnout_{s}_gr"),
            forward: [
                format!("turnout_{s}_fi"),
                format!("turnout_{s}_fu"),
                format!("turnout_{s}_fd"),
            ],
            reverse: [
                format!("turnout_{s}_ri"),
                format!("turnout_{s}_ru"),
                format!("turnout_{s}_rd"),
            ],
            own_saved: format!("_turnout_{s}_ts"),
            own_flag: format!("_turnout_{s}_tf"),
            own_prefix: format!("turnout_{s}_t"),
        }
    }

    /// `schema`.`name`, or `name` when the plan and connection name no database.
    pub fn q(&self, name: &str) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote(s), quote(name)),
            None => quote(name),
        }
    }

    fn failures(&self) -> String {
        match &self.home {
            Some(h) => format!("{}.turnout_failures", quote(h)),
            None => "turnout_failures".into(),
        }
    }

    pub(in crate::db::mysql) fn triggers(&self) -> impl Iterator<Item = &String> {
        self.forward.iter().chain(self.reverse.iter())
    }
}

/// Pure SQL generation, shared by the phases and by `preview`.
pub struct Gen<'a> {
    pub m: &'a Migration,
    pub n: Names,
    pub mariadb: bool,
}

impl<'a> Gen<'a> {
    /// A mapped value over the derived row `turnout_src`, no CAST: assignment to the
    /// target column converts it, and strict sql_mode makes a bad fit an error.
    pub(in crate::db::mysql) fn value(mp: &Mapped) -> String {
        crate::db::render_source(mp, &|c| quote(c), &|v, _t| v.to_string())
    }

    /// The forward mappings turnout writes: all but those into a generated column of
    /// the new table, which the server computes (and refuses a value for, 1906).
    pub(in crate::db::mysql) fn forward_written(&self) -> Vec<Mapped> {
        Self::written(&self.m.forward, &self.m.after)
    }

    /// The reverse mappings turnout writes into the old table (generated columns left out).
    pub(in crate::db::mysql) fn reverse_written(&self) -> Vec<Mapped> {
        Self::written(&self.m.reverse, &self.m.before)
    }

    fn written(maps: &[Mapped], target: &TableShape) -> Vec<Mapped> {
        maps.iter()
            .filter(|mp| {
                !target
                    .column(&mp.target)
                    .is_some_and(|c| matches!(c.generated, Some(Generated::Computed { .. })))
            })
            .cloned()
            .collect()
    }

    pub(in crate::db::mysql) fn insert_mapped(
        &self,
        target: &str,
        maps: &[Mapped],
        src: &str,
    ) -> String {
        let cols: Vec<String> = maps.iter().map(|mp| quote(&mp.target)).collect();
        let vals: Vec<String> = maps.iter().map(Self::value).collect();
        format!(
            "INSERT INTO {target} ({}) SELECT {} FROM {src}",
            cols.join(", "),
            vals.join(", ")
        )
    }

    pub(in crate::db::mysql) fn old_key_cols(&self) -> Vec<(String, String)> {
        self.m
            .key
            .iter()
            .map(|k| (quote(&k.old), self.key_type(&k.old)))
            .collect()
    }

    fn new_key_cols(&self) -> Vec<(String, String)> {
        self.m
            .key
            .iter()
            .map(|k| (quote(&k.new), self.key_type(&k.old)))
            .collect()
    }

    fn key_type(&self, old: &str) -> String {
        self.m
            .before
            .column(old)
            .map(|c| c.sql_type.clone())
            .unwrap_or_default()
    }

    fn key_json(&self, cols: &[(String, String)]) -> String {
        format!(
            "JSON_ARRAY({})",
            cols.iter()
                .map(|(c, t)| key_text(c, t))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    fn order_by(cols: &[(String, String)]) -> String {
        cols.iter()
            .map(|(c, _)| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(in crate::db::mysql) fn old_columns(&self) -> String {
        self.m
            .before
            .columns
            .iter()
            .map(|c| quote(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn preview(&self, table_options: &str) -> Vec<PhaseSql> {
        // A slice's size is steered at run time; the preview shows a typical one.
        const SLICE_ROWS_SHOWN: u64 = 1000;
        let n = &self.n;
        let mut dual = self.create_gates();
        dual.extend(self.forward_triggers());
        let cursor = vec!["?".to_string(); self.m.key.len()];
        let last = self.batch_last_key(Some(&cursor), SLICE_ROWS_SHOWN);
        let tail = self.batch_keys(Some(&cursor), SLICE_ROWS_SHOWN);
        let copy = self.batch_insert(
            Some(&vec!["?".to_string(); self.m.key.len()]),
            &vec!["?".into(); self.m.key.len()],
        );
        let mut cutover = vec![format!("ANALYZE TABLE {}", n.q(&n.shadow))];
        cutover.extend(self.reverse_triggers());
        cutover.push(format!(
            "ALTER TABLE {} AUTO_INCREMENT = <live AUTO_INCREMENT>",
            n.q(&n.shadow)
        ));
        cutover.push(format!(
            "/* each child table's foreign key to {t}, foreign_key_checks = 0, twice (through _tc_<name>) */ ALTER TABLE <child> DROP FOREIGN KEY <name>, ADD CONSTRAINT _tc_<name> FOREIGN KEY (…) REFERENCES {} (…), ALGORITHM=INPLACE",
            n.q(&n.shadow),
            t = n.table
        ));
        cutover.push(format!(
            "/* a second session, until the RENAME waits for the table */ LOCK TABLES {} READ",
            n.q(&n.table)
        ));
        cutover.push(self.swap());
        cutover.push("/* the second session */ UNLOCK TABLES".into());
        cutover.push(format!(
            "/* each foreign key to another table, foreign_key_checks = 0 */ ALTER TABLE {} DROP FOREIGN KEY <name>, ADD CONSTRAINT _to_<name> …, ALGORITHM=INPLACE; ALTER TABLE {} DROP FOREIGN KEY _tn_<name>, ADD CONSTRAINT <name> …, ALGORITHM=INPLACE",
            n.q(&n.old),
            n.q(&n.table)
        ));
        let mut cleanup = self.drop_triggers(&n.reverse);
        cleanup.extend(self.drop_triggers(&n.forward));
        cleanup.push(format!("DROP TABLE IF EXISTS {}", n.q(&n.old)));
        cleanup.push(self.drop_gates());
        let range = (
            Some(vec!["?".to_string(); self.m.key.len()]),
            Some(vec!["?".to_string(); self.m.key.len()]),
        );
        vec![
            PhaseSql {
                phase: "prepare".into(),
                statements: vec![self.create_shadow(table_options)],
            },
            PhaseSql {
                phase: "dual-write".into(),
                statements: dual,
            },
            PhaseSql {
                phase: "backfill (each slice of a batch, about 20 ms)".into(),
                statements: vec![
                    "START TRANSACTION".into(),
                    last.sql,
                    format!(
                        "/* when that finds no row: the table's last, shorter slice */ {}",
                        tail.sql
                    ),
                    copy.sql,
                    "REPLACE INTO turnout_state (…) VALUES (…)".into(),
                    "COMMIT".into(),
                ],
            },
            PhaseSql {
                phase: "backfill (after the last batch)".into(),
                statements: self
                    .add_indexes(&[])
                    .into_iter()
                    .chain([format!("ANALYZE TABLE {}", n.q(&n.shadow))])
                    .collect(),
            },
            PhaseSql {
                phase: "verify".into(),
                statements: vec![
                    "START TRANSACTION WITH CONSISTENT SNAPSHOT".into(),
                    self.checksum(false, &range).sql,
                    self.checksum(true, &range).sql,
                    "COMMIT".into(),
                ],
            },
            PhaseSql {
                phase: "cutover".into(),
                statements: cutover,
            },
            PhaseSql {
                phase: "cleanup".into(),
                statements: cleanup,
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Column, KeyColumn, Source};

    fn col(name: &str, t: &str) -> Column {
        Column {
            name: name.into(),
            sql_type: t.into(),
            nullable: false,
            default: None,
            generated: None,
        }
    }

    pub(super) fn migration() -> Migration {
        let before = TableShape {
            columns: vec![col("id", "bigint(20)"), col("na`me", "varchar(10)")],
            primary_key: vec!["id".into()],
            indexes: vec![],
        };
        let mut after = before.clone();
        after.columns[1].name = "label".into();
        Migration {
            name: "m1".into(),
            schema: Some("db".into()),
            table: "t".into(),
            shadow: "_t_new".into(),
            old: "_t_old".into(),
            before,
            after,
            forward: vec![
                Mapped {
                    target: "id".into(),
                    source: Source::Column("id".into()),
                    cast: None,
                },
                Mapped {
                    target: "label".into(),
                    source: Source::Expr("upper(`na``me`)".into()),
                    cast: Some("varchar(10)".into()),
                },
            ],
            reverse: vec![
                Mapped {
                    target: "id".into(),
                    source: Source::Column("id".into()),
                    cast: None,
                },
                Mapped {
                    target: "na`me".into(),
                    source: Source::Column("label".into()),
                    cast: None,
                },
            ],
            lossy: vec![],
            key: vec![KeyColumn {
                old: "id".into(),
                new: "id".into(),
            }],
            on_error: crate::plan::OnError::Reject,
            views: vec![],
            nth: 0,
            together: vec![],
        }
    }

    #[test]
    fn nowait_goes_where_mariadb_reads_it_once_however_the_name_is_quoted() {
        for (sql, nowait) in [
            (
                "ALTER TABLE `d``b`.`t.x` ADD KEY `k` (`a`)",
                "ALTER TABLE `d``b`.`t.x` NOWAIT ADD KEY `k` (`a`)",
            ),
            (
                "ALTER TABLE `t` DROP FOREIGN KEY `f`",
                "ALTER TABLE `t` NOWAIT DROP FOREIGN KEY `f`",
            ),
            (
                "DROP TABLE IF EXISTS `a`, `b`",
                "DROP TABLE IF EXISTS `a`, `b` NOWAIT",
            ),
            ("UPDATE `t` SET d = 'r'", "UPDATE `t` SET d = 'r'"),
        ] {
            assert_eq!(super::with_nowait(sql), nowait);
            assert_eq!(
                super::with_nowait(nowait),
                nowait,
                "asked twice, NOWAIT once"
            );
        }
    }

    #[test]
    fn quote_doubles_backticks() {
        assert_eq!(quote("a`b"), "`a``b`");
        assert_eq!(quote("select"), "`select`");
    }

    #[test]
    fn composite_keys_expand_to_index_friendly_ors() {
        let cols = vec![
            ("`a`".to_string(), "int".to_string()),
            ("`b`".to_string(), "varchar(3)".to_string()),
        ];
        let b = key_cmp(&cols, &["1".into(), "x".into()], ">", false);
        assert_eq!(
            b.sql,
            "((`a` > CAST(? AS SIGNED)) OR (`a` = CAST(? AS SIGNED) AND `b` > ?))"
        );
        assert_eq!(b.binds, ["1", "1", "x"]);
        let b = key_cmp(&cols, &["1".into(), "x".into()], "<", true);
        assert!(
            b.sql.ends_with("OR (`a` = CAST(? AS SIGNED) AND `b` = ?))"),
            "{}",
            b.sql
        );
    }

    #[test]
    fn generated_sql_is_stable() {
        let m = migration();
        let g = Gen {
            m: &m,
            n: Names::new(&m, Some("db"), Some("db")),
            mariadb: true,
        };
        let shadow = g.create_shadow("ENGINE=InnoDB");
        assert!(
            shadow.starts_with("CREATE TABLE IF NOT EXISTS `db`.`_t_new`"),
            "{shadow}"
        );
        let fwd = g.forward_triggers();
        assert!(
            fwd[0].contains(
                "FROM (SELECT NEW.`id` AS `id`, NEW.`na``me` AS `na``me`) AS turnout_src"
            ),
            "{}",
            fwd[0]
        );
        assert!(fwd[0].contains("IF turnout_gate = 'f' THEN"));
        assert!(
            fwd[1].contains("IF NOT (CAST(OLD.`id` AS BINARY) <=> CAST(NEW.`id` AS BINARY)) THEN UPDATE `db`.`_t_new` SET `id` = NEW.`id` WHERE `id` = OLD.`id`; END IF"),
            "{}",
            fwd[1]
        );
        // The update trigger upserts; a key change moves the row, it never deletes.
        assert!(
            fwd[1].contains("ON DUPLICATE KEY UPDATE `db`.`_t_new`.`label` = IF(`db`.`_t_new`.`id` <=> VALUES(`db`.`_t_new`.`id`), VALUES(`db`.`_t_new`.`label`), `db`.`_t_new`.`label`), `db`.`_t_new`.`id` = IF(`db`.`_t_new`.`id` <=> VALUES(`db`.`_t_new`.`id`), `db`.`_t_new`.`id`, NULL)"),
            "{}",
            fwd[1]
        );
        assert_eq!(fwd[1].matches("DELETE").count(), 0, "{}", fwd[1]);
        assert!(!fwd[0].contains("DELETE"), "{}", fwd[0]);
        let rev = g.reverse_triggers();
        assert!(
            rev[0].contains(
                "ON DUPLICATE KEY UPDATE `db`.`_t_old`.`na``me` = IF(`db`.`_t_old`.`id` <=> VALUES(`db`.`_t_old`.`id`), VALUES(`db`.`_t_old`.`na``me`), `db`.`_t_old`.`na``me`), `db`.`_t_old`.`id` = IF("
            ),
            "{}",
            rev[0]
        );
        assert!(rev[0].contains("AFTER INSERT ON `db`.`_t_new`"));
        let swap = g.swap();
        assert!(
            swap.starts_with("RENAME TABLE `db`.`t` TO `db`.`_t_old`, `db`.`_t_new` TO `db`.`t`, "),
            "{swap}"
        );
        let copy = g.batch_insert(Some(&["5".into()]), &["9".into()]);
        assert!(
            copy.sql
                .contains("ON DUPLICATE KEY UPDATE `db`.`_t_new`.`id` = IF(`db`.`_t_new`.`id` <=> VALUES(`db`.`_t_new`.`id`), `db`.`_t_new`.`id`, NULL)"),
            "{}",
            copy.sql
        );
        assert_eq!(copy.binds, ["5", "9", "9"]);
        let preview = g.preview("ENGINE=InnoDB");
        assert_eq!(preview.len(), 7);
        assert_eq!(
            preview[2].phase,
            "backfill (each slice of a batch, about 20 ms)"
        );
        let slice = &preview[2].statements;
        assert_eq!(slice.first().map(String::as_str), Some("START TRANSACTION"));
        assert_eq!(slice.last().map(String::as_str), Some("COMMIT"));
        assert!(slice[1].ends_with("LOCK IN SHARE MODE"), "{}", slice[1]);
        assert_eq!(preview[3].phase, "backfill (after the last batch)");
    }
}
