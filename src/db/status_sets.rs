//! The status sets the migrations spell by hand, checked against the named sets of
//! `domain::status`. The migrations (schema/*.sql) are checksummed and never edited, so their
//! partial-index predicates, CHECK constraints, triggers and plpgsql functions keep their literal
//! letter lists; these tests fail when a set of `domain::status` changes and the SQL does not
//! follow (a new migration must then redefine what it changed), and when a migration adds a
//! status list that stands for no named set.

use crate::domain::status::{JobStatus, Letter, TaskStatus, WorkerStatus, sql_case};

/// Every migration, in order.
const SCHEMA: &[(&str, &str)] = &[
    ("0001_init.sql", include_str!("../../schema/0001_init.sql")),
    (
        "0002_dispatch.sql",
        include_str!("../../schema/0002_dispatch.sql"),
    ),
    (
        "0003_leadership.sql",
        include_str!("../../schema/0003_leadership.sql"),
    ),
    ("0004_ping.sql", include_str!("../../schema/0004_ping.sql")),
    (
        "0005_roles.sql",
        include_str!("../../schema/0005_roles.sql"),
    ),
    (
        "0006_sandbox.sql",
        include_str!("../../schema/0006_sandbox.sql"),
    ),
    ("0007_web.sql", include_str!("../../schema/0007_web.sql")),
    ("0008_ws.sql", include_str!("../../schema/0008_ws.sql")),
    (
        "0009_ping_batch.sql",
        include_str!("../../schema/0009_ping_batch.sql"),
    ),
    (
        "0010_status_batch.sql",
        include_str!("../../schema/0010_status_batch.sql"),
    ),
    (
        "0011_cluster_settings.sql",
        include_str!("../../schema/0011_cluster_settings.sql"),
    ),
    (
        "0012_claim_many.sql",
        include_str!("../../schema/0012_claim_many.sql"),
    ),
    (
        "0013_activity_clock.sql",
        include_str!("../../schema/0013_activity_clock.sql"),
    ),
    (
        "0014_dependents_by_key.sql",
        include_str!("../../schema/0014_dependents_by_key.sql"),
    ),
    (
        "0015_watch.sql",
        include_str!("../../schema/0015_watch.sql"),
    ),
];

