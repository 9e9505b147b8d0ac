//! Randomized plans: proptest generates a table (extra columns of several types, NULLs,
//! a composite key or not, awkward names) and a plan over it (add, replace = add + drop
//! with reverse, rename, alter with using/reverse, add index). Each case runs to `done`,
//! and again to a random phase followed by rollback, under a small concurrent writer.
//! A failing case shrinks to a minimal plan; proptest keeps its seed in
//! `tests/it/random_plans.proptest-regressions` and replays it first on every run.

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

use crate::harness::{Kind, TestDb, Writer, stderr, stdout};

const NAMES: &[&str] = &[
    "a b",
    "Select",
    "naïve",
    "x\"y",
    "from",
    "semi;colon",
    "UPPER",
    "d-1",
    "it's",
    "ß",
];
const ROWS: i64 = 300;

#[derive(Debug, Clone, Copy)]
enum Ty {
    Int,
    Text,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Add,
    Replace,
    Rename,
    Alter,
    Index,
}

#[derive(Debug, Clone)]
pub struct Case {
    composite: bool,
    extras: Vec<(Ty, bool)>,
    ops: Vec<Op>,
    rollback_at: usize,
}

fn case() -> impl Strategy<Value = Case> {
    let ty = prop_oneof![Just(Ty::Int), Just(Ty::Text)];
    let op = prop_oneof![
        Just(Op::Add),
        Just(Op::Replace),
        Just(Op::Rename),
        Just(Op::Alter),
        Just(Op::Index)
    ];
    (
        any::<bool>(),
        prop::collection::vec((ty, any::<bool>()), 1..4),
        prop::collection::vec(op, 1..4),
        0..5usize,
    )
        .prop_map(|(composite, extras, ops, rollback_at)| Case {
            composite,
            extras,
            ops,
            rollback_at,
        })
}

fn q(kind: Kind, name: &str) -> String {
    match kind {
        Kind::MySql => format!("`{}`", name.replace('`', "``")),
        _ => format!("\"{}\"", name.replace('"', "\"\"")),
    }
}

fn sql_type(kind: Kind, ty: Ty, big: bool) -> &'static str {
    match (kind, ty, big) {
        (Kind::MySql, Ty::Text, _) => "VARCHAR(64)",
        (_, Ty::Text, _) => "TEXT",
        (Kind::Postgres, Ty::Int, false) => "integer",
        (Kind::MySql, Ty::Int, false) => "INT",
        (Kind::Sqlite, Ty::Int, false) => "INTEGER",
        (_, Ty::Int, true) => "BIGINT",
    }
}

fn column(i: usize) -> String {
    format!("{} {i}", NAMES[i % NAMES.len()])
}

/// The tables, the plan, and which old columns carry over unchanged under which new name.
struct Built {
    ddl: Vec<String>,
    plan: String,
    carried: Vec<(String, String)>,
}

