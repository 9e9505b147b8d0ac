//! Security: a user without the privileges turnout needs gets a clear refusal (exit 3)
//! and nothing changes; a password in the URL reaches no output, log or status JSON.

use crate::harness::{Kind, TestDb, stderr, stdout};
use crate::scenarios::{plan, seed};

pub async fn a_user_without_privileges_is_refused_with_exit_3(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let dbname = db.url.rsplit('/').next().unwrap_or_default().to_string();
    let user = format!("turnout_ro_{}", std::process::id());
    let url = match kind {
        Kind::Postgres => {
            db.exec(&format!("DROP ROLE IF EXISTS {user}")).await;
            db.exec(&format!("CREATE ROLE {user} LOGIN PASSWORD 'pw-ro-7'"))
                .await;
            db.exec(&format!("GRANT CONNECT ON DATABASE {dbname} TO {user}"))
                .await;
            db.exec(&format!("GRANT SELECT ON items TO {user}")).await;
            format!("postgres://{user}:pw-ro-7@127.0.0.1:5432/{dbname}")
        }
        Kind::MySql => {
            db.exec(&format!("DROP USER IF EXISTS '{user}'@'%'")).await;
            db.exec(&format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'pw-ro-7'"))
                .await;
            db.exec(&format!("GRANT SELECT ON {dbname}.items TO '{user}'@'%'"))
                .await;
            format!("mysql://{user}:pw-ro-7@127.0.0.1:3306/{dbname}")
        }
        Kind::Sqlite => return,
    };
    let path = db.plan_file("plan.yaml", &plan(kind, "items-denied", 100));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_turnout"))
        .args(["run", path.to_str().expect("utf-8"), "--yes", "-vv"])
        .env("DATABASE_URL", &url)
        .output()
        .expect("run");
    let (o, e) = (stdout(&out), stderr(&out));
    println!(
        "{kind:?} without privileges: exit {:?}: {}",
        out.status.code(),
        e.lines().next().unwrap_or_default()
    );
    assert_eq!(out.status.code(), Some(3), "{o}{e}");
    assert!(
        e.contains("privilege") || e.contains("denied") || e.contains("refused"),
        "{e}"
    );
    assert!(
        !o.contains("pw-ro-7") && !e.contains("pw-ro-7"),
        "the password leaked:\n{o}{e}"
    );
    let left = db
        .rows(&match kind {
            Kind::Postgres => "SELECT relname::text FROM pg_class WHERE relname LIKE '\\_items\\_%'".to_string(),
            _ => "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE '\\_items\\_%'".to_string(),
        })
        .await;
    assert!(left.is_empty(), "a refused run created {left:?}");
    match kind {
        Kind::Postgres => {
            db.exec(&format!("REVOKE ALL ON items FROM {user}")).await;
            db.exec(&format!("REVOKE CONNECT ON DATABASE {dbname} FROM {user}"))
                .await;
            db.drop().await;
            let admin = sqlx::PgPool::connect(crate::harness::PG_ADMIN)
                .await
                .expect("admin");
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {user}")))
                .execute(&admin)
                .await;
        }
        _ => {
            db.exec(&format!("DROP USER IF EXISTS '{user}'@'%'")).await;
            db.drop().await;
        }
    }
}

/// A password in the URL appears nowhere: not in logs at -vv, not in errors, not in status.
pub async fn the_password_never_reaches_any_output(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    // Trust authentication on this machine accepts any password for these users.
    let url = match kind {
        Kind::Postgres => db.url.replace("postgres@", "postgres:Sup3r-S3cret@"),
        Kind::MySql => return,
        Kind::Sqlite => return,
    };
    let path = db.plan_file("plan.yaml", &plan(kind, "items-secret", 500));
    let path = path.to_str().expect("utf-8");
    let bad = db.plan_file(
        "bad.yaml",
        "version: 1\nname: x\ntable: nosuch\nchanges:\n  - drop_column: {name: a}\n",
    );
    let runs: Vec<Vec<&str>> = vec![
        vec!["run", path, "--yes", "-vv"],
        vec!["status", "--json"],
        vec!["status", path],
        vec!["plan", path],
        vec!["check", bad.to_str().expect("utf-8")],
        vec!["rollback", path, "--yes", "-vv"],
    ];
    for args in runs {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_turnout"))
            .args(&args)
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "trace")
            .output()
            .expect("run");
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            !all.contains("Sup3r-S3cret"),
            "`turnout {}` printed the password:\n{all}",
            args.join(" ")
        );
    }
    db.drop().await;
}
