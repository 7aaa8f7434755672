//! Who may change what: an object (workflow and its steps, task, recruiter, template version,
//! template run) is changed or deleted only by its owner or an admin. Objects created with the
//! worker token belong to the worker token; objects without a recorded owner (created before
//! owners were recorded, or whose user was deleted) are an admin's to change. Reading stays open
//! to every authenticated caller. Machines (provider workers, recruiters) are managed by users
//! only where a quota bounds them. The lookups are in `db::ownership`.

/// The recorded owner of an object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner {
    /// The user who created it, while that user exists.
    pub user_id: Option<i32>,
    /// Created with the worker token (not by a user).
    pub worker_token: bool,
}

impl Owner {
    /// The owner an object created by `actor` records.
    pub fn of(actor: Actor) -> Owner {
        match actor {
            Actor::Admin(id) | Actor::User(id) => Owner {
                user_id: Some(id),
                worker_token: false,
            },
            Actor::WorkerToken => Owner {
                user_id: None,
                worker_token: true,
            },
            Actor::Nobody => Owner::default(),
        }
    }
}

/// Who is asking, as far as ownership goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Actor {
    Admin(i32),
    User(i32),
    WorkerToken,
    /// Anonymous callers (never reach a change RPC through the auth layer; refused here too).
    #[default]
    Nobody,
}

impl Actor {
    pub fn is_admin(self) -> bool {
        matches!(self, Actor::Admin(_))
    }
}

/// Whether `actor` may change or delete an object owned by `owner`.
pub fn may_change(actor: Actor, owner: Owner) -> bool {
    match actor {
        Actor::Admin(_) => true,
        Actor::User(id) => owner.user_id == Some(id),
        Actor::WorkerToken => owner.worker_token,
        Actor::Nobody => false,
    }
}

/// Whether `actor` may create, change or delete machines (workers of a provider, recruiters that
/// deploy them) where `has_quota` says whether every provider concerned has a quota: without
/// one, only an admin or the worker token (the operator's own deployments) may.
pub fn may_manage_machines(actor: Actor, has_quota: bool) -> bool {
    match actor {
        Actor::Admin(_) | Actor::WorkerToken => true,
        Actor::User(_) => has_quota,
        Actor::Nobody => false,
    }
}

/// Whether `actor` may read the e-mail address of user `user_id` (ListUsers): admins and the
/// user themself; others see it blank.
pub fn may_see_email(actor: Actor, user_id: i32) -> bool {
    match actor {
        Actor::Admin(_) => true,
        Actor::User(id) => id == user_id,
        Actor::WorkerToken | Actor::Nobody => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn owner_or_admin() {
        let alice = Owner::of(Actor::User(1));
        assert!(may_change(Actor::User(1), alice));
        assert!(!may_change(Actor::User(2), alice));
        assert!(may_change(Actor::Admin(3), alice));
        assert!(!may_change(Actor::WorkerToken, alice));
        assert!(!may_change(Actor::Nobody, alice));
    }

    #[test]
    fn unowned_is_admin_only() {
        let legacy = Owner::default();
        assert!(may_change(Actor::Admin(1), legacy));
        assert!(!may_change(Actor::User(1), legacy));
        assert!(!may_change(Actor::WorkerToken, legacy));
    }

    #[test]
    fn worker_token_changes_only_its_own() {
        let own = Owner::of(Actor::WorkerToken);
        assert!(may_change(Actor::WorkerToken, own));
        assert!(!may_change(Actor::User(1), own));
        assert!(may_change(Actor::Admin(1), own));
    }

    #[test]
    fn machines_without_quota_are_admin_only() {
        assert!(may_manage_machines(Actor::Admin(1), false));
        assert!(may_manage_machines(Actor::WorkerToken, false));
        assert!(!may_manage_machines(Actor::User(1), false));
        assert!(may_manage_machines(Actor::User(1), true));
        assert!(!may_manage_machines(Actor::Nobody, true));
    }

    #[test]
    fn emails_for_admins_and_oneself() {
        assert!(may_see_email(Actor::Admin(1), 2));
        assert!(may_see_email(Actor::User(2), 2));
        assert!(!may_see_email(Actor::User(3), 2));
        assert!(!may_see_email(Actor::WorkerToken, 2));
    }

    fn actor() -> impl Strategy<Value = Actor> {
        prop_oneof![
            (1..5i32).prop_map(Actor::Admin),
            (1..5i32).prop_map(Actor::User),
            Just(Actor::WorkerToken),
            Just(Actor::Nobody),
        ]
    }

    proptest! {
        /// The creator may always change what it created (except anonymous callers), an admin
        /// may change anything, and a plain user nothing another created.
        #[test]
        fn creator_admin_and_strangers(creator in actor(), other in actor()) {
            let owner = Owner::of(creator);
            if creator != Actor::Nobody {
                prop_assert!(may_change(creator, owner));
            }
            prop_assert!(may_change(Actor::Admin(99), owner));
            if let Actor::User(id) = other {
                let same = matches!(creator, Actor::User(c) | Actor::Admin(c) if c == id);
                prop_assert_eq!(may_change(other, owner), same);
            }
        }
    }
}