fn build(kind: Kind, c: &Case, n: usize) -> Built {
    let (t, m) = (format!("t{n}"), format!("m{n}"));
    let key_ty = if kind == Kind::Sqlite && !c.composite {
        "INTEGER"
    } else {
        "BIGINT"
    };
    let int = sql_type(kind, Ty::Int, false);
    let mut cols = vec![
        format!("id {key_ty} NOT NULL"),
        format!("qty {int} NOT NULL"),
        format!("tag {int}"),
    ];
    if c.composite {
        cols.push(format!("k2 {int} NOT NULL DEFAULT 1"));
    }
    for (i, (ty, nullable)) in c.extras.iter().enumerate() {
        let not_null = if *nullable { "" } else { " NOT NULL DEFAULT 0" };
        let not_null = match (ty, *nullable, kind) {
            (_, true, _) => "",
            (Ty::Text, false, _) => " NOT NULL DEFAULT 'z'",
            (Ty::Int, false, _) => not_null,
        };
        cols.push(format!(
            "{} {}{not_null}",
            q(kind, &column(i)),
            sql_type(kind, *ty, false)
        ));
    }
    let key = if c.composite {
        "PRIMARY KEY (id, k2)"
    } else {
        "PRIMARY KEY (id)"
    };
    let mut ddl = Vec::new();
    for table in [&t, &m] {
        ddl.push(format!("CREATE TABLE {table} ({}, {key})", cols.join(", ")));
    }
    let mut names: Vec<String> = vec!["id".into(), "qty".into(), "tag".into()];
    let mut values = Vec::new();
    for r in 1..=ROWS {
        let mut v = vec![
            r.to_string(),
            (r * 3 % 100).to_string(),
            if r % 4 == 0 {
                "NULL".into()
            } else {
                (r % 7).to_string()
            },
        ];
        for (i, (ty, nullable)) in c.extras.iter().enumerate() {
            let null = *nullable && (r + i as i64) % 5 == 0;
            v.push(match (null, ty) {
                (true, _) => "NULL".into(),
                (false, Ty::Int) => ((r * 7 + i as i64) % 100).to_string(),
                (false, Ty::Text) => format!("'v{r} {i}'"),
            });
        }
        values.push(format!("({})", v.join(", ")));
    }
    for i in 0..c.extras.len() {
        names.push(q(kind, &column(i)));
    }
    for table in [&t, &m] {
        ddl.push(format!(
            "INSERT INTO {table} ({}) VALUES {}",
            names.join(", "),
            values.join(", ")
        ));
    }

    let mut changes = Vec::new();
    let mut used = vec![false; c.extras.len()];
    let mut carried: Vec<(String, String)> = (0..c.extras.len())
        .map(|i| (column(i), column(i)))
        .collect();
    for (j, op) in c.ops.iter().enumerate() {
        let Some(i) = (0..c.extras.len())
            .map(|k| (j + k) % c.extras.len())
            .find(|k| !used[*k])
        else {
            break;
        };
        used[i] = true;
        let (ty, _) = c.extras[i];
        let col = column(i);
        let qc = q(kind, &col);
        let fresh = format!("new {j} {}", NAMES[(i + j + 3) % NAMES.len()]);
        let json = |v: &str| serde_json::to_string(v).expect("json");
        match op {
            Op::Add => changes.push(match ty {
                Ty::Int => format!(
                    "{{\"add_column\": {{\"name\": {}, \"type\": \"BIGINT\", \"from\": {}}}}}",
                    json(&fresh),
                    json(&format!("{qc} + 1"))
                ),
                Ty::Text => format!(
                    "{{\"add_column\": {{\"name\": {}, \"type\": {}, \"from\": {}}}}}",
                    json(&fresh),
                    json(sql_type(kind, Ty::Text, false)),
                    json(&qc)
                ),
            }),
            Op::Replace => {
                let qf = q(kind, &fresh);
                let (from, back) = match ty {
                    Ty::Int => (format!("{qc} + 1"), format!("{qf} - 1")),
                    Ty::Text => (qc.clone(), qf.clone()),
                };
                // The replacement keeps the old column's NULL-ability, and a default whose
                // reverse is the old default, so rows the writer adds after cutover copy back.
                let not_null = match (ty, c.extras[i].1) {
                    (_, true) => String::new(),
                    (Ty::Int, false) => ", \"nullable\": false, \"default\": \"1\"".into(),
                    (Ty::Text, false) => ", \"nullable\": false, \"default\": \"'z'\"".into(),
                };
                changes.push(format!(
                    "{{\"add_column\": {{\"name\": {}, \"type\": {}, \"from\": {}{not_null}}}}}",
                    json(&fresh),
                    json(sql_type(kind, ty, true)),
                    json(&from)
                ));
                changes.push(format!(
                    "{{\"drop_column\": {{\"name\": {}, \"reverse\": {}}}}}",
                    json(&col),
                    json(&back)
                ));
                carried.retain(|(old, _)| old != &col);
            }
            Op::Rename => {
                changes.push(format!(
                    "{{\"rename_column\": {{\"from\": {}, \"to\": {}}}}}",
                    json(&col),
                    json(&fresh)
                ));
                for (old, new) in carried.iter_mut() {
                    if old == &col {
                        *new = fresh.clone();
                    }
                }
            }
            Op::Alter => {
                let change = match ty {
                    Ty::Int => format!(
                        "{{\"alter_column\": {{\"name\": {}, \"type\": \"BIGINT\", \"using\": {}, \"reverse\": {}}}}}",
                        json(&col),
                        json(&format!("{qc} * 2")),
                        json(&format!("{qc} / 2"))
                    ),
                    Ty::Text => format!(
                        "{{\"alter_column\": {{\"name\": {}, \"using\": {}, \"reverse\": {}}}}}",
                        json(&col),
                        json(&format!("upper({qc})")),
                        json(&format!("lower({qc})"))
                    ),
                };
                changes.push(change);
                carried.retain(|(old, _)| old != &col);
            }
            Op::Index => changes.push(format!(
                "{{\"add_index\": {{\"name\": {}, \"columns\": [{}]}}}}",
                json(&format!("ix{n} {j}")),
                json(&col)
            )),
        }
    }
    let plan = format!(
        "{{\"version\": 1, \"name\": \"random-{n}\", \"table\": \"{t}\", \"changes\": [{}], \"backfill\": {{\"batch_size\": 64}}, \"cutover\": {{\"retry_delay\": \"50ms\"}}}}",
        changes.join(", ")
    );
    Built { ddl, plan, carried }
}

