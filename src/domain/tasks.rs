//! Task rules (the original's, with its bugs fixed; docs/architecture.md#updatetaskstatus): what a
//! submission may ask for, the status a new task starts in, which status changes are accepted and
//! what they record, and the retry arithmetic. Pure: the database code applies what these functions
//! decide.

use super::status::TaskStatus;
use super::{Error, Result};

/// A validated submission (the parts that need rules; the rest is copied as given).
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub command: String,
    pub container: String,
    pub requested_status: Option<TaskStatus>,
    pub dependencies: Vec<i32>,
    pub retry: Option<i32>,
    pub timeouts: [Option<f32>; 3],
}

/// Statuses a client may submit a task in: P (default), I (inactive, activated by a template run)
/// and W (waiting; a task without prerequisites submitted as W starts P — nothing to wait for).
pub const SUBMITTABLE: &[TaskStatus] = &[
    TaskStatus::Pending,
    TaskStatus::Inactive,
    TaskStatus::Waiting,
];

impl Submission {
    /// Checks a submission. `status` is the raw letter ("" = default).
    pub fn validate(
        command: &str,
        container: &str,
        status: &str,
        dependencies: &[i32],
        retry: Option<i32>,
        timeouts: [Option<f32>; 3],
    ) -> Result<Submission> {
        if command.trim().is_empty() {
            return Err(Error::Invalid("command must not be empty".into()));
        }
        if container.trim().is_empty() {
            return Err(Error::Invalid(
                "container must not be empty (the shell executor ignores it, but give an image name)".into(),
            ));
        }
        let requested_status = match status {
            "" => None,
            s => {
                let st = TaskStatus::parse(s)?;
                if !SUBMITTABLE.contains(&st) {
                    return Err(Error::Invalid(format!(
                        "a task cannot be submitted in status {st}: submit it as P (default), I or W"
                    )));
                }
                Some(st)
            }
        };
        if let Some(r) = retry
            && r < 0
        {
            return Err(Error::Invalid(format!("retry must be 0 or more, not {r}")));
        }
        for (name, t) in ["download_timeout", "running_timeout", "upload_timeout"]
            .iter()
            .zip(timeouts)
        {
            if let Some(t) = t
                && (!t.is_finite() || t < 0.0)
            {
                return Err(Error::Invalid(format!(
                    "{name} must be a non-negative number of seconds"
                )));
            }
        }
        let mut deps = dependencies.to_vec();
        deps.sort_unstable();
        deps.dedup();
        if let Some(bad) = deps.iter().find(|&&d| d <= 0) {
            return Err(Error::Invalid(format!(
                "invalid prerequisite task id {bad}"
            )));
        }
        Ok(Submission {
            command: command.to_string(),
            container: container.to_string(),
            requested_status,
            dependencies: deps,
            retry,
            timeouts,
        })
    }

    /// The status the task starts in, given the current statuses of its prerequisites: with
    /// prerequisites, P if all have succeeded already (docs/architecture.md#submittask: depending
    /// on a finished task works), else W; without, the requested status (W means nothing here → P).
    pub fn initial_status(&self, prerequisites: &[TaskStatus]) -> TaskStatus {
        if !self.dependencies.is_empty() {
            if prerequisites.iter().all(|s| *s == TaskStatus::Succeeded) {
                return match self.requested_status {
                    Some(TaskStatus::Inactive) => TaskStatus::Inactive,
                    _ => TaskStatus::Pending,
                };
            }
            return TaskStatus::Waiting;
        }
        match self.requested_status {
            Some(TaskStatus::Inactive) => TaskStatus::Inactive,
            _ => TaskStatus::Pending,
        }
    }
}

/// Which duration column a status update's `duration` is recorded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationColumn {
    Download,
    Run,
    Upload,
}

impl DurationColumn {
    /// O → download, U/V → run, S/F → upload (as the original); other statuses record none.
    pub fn for_status(status: TaskStatus) -> Option<DurationColumn> {
        match status {
            TaskStatus::OnHold => Some(DurationColumn::Download),
            TaskStatus::UploadingSuccess | TaskStatus::UploadingFailure => {
                Some(DurationColumn::Run)
            }
            TaskStatus::Succeeded | TaskStatus::Failed => Some(DurationColumn::Upload),
            _ => None,
        }
    }
}

