//! The single-letter status alphabets of tasks, workers and jobs (docs/architecture.md#statuses),
//! parsed once at the edge so the rest of the code never handles a raw letter.

use super::{Error, Result};

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
    /// Statuses in which a task is "on" its worker (a ping reports them).
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
    /// such a task may come from a log stream without a token (`LogAccess::HeldTasks`).
    pub const HELD_BY_WORKER: &'static [TaskStatus] = &[
        TaskStatus::Accepted,
        TaskStatus::Downloading,
        TaskStatus::OnHold,
        TaskStatus::Running,
        TaskStatus::UploadingSuccess,
        TaskStatus::UploadingFailure,
    ];

    pub fn holds_capacity(self) -> bool {
        Self::HOLDING_CAPACITY.contains(&self)
    }
    pub fn is_on_worker(self) -> bool {
        Self::ON_WORKER.contains(&self)
    }
    /// Terminal for scheduling: nothing more happens to the task on its own.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Canceled
        )
    }
}

impl WorkerStatus {
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
        matches!(
            self,
            WorkerStatus::Offline | WorkerStatus::Quarantined | WorkerStatus::Lost
        )
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
