//! The example plans in `plans/` are accepted by `turnout check` against a real table of
//! their database, and `turnout demo` tells its story on a small table.

use crate::harness::{Kind, TestDb, stderr, stdout};

pub fn orders_ddl(kind: Kind) -> &'static str {
    match kind {
        Kind::Sqlite => {
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, amount_cents INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT 'new', note TEXT, created_at TEXT NOT NULL)"
        }
        Kind::Postgres => {
            "CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id integer NOT NULL, amount_cents integer NOT NULL DEFAULT 0, status text NOT NULL DEFAULT 'new', note text, created_at timestamptz NOT NULL DEFAULT now())"
        }
        Kind::MySql => {
            "CREATE TABLE orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer_id INT NOT NULL, amount_cents INT NOT NULL DEFAULT 0, status VARCHAR(16) NOT NULL DEFAULT 'new', note TEXT, created_at DATETIME(6) NOT NULL)"
        }
    }
}

pub async fn example_plans_pass_check(kind: Kind, folder: &str) {
    let db = TestDb::new(kind).await;
    db.exec(orders_ddl(kind)).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plans")
        .join(folder);
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("plans folder")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let out = db.turnout(&["check", path.to_str().expect("utf-8")], None);
        assert!(
            out.status.success(),
            "{}: {}{}",
            path.display(),
            stdout(&out),
            stderr(&out)
        );
        checked += 1;
    }
    assert!(
        checked >= 5,
        "only {checked} example plans in plans/{folder}"
    );
    db.drop().await;
}

pub fn the_demo_runs_twice_on_a_small_table() {
    let dir = tempfile::tempdir().expect("tmp");
    for round in 0..2 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_turnout"))
            .args(["demo", "--rows", "5000"])
            .current_dir(dir.path())
            .output()
            .expect("run demo");
        let text = stdout(&out);
        assert!(
            out.status.success(),
            "round {round}: {text}{}",
            stderr(&out)
        );
        for needle in [
            "before:",
            "after:",
            "is done",
            "0 differences",
            "longest any of them waited",
            "\"amount\" NUMERIC",
            "Try next",
        ] {
            assert!(
                text.contains(needle),
                "round {round}: the demo output lacks {needle:?}:\n{text}"
            );
        }
    }
    assert!(dir.path().join("turnout-demo.db").exists());
    assert!(dir.path().join("turnout-demo.yaml").exists());
}