/// What a status update does besides setting the status.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    pub new: TaskStatus,
    /// (column, seconds) to record.
    pub duration: Option<(DurationColumn, i32)>,
    /// Stamp `run_started_at` (the task starts running).
    pub starts_running: bool,
    /// The task goes back to the queue: forget its worker, stamp `pending_since`.
    pub becomes_pending: bool,
    /// The task leaves its worker's hands for good or for a while: forget the worker.
    pub releases_worker: bool,
    /// The worker did something (accepted or finished a task): its idle clock restarts.
    pub worker_activity: bool,
    /// `retry` is incremented (free retry: the automatic retry does not consume the budget).
    pub free_retry: bool,
}

/// Decides what updating a task to `new` does (any current status: the original validates no
/// transition, and operators rely on moving tasks back to P). Same status is handled before (it is
/// an idempotent success that changes nothing). A is set by assignment only.
pub fn status_change(
    new: TaskStatus,
    duration: Option<i32>,
    free_retry: bool,
) -> Result<StatusChange> {
    if new == TaskStatus::Assigned {
        return Err(Error::Invalid(
            "status A is set by assignment (a worker's ping), not by UpdateTaskStatus".into(),
        ));
    }
    if let Some(d) = duration
        && d < 0
    {
        return Err(Error::Invalid(format!(
            "duration must be 0 or more seconds, not {d}"
        )));
    }
    if free_retry && new != TaskStatus::Failed {
        return Err(Error::Invalid("free_retry only applies to status F".into()));
    }
    let becomes_pending = new == TaskStatus::Pending;
    Ok(StatusChange {
        new,
        duration: duration.and_then(|d| DurationColumn::for_status(new).map(|c| (c, d))),
        starts_running: new == TaskStatus::Running,
        becomes_pending,
        releases_worker: matches!(
            new,
            TaskStatus::Pending | TaskStatus::Waiting | TaskStatus::Inactive
        ),
        worker_activity: matches!(
            new,
            TaskStatus::Accepted | TaskStatus::Succeeded | TaskStatus::Failed
        ),
        free_retry,
    })
}

/// Retries left after a failure: the stored budget (NULL = 0) plus one when the retry is free.
/// The failed task is retried when this is positive; its clone gets this minus one, so a free retry
/// leaves the budget unchanged (as the original).
pub fn retries_after_failure(stored_retry: Option<i32>, free_retry: bool) -> i32 {
    stored_retry.unwrap_or(0).max(0) + i32::from(free_retry)
}

/// The retry budget of an automatic retry's clone, or `None` when the failure is final.
pub fn automatic_retry_budget(stored_retry: Option<i32>, free_retry: bool) -> Option<i32> {
    let left = retries_after_failure(stored_retry, free_retry);
    (left > 0).then_some(left - 1)
}