async fn same_rows(db: &TestDb, t: &str, m: &str, cols: &[(String, String)]) -> Result<(), String> {
    let pick = |table: &str, old: bool| {
        cols.iter()
            .map(|(o, n)| db.text(&q(db.kind, if old { o } else { n })))
            .chain(["id", "qty", "tag"].iter().map(|c| db.text(c)))
            .collect::<Vec<_>>()
            .join(", ")
            + &format!(" FROM {table} ORDER BY id")
    };
    let live = db.rows(&format!("SELECT {}", pick(t, false))).await;
    let mirror = db.rows(&format!("SELECT {}", pick(m, true))).await;
    if live != mirror {
        let at = live.iter().zip(&mirror).position(|(a, b)| a != b);
        return Err(format!(
            "{t} differs from {m}: {} vs {} rows, first at {at:?}",
            live.len(),
            mirror.len()
        ));
    }
    Ok(())
}

fn turnout_ok(db: &TestDb, args: &[&str]) -> Result<(), String> {
    let out = db.turnout(args, None);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "turnout {args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        ))
    }
}

async fn run_case(db: &TestDb, c: &Case, n: usize) -> Result<(), String> {
    const PHASES: [&str; 5] = [
        "prepared",
        "dual_writing",
        "backfilled",
        "verified",
        "cut_over",
    ];
    for rollback in [false, true] {
        let n = n * 2 + usize::from(rollback);
        let b = build(db.kind, c, n);
        for stmt in &b.ddl {
            db.exec(stmt).await;
        }
        let (t, m) = (format!("t{n}"), format!("m{n}"));
        let path = db.plan_file(&format!("random-{n}.yaml"), &b.plan);
        let path = path.to_str().ok_or("path")?;
        let writer = Writer::start(db.pool.clone(), &t, &m, ROWS, n as u64 + 1);
        writer.wait_for(3).await;
        let outcome = if rollback {
            let r = turnout_ok(
                db,
                &["run", path, "--until", PHASES[c.rollback_at], "--yes"],
            );
            writer.wait_for(3).await;
            r.and_then(|_| turnout_ok(db, &["rollback", path, "--yes"]))
        } else {
            turnout_ok(db, &["run", path, "--yes"])
        };
        writer.wait_for(3).await;
        let errors = writer.stop().await;
        outcome.map_err(|e| format!("{e}\nplan: {}", b.plan))?;
        if !errors.is_empty() {
            return Err(format!("writer: {errors:?}"));
        }
        // After a rollback every old column must be back exactly; after done, every
        // carried column (and the writer's) — the computed ones were verified in the database.
        let cols: Vec<(String, String)> = if rollback {
            (0..c.extras.len())
                .map(|i| (column(i), column(i)))
                .collect()
        } else {
            b.carried.clone()
        };
        same_rows(db, &t, &m, &cols)
            .await
            .map_err(|e| format!("{e}\nplan: {}", b.plan))?;
    }
    Ok(())
}

pub fn random_plans_keep_every_write(kind: Kind) {
    let cases: u32 = std::env::var("TURNOUT_RANDOM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let db = rt.block_on(TestDb::new(kind));
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 50,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..Config::default()
    });
    let result = runner.run(&case(), |c| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        rt.block_on(run_case(&db, &c, n))
            .map_err(TestCaseError::fail)
    });
    let ran = counter.load(std::sync::atomic::Ordering::Relaxed);
    rt.block_on(db.drop());
    if let Err(e) = result {
        panic!("{kind:?}: {e}");
    }
    println!(
        "{kind:?}: {ran} random plans, each run to done and to a phase then rolled back, all exact"
    );
}
