//! The single-letter status alphabets of tasks, workers and jobs (docs/architecture.md#statuses),
//! parsed once at the edge so the rest of the code never handles a raw letter.

use super::{Error, Result};

/// A value of one of the letter alphabets below, as SQL stores it (`char(1)`).
pub trait Letter: Copy {
    fn letter(self) -> &'static str;
}

/// A named status set as the list of an SQL `IN (…)`: `'A', 'C', 'D'` (in the set's order, each
/// letter quoted, `", "` between them). Queries in `db` are built from the sets with it, so a
/// change of a set here is a change of every query that uses it.
pub fn sql_list<T: Letter>(set: &[T]) -> String {
    set.iter()
        .map(|s| format!("'{}'", s.letter()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A status mapping as an SQL `CASE`: `CASE expr WHEN 'R' THEN 'O' … END`, one `WHEN` per status
/// of `T::ALL` that `map` sends somewhere (in alphabet order); NULL for the others.
pub fn sql_case<T: Letter>(expr: &str, all: &[T], map: impl Fn(T) -> Option<T>) -> String {
    let arms: String = all
        .iter()
        .filter_map(|&s| map(s).map(|to| format!(" WHEN '{}' THEN '{}'", s.letter(), to.letter())))
        .collect();
    format!("CASE {expr}{arms} END")
}

macro_rules! letter_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($variant:ident = $letter:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_char(self) -> char {
                match self { $($name::$variant => $letter),+ }
            }
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant)),+ }
            }
            pub fn letter(self) -> &'static str {
                match self { $($name::$variant => concat!($letter)),+ }
            }
            /// Parses exactly one letter of the alphabet; anything else is `Invalid` with a message
            /// that lists the accepted letters.
            pub fn parse(s: &str) -> Result<Self> {
                match s {
                    $(concat!($letter) => Ok($name::$variant),)+
                    _ => Err(Error::Invalid(format!(
                        concat!("invalid ", $what, " {:?}: expected one of ", $(concat!($letter),)+),
                        s
                    ))),
                }
            }
        }

        impl Letter for $name {
            fn letter(self) -> &'static str {
                $name::letter(self)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.letter())
            }
        }
    };
}

letter_enum!(
    /// Task status (docs/architecture.md#statuses).
    TaskStatus, "task status" {
        Inactive = 'I', Waiting = 'W', Pending = 'P', Assigned = 'A', Accepted = 'C',
        Downloading = 'D', OnHold = 'O', Running = 'R', UploadingSuccess = 'U',
        UploadingFailure = 'V', Succeeded = 'S', Failed = 'F', Canceled = 'X', Suspended = 'Z',
    }
);

letter_enum!(
    /// Worker status (docs/architecture.md#statuses).
    WorkerStatus, "worker status" {
        Installing = 'I', Ready = 'R', Paused = 'P', Failing = 'F', Offline = 'O',
        Quarantined = 'Q', Lost = 'L', Deleting = 'D',
    }
);

letter_enum!(
    /// Provider job status (docs/architecture.md#statuses).
    JobStatus, "job status" {
        Pending = 'P', Running = 'R', Succeeded = 'S', Failed = 'F', Canceled = 'X',
    }
);

letter_enum!(
    /// Provider job action (docs/architecture.md#statuses).
    JobAction, "job action" {
        Create = 'C', Delete = 'D', Restart = 'R', Update = 'U',
    }
);

letter_enum!(
    /// Worker recyclable scope (docs/architecture.md#statuses).
    RecyclableScope, "recyclable scope" {
        Global = 'G', Workflow = 'W', Blocked = 'T', Never = 'N',
    }
);

letter_enum!(
    /// Workflow run strategy (stored only, docs/architecture.md#statuses).
    RunStrategy, "run strategy" {
        Batch = 'B', ThreadWise = 'T', Debug = 'D', Suspended = 'Z',
    }
);

