//! A directory of plan files, read as one ordered list: the way people keep their schema
//! changes (Flyway, `sqlx migrate`), so `turnout run DIR` can apply what is new. The
//! order is the byte order of the file names, so `0002-…` runs before `0010-…` only when
//! the numbers are padded; anything that is not a `*.yaml` / `*.yml` file is ignored.

use std::collections::HashMap;
use std::path::Path;

use super::{Plan, locate, parse};
use crate::error::{Error, PlanProblem, Result};

/// One plan of a directory.
#[derive(Debug, Clone)]
pub struct DirPlan {
    /// The file name inside the directory (`0002-add-index.yaml`), which gives the order.
    pub file: String,
    pub plan: Plan,
}

/// Every plan of a directory, in file-name order, with distinct migration names.
#[derive(Debug, Clone)]
pub struct PlanDir {
    /// The directory as the user named it, for messages and resume hints.
    pub path: String,
    pub plans: Vec<DirPlan>,
}

/// True when `name` is a plan file of a directory: `*.yaml` or `*.yml`, not hidden
/// (editors leave hidden copies beside the files they edit).
fn is_plan_file(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

fn unreadable(file: &str, message: String) -> PlanProblem {
    PlanProblem {
        file: file.to_string(),
        location: None,
        key: String::new(),
        message,
    }
}

/// Reads and validates every plan of a directory. All problems of all files are
/// reported at once; two plans with one migration `name` are refused, since the state
/// of a migration is keyed by its name.
pub fn load_dir(dir: &Path) -> Result<PlanDir> {
    let shown = dir.display().to_string();
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Error::Plan(vec![unreadable(
            &shown,
            format!("cannot read the directory: {e}"),
        )])
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            Error::Plan(vec![unreadable(
                &shown,
                format!("cannot read the directory: {e}"),
            )])
        })?;
        let path = entry.path();
        let name = entry.file_name();
        if path.is_file() && is_plan_file(&name.to_string_lossy()) {
            files.push((name, path));
        }
    }
    // Byte order of the name, the same on every machine and locale.
    files.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
    if files.is_empty() {
        return Err(Error::Usage(format!(
            "{shown}: no plan files in this directory (a directory of plans holds *.yaml or *.yml files, taken in file-name order)"
        )));
    }
    let mut problems = Vec::new();
    let mut plans: Vec<DirPlan> = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (name, path) in files {
        let file = name.to_string_lossy().into_owned();
        let path_shown = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(unreadable(
                    &path_shown,
                    format!("cannot read the plan: {e}"),
                ));
                continue;
            }
        };
        match parse(&text, &path_shown) {
            Ok(plan) => {
                if let Some(first) = seen.get(&plan.file.name) {
                    problems.push(PlanProblem {
                        file: path_shown.clone(),
                        location: locate(&text, "name"),
                        key: "name".into(),
                        message: format!(
                            "migration {:?} is also the name of {first} in this directory; each plan needs a name of its own, since turnout keeps a migration's state by its name",
                            plan.file.name
                        ),
                    });
                    continue;
                }
                seen.insert(plan.file.name.clone(), file.clone());
                plans.push(DirPlan { file, plan });
            }
            Err(Error::Plan(mut p)) => problems.append(&mut p),
            Err(e) => return Err(e),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Plan(problems));
    }
    Ok(PlanDir { path: shown, plans })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(name: &str) -> String {
        format!(
            "version: 1\nname: {name}\ntable: t\nchanges:\n  - add_column: {{name: c_{name}, type: integer}}\n"
        )
    }

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::write(dir.join(file), text).expect("write");
    }

    #[test]
    fn plans_are_taken_in_byte_order_of_their_file_names() {
        let tmp = tempfile::tempdir().expect("tmp");
        write(tmp.path(), "0010-c.yaml", &plan("c"));
        write(tmp.path(), "0002-b.yml", &plan("b"));
        write(tmp.path(), "0001-a.yaml", &plan("a"));
        // Upper case sorts before lower case in byte order.
        write(tmp.path(), "0001-Z.yaml", &plan("z"));
        write(tmp.path(), "README.md", "not a plan");
        write(tmp.path(), ".0003-swap.yaml", "not: [a plan");
        std::fs::create_dir(tmp.path().join("9999-sub.yaml")).expect("mkdir");
        let dir = load_dir(tmp.path()).expect("loads");
        let files: Vec<_> = dir.plans.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(
            files,
            ["0001-Z.yaml", "0001-a.yaml", "0002-b.yml", "0010-c.yaml"]
        );
    }

    #[test]
    fn two_plans_with_one_name_are_refused_at_the_second() {
        let tmp = tempfile::tempdir().expect("tmp");
        write(tmp.path(), "01-a.yaml", &plan("same"));
        write(tmp.path(), "02-b.yaml", &plan("same"));
        let Err(Error::Plan(problems)) = load_dir(tmp.path()) else {
            panic!("a duplicate name was accepted");
        };
        assert_eq!(problems.len(), 1);
        let p = &problems[0];
        assert!(p.file.ends_with("02-b.yaml"), "{p}");
        assert_eq!(p.key, "name");
        assert_eq!(p.location.as_ref().map(|l| l.line), Some(2));
        assert!(p.message.contains("01-a.yaml"), "{p}");
    }

    #[test]
    fn every_bad_file_is_reported_at_once() {
        let tmp = tempfile::tempdir().expect("tmp");
        write(
            tmp.path(),
            "01-a.yaml",
            "version: 2\nname: a\ntable: t\nchanges: []\n",
        );
        write(tmp.path(), "02-b.yaml", &plan("b"));
        write(tmp.path(), "03-c.yaml", "version: 1\nname: c\ntabel: t\n");
        let Err(Error::Plan(problems)) = load_dir(tmp.path()) else {
            panic!("bad plans were accepted");
        };
        let files: Vec<_> = problems.iter().map(|p| p.file.clone()).collect();
        assert!(files.iter().any(|f| f.ends_with("01-a.yaml")), "{files:?}");
        assert!(files.iter().any(|f| f.ends_with("03-c.yaml")), "{files:?}");
        assert!(!files.iter().any(|f| f.ends_with("02-b.yaml")), "{files:?}");
    }

    #[test]
    fn a_directory_without_plans_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        write(tmp.path(), "notes.txt", "x");
        let err = load_dir(tmp.path()).expect_err("empty");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("no plan files"), "{err}");
    }
}
