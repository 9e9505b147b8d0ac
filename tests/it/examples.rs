//! The example plans in `plans/` are accepted by `turnout check` against a real table of
//! their database (the example directory also runs to the end), and `turnout demo` tells its story on a small table.

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
    if kind == Kind::Sqlite {
        // The plan of several tables widens the customers' key with the orders' column.
        db.exec("CREATE TABLE customers (id INT PRIMARY KEY, name TEXT NOT NULL)")
            .await;
    }
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
    let mut dirs = Vec::new();
    for path in entries {
        let out = db.turnout(&["check", path.to_str().expect("utf-8")], None);
        assert!(
            out.status.success(),
            "{}: {}{}",
            path.display(),
            stdout(&out),
            stderr(&out)
        );
        if path.is_dir() {
            // Every plan of a directory is checked, the later ones against the shape the
            // earlier ones leave.
            let plans = std::fs::read_dir(&path).expect("dir").count();
            assert_eq!(
                stdout(&out).matches("can be applied").count(),
                plans,
                "{}",
                stdout(&out)
            );
            dirs.push(path);
        } else {
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "only {checked} example plans in plans/{folder}"
    );
    assert!(!dirs.is_empty(), "no example directory in plans/{folder}");
    example_directories_run(&db, &dirs).await;
    db.drop().await;
}

/// Each example directory runs to the end on the example table, and its history says so.
async fn example_directories_run(db: &TestDb, dirs: &[std::path::PathBuf]) {
    db.exec("INSERT INTO orders (customer_id, amount_cents, created_at) VALUES (1, 250, '2024-01-01 00:00:00')")
        .await;
    for dir in dirs {
        let dir = dir.to_str().expect("utf-8");
        let out = db.turnout(&["run", dir, "--yes"], None);
        assert!(
            out.status.success(),
            "{dir}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        let out = db.turnout(&["status", dir, "--json"], None);
        let history: serde_json::Value =
            serde_json::from_str(&stdout(&out)).expect("status DIR --json");
        let phases: Vec<_> = history
            .as_array()
            .expect("an array")
            .iter()
            .map(|e| e["phase"].as_str().unwrap_or("?"))
            .collect();
        assert!(phases.iter().all(|p| *p == "done"), "{dir}: {phases:?}");
    }
    let amount = db
        .rows(&format!(
            "SELECT {} FROM orders WHERE amount = 2.5",
            db.text("count(*)")
        ))
        .await;
    assert_eq!(
        amount[0][0].as_deref(),
        Some("1"),
        "the amount was not computed"
    );
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