/// What a status list of the schema stands for.
#[derive(Debug, Clone, Copy)]
enum Stands {
    Task(&'static [TaskStatus]),
    Worker(&'static [WorkerStatus]),
    Job(&'static [JobStatus]),
    /// A status column without a domain alphabet (workflow, template run): not checked.
    Unmodelled,
}

/// The letters of a set, sorted (the order of an `IN` list means nothing).
fn letters<T: Letter>(set: &[T]) -> Vec<&'static str> {
    let mut v: Vec<_> = set.iter().map(|s| s.letter()).collect();
    v.sort_unstable();
    v
}

impl Stands {
    fn letters(self) -> Option<Vec<&'static str>> {
        match self {
            Stands::Task(s) => Some(letters(s)),
            Stands::Worker(s) => Some(letters(s)),
            Stands::Job(s) => Some(letters(s)),
            Stands::Unmodelled => None,
        }
    }
}

/// (migration, the statement that holds the list: its `CREATE …` name) → the set it stands for.
/// Every list of a statement must equal the set.
const EXPECTED: &[(&str, &str, Stands)] = &[
    ("0001_init.sql", "workflow", Stands::Unmodelled),
    ("0001_init.sql", "worker", Stands::Worker(WorkerStatus::ALL)),
    ("0001_init.sql", "task", Stands::Task(TaskStatus::ALL)),
    // A ping reads the tasks its worker holds.
    (
        "0001_init.sql",
        "task_worker_active_idx",
        Stands::Task(TaskStatus::ON_WORKER),
    ),
    // Log followers end once their task is terminal.
    (
        "0001_init.sql",
        "task_end_wakes_log_followers",
        Stands::Task(TaskStatus::TERMINAL),
    ),
    ("0001_init.sql", "job", Stands::Job(JobStatus::ALL)),
    (
        "0001_init.sql",
        "job_open_idx",
        Stands::Job(JobStatus::OPEN),
    ),
    ("0001_init.sql", "template_run", Stands::Unmodelled),
    // The dependency sweep's dependents of prerequisites that settled.
    (
        "0003_leadership.sql",
        "task_settled_idx",
        Stands::Task(TaskStatus::SETTLED),
    ),
    // The held weight of the ping (free capacity).
    (
        "0004_ping.sql",
        "tq_ping",
        Stands::Task(TaskStatus::HOLDING_CAPACITY),
    ),
    (
        "0009_ping_batch.sql",
        "tq_ping_batch",
        Stands::Task(TaskStatus::HOLDING_CAPACITY),
    ),
    (
        "0012_claim_many.sql",
        "tq_ping_batch",
        Stands::Task(TaskStatus::HOLDING_CAPACITY),
    ),
];

/// One `status IN (…)` list of a migration.
#[derive(Debug)]
struct Found {
    file: &'static str,
    line: usize,
    /// The name of the statement it is in (`CREATE TABLE task` → `task`).
    owner: String,
    letters: Vec<String>,
}

/// The name a `CREATE …` line creates, if it is one.
fn created(line: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    if words.next() != Some("CREATE") {
        return None;
    }
    let keywords = [
        "OR",
        "REPLACE",
        "UNIQUE",
        "UNLOGGED",
        "TEMP",
        "INDEX",
        "TABLE",
        "FUNCTION",
        "TRIGGER",
        "VIEW",
        "CONCURRENTLY",
        "IF",
        "NOT",
        "EXISTS",
    ];
    let name = words.find(|w| !keywords.contains(w))?;
    Some(name.split('(').next().unwrap_or(name).to_string())
}

/// Every `status IN (…)` of the migrations, with the statement it is in.
fn status_lists() -> Vec<Found> {
    let mut out = Vec::new();
    for &(file, sql) in SCHEMA {
        let mut owner = String::from("(top)");
        for (i, line) in sql.lines().enumerate() {
            if let Some(name) = created(line) {
                owner = name;
            }
            let code = line.split("--").next().unwrap_or("");
            let mut rest = code;
            while let Some(at) = rest.find("status IN (") {
                let after = &rest[at + "status IN (".len()..];
                let end = after.find(')').unwrap_or_else(|| {
                    panic!(
                        "{file}:{}: a status list that does not end on its line",
                        i + 1
                    )
                });
                let mut letters: Vec<String> = after[..end]
                    .split(',')
                    .map(|l| {
                        let l = l.trim();
                        assert!(
                            l.len() == 3 && l.starts_with('\'') && l.ends_with('\''),
                            "{file}:{}: not a list of letters: {l:?}",
                            i + 1
                        );
                        l[1..2].to_string()
                    })
                    .collect();
                letters.sort_unstable();
                out.push(Found {
                    file,
                    line: i + 1,
                    owner: owner.clone(),
                    letters,
                });
                rest = &after[end..];
            }
        }
    }
    out
}

/// The problems of `found` against `expected`: lists standing for no known set, lists that differ
/// from the set they stand for, expectations no list matches.
fn mismatches(found: &[Found], expected: &[(&str, &str, Stands)]) -> Vec<String> {
    let mut problems = Vec::new();
    for f in found {
        let Some((_, _, stands)) = expected
            .iter()
            .find(|(file, owner, _)| *file == f.file && *owner == f.owner)
        else {
            problems.push(format!(
                "{}:{} ({}): status list {:?} stands for no named set: add it to EXPECTED",
                f.file, f.line, f.owner, f.letters
            ));
            continue;
        };
        if let Some(want) = stands.letters()
            && want != f.letters
        {
            problems.push(format!(
                "{}:{} ({}): the migration has {:?}, the domain set {:?} is {want:?}",
                f.file, f.line, f.owner, f.letters, stands
            ));
        }
    }
    for (file, owner, _) in expected {
        if !found.iter().any(|f| f.file == *file && f.owner == *owner) {
            problems.push(format!("{file} ({owner}): no status list found"));
        }
    }
    problems
}

#[test]
fn schema_status_lists_are_the_domain_sets() {
    let found = status_lists();
    assert!(found.len() >= EXPECTED.len(), "{found:#?}");
    let problems = mismatches(&found, EXPECTED);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_set_the_schema_does_not_follow_fails() {
    let found = status_lists();
    // As if `HOLDING_CAPACITY` had lost O in the domain while the migrations kept it.
    let changed: &[(&str, &str, Stands)] = &[(
        "0004_ping.sql",
        "tq_ping",
        Stands::Task(&[
            TaskStatus::Assigned,
            TaskStatus::Accepted,
            TaskStatus::Downloading,
            TaskStatus::Running,
        ]),
    )];
    let only_ping: Vec<Found> = found
        .into_iter()
        .filter(|f| f.file == "0004_ping.sql")
        .collect();
    let problems = mismatches(&only_ping, changed);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("0004_ping.sql"), "{problems:?}");
    // And a list standing for nothing is reported.
    assert_eq!(mismatches(&only_ping, &[]).len(), 1);
}

/// The ping's "back online" mapping (O→R, Q→P, L→F) in `tq_ping` and both `tq_ping_batch` is
/// `WorkerStatus::back_online`.
#[test]
fn schema_back_online_is_the_domain_mapping() {
    let case = sql_case("v_status", WorkerStatus::ALL, WorkerStatus::back_online);
    for (file, sql) in SCHEMA.iter().filter(|(f, _)| {
        matches!(
            *f,
            "0004_ping.sql" | "0009_ping_batch.sql" | "0012_claim_many.sql"
        )
    }) {
        let found: Vec<&str> = sql
            .lines()
            .filter(|l| l.contains("v_back :="))
            .map(str::trim)
            .collect();
        assert_eq!(found.len(), 1, "{file}: {found:?}");
        assert_eq!(found[0], format!("v_back := {case};"), "{file}");
    }
}