/// The retry budget of a manual RetryTask's clone: max((asked or stored) − 1, 0).
pub fn manual_retry_budget(asked: Option<i32>, stored: Option<i32>) -> Result<i32> {
    if let Some(a) = asked
        && a < 0
    {
        return Err(Error::Invalid(format!("retry must be 0 or more, not {a}")));
    }
    Ok((asked.or(stored).unwrap_or(0) - 1).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sub(status: &str, deps: &[i32]) -> Result<Submission> {
        Submission::validate("echo hi", "alpine", status, deps, Some(1), [None; 3])
    }

    #[test]
    fn submissions_are_validated() {
        assert!(Submission::validate("", "alpine", "", &[], None, [None; 3]).is_err());
        assert!(Submission::validate("  ", "alpine", "", &[], None, [None; 3]).is_err());
        assert!(Submission::validate("echo", "", "", &[], None, [None; 3]).is_err());
        assert!(
            sub("S", &[]).is_err(),
            "a task cannot be submitted as succeeded"
        );
        assert!(sub("PP", &[]).is_err());
        assert!(sub("x", &[]).is_err());
        assert!(sub("", &[0]).is_err());
        assert!(Submission::validate("e", "c", "", &[], Some(-1), [None; 3]).is_err());
        assert!(Submission::validate("e", "c", "", &[], None, [Some(-1.0), None, None]).is_err());
        assert!(
            Submission::validate("e", "c", "", &[], None, [None, Some(f32::NAN), None]).is_err()
        );
        assert_eq!(sub("", &[3, 1, 3]).unwrap().dependencies, vec![1, 3]);
    }

    #[test]
    fn initial_status() {
        use TaskStatus::*;
        assert_eq!(sub("", &[]).unwrap().initial_status(&[]), Pending);
        assert_eq!(sub("I", &[]).unwrap().initial_status(&[]), Inactive);
        assert_eq!(sub("W", &[]).unwrap().initial_status(&[]), Pending);
        assert_eq!(sub("", &[1]).unwrap().initial_status(&[Running]), Waiting);
        assert_eq!(sub("I", &[1]).unwrap().initial_status(&[Running]), Waiting);
        assert_eq!(
            sub("", &[1, 2])
                .unwrap()
                .initial_status(&[Succeeded, Succeeded]),
            Pending
        );
        assert_eq!(
            sub("I", &[1]).unwrap().initial_status(&[Succeeded]),
            Inactive
        );
    }

    #[test]
    fn status_changes() {
        use TaskStatus::*;
        assert!(status_change(Assigned, None, false).is_err());
        assert!(status_change(Succeeded, Some(-1), false).is_err());
        assert!(status_change(Succeeded, None, true).is_err());
        let c = status_change(Running, Some(5), false).unwrap();
        assert!(c.starts_running && c.duration.is_none());
        let c = status_change(UploadingSuccess, Some(5), false).unwrap();
        assert_eq!(c.duration, Some((DurationColumn::Run, 5)));
        let c = status_change(Failed, Some(2), true).unwrap();
        assert_eq!(c.duration, Some((DurationColumn::Upload, 2)));
        assert!(c.free_retry && c.worker_activity);
        let c = status_change(Pending, None, false).unwrap();
        assert!(c.becomes_pending && c.releases_worker);
    }

    #[test]
    fn retry_arithmetic_matches_the_original() {
        assert_eq!(automatic_retry_budget(None, false), None);
        assert_eq!(automatic_retry_budget(Some(0), false), None);
        assert_eq!(automatic_retry_budget(Some(2), false), Some(1));
        assert_eq!(
            automatic_retry_budget(Some(0), true),
            Some(0),
            "a free retry keeps the budget"
        );
        assert_eq!(automatic_retry_budget(Some(3), true), Some(3));
        assert_eq!(manual_retry_budget(None, None).unwrap(), 0);
        assert_eq!(manual_retry_budget(Some(3), Some(0)).unwrap(), 2);
        assert_eq!(manual_retry_budget(None, Some(2)).unwrap(), 1);
        assert!(manual_retry_budget(Some(-1), None).is_err());
    }

    proptest! {
        #[test]
        fn budgets_never_grow_or_go_negative(stored in proptest::option::of(-5i32..50), free in any::<bool>()) {
            if let Some(b) = automatic_retry_budget(stored, free) {
                prop_assert!(b >= 0);
                prop_assert!(b <= stored.unwrap_or(0).max(0));
                if free { prop_assert_eq!(b, stored.unwrap_or(0).max(0)); }
            } else {
                prop_assert!(!free && stored.unwrap_or(0) <= 0);
            }
        }

        #[test]
        fn every_letter_either_validates_or_is_refused(s in "\\PC{0,3}") {
            let r = Submission::validate("c", "i", &s, &[], None, [None; 3]);
            match TaskStatus::parse(&s) {
                Ok(st) if SUBMITTABLE.contains(&st) => prop_assert!(r.is_ok()),
                _ if s.is_empty() => prop_assert!(r.is_ok()),
                _ => prop_assert!(r.is_err()),
            }
        }
    }
}