// The named status sets: each rule about "which statuses" is written once, here. The SQL of
// `db` is built from them (`sql_list`, `sql_case`); the SQL of `schema/` (checksummed migrations,
// never edited) is checked against them by the tests of `db::status_sets`.

impl TaskStatus {
    /// Statuses in which a task holds a share of its worker's capacity
    /// (docs/architecture.md#capacity): U and V do not count, an uploading task has freed its slot.
    pub const HOLDING_CAPACITY: &'static [TaskStatus] = &[
        TaskStatus::Assigned,
        TaskStatus::Accepted,
        TaskStatus::Downloading,
        TaskStatus::OnHold,
        TaskStatus::Running,
    ];
    /// Statuses in which a task is "on" its worker (a ping reports them): not finished, and a
    /// worker deleted or registered again fails them (free retry). `WARM` and `BUSY` together.
    pub const ON_WORKER: &'static [TaskStatus] = &[
        TaskStatus::Assigned,
        TaskStatus::Accepted,
        TaskStatus::Downloading,
        TaskStatus::OnHold,
        TaskStatus::Running,
        TaskStatus::UploadingSuccess,
        TaskStatus::UploadingFailure,
    ];

    /// Statuses in which a worker holds a task: it accepted it and is downloading, waiting,
    /// running or uploading it (`ON_WORKER` without A, which the worker has not seen yet). Lines of
    /// such a task may come from a log stream without a token (`LogAccess::HeldTasks`); a worker
    /// that registers again fails its tasks in these statuses.
    pub const HELD_BY_WORKER: &'static [TaskStatus] = &[
        TaskStatus::Accepted,
        TaskStatus::Downloading,
        TaskStatus::OnHold,
        TaskStatus::Running,
        TaskStatus::UploadingSuccess,
        TaskStatus::UploadingFailure,
    ];

    /// On its worker, not running yet: assigned, accepted, downloading or waiting for a slot. A
    /// worker holding only such tasks is idle, with a longer threshold (the watchdog); the
    /// `accepted` bucket of the step statistics.
    pub const WARM: &'static [TaskStatus] = &[
        TaskStatus::Assigned,
        TaskStatus::Accepted,
        TaskStatus::Downloading,
        TaskStatus::OnHold,
    ];

    /// Running or uploading: a worker holding such a task is never idle (the watchdog).
    pub const BUSY: &'static [TaskStatus] = &[
        TaskStatus::Running,
        TaskStatus::UploadingSuccess,
        TaskStatus::UploadingFailure,
    ];

    /// Uploading the results of a run, after success or failure (the step statistics' bucket).
    pub const UPLOADING: &'static [TaskStatus] =
        &[TaskStatus::UploadingSuccess, TaskStatus::UploadingFailure];

    /// The `pending` bucket of the step statistics: pending, or inactive (not yet released).
    pub const PENDING_OR_INACTIVE: &'static [TaskStatus] =
        &[TaskStatus::Pending, TaskStatus::Inactive];

    /// Its run succeeded: uploading after success, or succeeded (the step statistics' `ok`).
    pub const RUN_SUCCEEDED: &'static [TaskStatus] =
        &[TaskStatus::UploadingSuccess, TaskStatus::Succeeded];

    /// Its run failed: uploading after failure, or failed (the step statistics' `ko`).
    pub const RUN_FAILED: &'static [TaskStatus] =
        &[TaskStatus::UploadingFailure, TaskStatus::Failed];

    /// Settled: succeeded or failed. Dependents are decided once their prerequisites settle
    /// (`task_settled_idx`); a settled task is not failed again.
    pub const SETTLED: &'static [TaskStatus] = &[TaskStatus::Succeeded, TaskStatus::Failed];

    /// Terminal for scheduling: nothing more happens to the task on its own (log followers end).
    pub const TERMINAL: &'static [TaskStatus] = &[
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::Canceled,
    ];

    /// In the queue or on a worker: waiting, pending, or `ON_WORKER` (the leader's gauges of tasks
    /// by status; I and Z are parked, S, F and X done).
    pub const IN_FLIGHT: &'static [TaskStatus] = &[
        TaskStatus::Waiting,
        TaskStatus::Pending,
        TaskStatus::Assigned,
        TaskStatus::Accepted,
        TaskStatus::Downloading,
        TaskStatus::OnHold,
        TaskStatus::Running,
        TaskStatus::UploadingSuccess,
        TaskStatus::UploadingFailure,
    ];

    /// The tasks whose weight a recycled worker rescales by new/old concurrency (as the original:
    /// O and V are not among them).
    pub const REWEIGHED_ON_RECYCLE: &'static [TaskStatus] = &[
        TaskStatus::Assigned,
        TaskStatus::Accepted,
        TaskStatus::Running,
        TaskStatus::Downloading,
        TaskStatus::UploadingSuccess,
    ];

    pub fn holds_capacity(self) -> bool {
        Self::HOLDING_CAPACITY.contains(&self)
    }
    pub fn is_on_worker(self) -> bool {
        Self::ON_WORKER.contains(&self)
    }
    pub fn is_settled(self) -> bool {
        Self::SETTLED.contains(&self)
    }
    /// Terminal for scheduling: nothing more happens to the task on its own.
    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }
}

impl WorkerStatus {
    /// Offline: the watchdog moved it there, and a ping brings it back (`back_online`).
    pub const OFFLINE: &'static [WorkerStatus] = &[
        WorkerStatus::Offline,
        WorkerStatus::Quarantined,
        WorkerStatus::Lost,
    ];
    /// The statuses the watchdog moves offline when the worker stops pinging (`gone_offline`).
    pub const GOES_OFFLINE: &'static [WorkerStatus] = &[
        WorkerStatus::Ready,
        WorkerStatus::Paused,
        WorkerStatus::Failing,
        WorkerStatus::Installing,
    ];
    /// A ping of a worker in these statuses claims tasks (when it has room): R, or O, which the
    /// ping brings back to R.
    pub const TAKES_TASKS: &'static [WorkerStatus] = &[WorkerStatus::Ready, WorkerStatus::Offline];

    /// The status a ping brings an offline worker back to (O→R, Q→P, L→F), or `None` when the
    /// worker is not offline.
    pub fn back_online(self) -> Option<WorkerStatus> {
        match self {
            WorkerStatus::Offline => Some(WorkerStatus::Ready),
            WorkerStatus::Quarantined => Some(WorkerStatus::Paused),
            WorkerStatus::Lost => Some(WorkerStatus::Failing),
            _ => None,
        }
    }
    /// The status the watchdog gives a worker that stopped pinging (R→O, P→Q, F→L, I→O).
    pub fn gone_offline(self) -> Option<WorkerStatus> {
        match self {
            WorkerStatus::Ready | WorkerStatus::Installing => Some(WorkerStatus::Offline),
            WorkerStatus::Paused => Some(WorkerStatus::Quarantined),
            WorkerStatus::Failing => Some(WorkerStatus::Lost),
            _ => None,
        }
    }
    pub fn is_offline(self) -> bool {
        Self::OFFLINE.contains(&self)
    }
    pub fn takes_tasks(self) -> bool {
        Self::TAKES_TASKS.contains(&self)
    }
}

impl RecyclableScope {
    /// Scopes in which a worker may be recycled to another step (G: any, W: within its workflow).
    pub const RECYCLABLE: &'static [RecyclableScope] =
        &[RecyclableScope::Global, RecyclableScope::Workflow];

    pub fn is_recyclable(self) -> bool {
        Self::RECYCLABLE.contains(&self)
    }
}

impl JobStatus {
    /// Open: not finished yet (`job_open_idx`).
    pub const OPEN: &'static [JobStatus] = &[JobStatus::Pending, JobStatus::Running];

    pub fn is_open(self) -> bool {
        Self::OPEN.contains(&self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_letter_round_trips() {
        for s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(s.letter()).unwrap(), *s);
            assert_eq!(s.letter().chars().next().unwrap(), s.as_char());
        }
        for s in WorkerStatus::ALL {
            assert_eq!(WorkerStatus::parse(s.letter()).unwrap(), *s);
        }
    }

    #[test]
    fn rejects_outside_the_alphabet() {
        for bad in ["", "PP", "p", "Q", "é", " P"] {
            assert!(TaskStatus::parse(bad).is_err(), "{bad:?}");
        }
        let msg = TaskStatus::parse("Y").unwrap_err().to_string();
        assert!(msg.contains("IWPACDORUVSFXZ"), "{msg}");
    }

    #[test]
    fn held_by_worker_is_on_worker_once_accepted() {
        let held: String = TaskStatus::HELD_BY_WORKER
            .iter()
            .map(|s| s.as_char())
            .collect();
        assert_eq!(held, "CDORUV");
        for s in TaskStatus::ALL {
            let expected = s.is_on_worker() && *s != TaskStatus::Assigned;
            assert_eq!(TaskStatus::HELD_BY_WORKER.contains(s), expected, "{s:?}");
        }
    }

    #[test]
    fn sql_list_quotes_the_letters_in_order() {
        assert_eq!(
            sql_list(TaskStatus::HOLDING_CAPACITY),
            "'A', 'C', 'D', 'O', 'R'"
        );
        assert_eq!(sql_list(JobStatus::OPEN), "'P', 'R'");
        assert_eq!(sql_list::<TaskStatus>(&[]), "");
        assert_eq!(
            sql_case("w.status", WorkerStatus::ALL, WorkerStatus::back_online),
            "CASE w.status WHEN 'O' THEN 'R' WHEN 'Q' THEN 'P' WHEN 'L' THEN 'F' END"
        );
    }

    fn letters<T: Letter>(set: &[T]) -> String {
        set.iter().map(|s| s.letter()).collect()
    }

    #[test]
    fn task_sets_relate_as_documented() {
        let sorted = |set: &[TaskStatus]| {
            let mut v = set.to_vec();
            v.sort();
            v
        };
        let union = |a: &[TaskStatus], b: &[TaskStatus]| sorted(&[a, b].concat());
        assert_eq!(
            union(TaskStatus::WARM, TaskStatus::BUSY),
            sorted(TaskStatus::ON_WORKER)
        );
        assert_eq!(
            union(
                &[TaskStatus::Waiting, TaskStatus::Pending],
                TaskStatus::ON_WORKER
            ),
            sorted(TaskStatus::IN_FLIGHT)
        );
        for s in TaskStatus::ALL {
            assert_eq!(
                TaskStatus::HOLDING_CAPACITY.contains(s),
                s.is_on_worker() && !TaskStatus::UPLOADING.contains(s),
                "{s:?}"
            );
            assert!(!(s.is_on_worker() && s.is_terminal()), "{s:?}");
            assert!(!s.is_settled() || s.is_terminal(), "{s:?}");
        }
        assert_eq!(letters(TaskStatus::TERMINAL), "SFX");
    }

    #[test]
    fn worker_sets_follow_the_transitions() {
        for s in WorkerStatus::ALL {
            assert_eq!(s.is_offline(), s.back_online().is_some(), "{s:?}");
            assert_eq!(
                WorkerStatus::GOES_OFFLINE.contains(s),
                s.gone_offline().is_some(),
                "{s:?}"
            );
            assert_eq!(
                s.takes_tasks(),
                s.back_online().unwrap_or(*s) == WorkerStatus::Ready,
                "{s:?}"
            );
        }
        assert_eq!(letters(WorkerStatus::OFFLINE), "OQL");
    }

    #[test]
    fn offline_round_trip_keeps_operator_pause() {
        for s in WorkerStatus::ALL {
            if let Some(off) = s.gone_offline() {
                let back = off.back_online().unwrap();
                let expected = if *s == WorkerStatus::Installing {
                    WorkerStatus::Ready
                } else {
                    *s
                };
                assert_eq!(back, expected, "{s:?}");
            }
        }
    }
}
