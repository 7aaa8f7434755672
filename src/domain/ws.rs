//! The WebSocket protocol's pure rules (docs/architecture.md#web-surface): who may receive an
//! event, a client's subscriptions, and the messages a client sends. No I/O: `web::ws` applies
//! them.
//!
//! Who receives what (ours; the original sends everything to every socket):
//! - `Audience::All` (workers, their statuses and updates): every logged-in user, as ListWorkers;
//! - `Audience::Owner` (tasks, workflows, steps, step statistics): the object's owner
//!   (`domain::ownership`: the creating user) and admins; objects without a user owner (legacy
//!   rows, the worker token's) reach admins only;
//! - `Audience::Admin`: admins only; `Audience::Internal`: nobody (replica-internal signals).
//!
//! Subscriptions: a client starts subscribed to everything. `subscribe {event, ids}` sets the ids
//! wanted for that event type (empty: all of them), replacing that type's earlier set; the first
//! subscription ends "everything". `unsubscribe {event}` drops the type; none left: everything
//! again. Events with id 0 reach every client whatever its subscriptions (visibility still applies).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// At most this many event types subscribed at once by one client.
pub const MAX_SUBSCRIBED_TYPES: usize = 64;
/// At most this many ids in one subscription.
pub const MAX_SUBSCRIBED_IDS: usize = 10_000;
/// The longest event type name accepted.
pub const MAX_EVENT_NAME: usize = 64;

/// Who may receive an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Audience {
    All,
    Owner,
    Admin,
    Internal,
}

impl Audience {
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::All => "all",
            Audience::Owner => "owner",
            Audience::Admin => "admin",
            Audience::Internal => "internal",
        }
    }
}

/// The logged-in user behind a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewer {
    pub user_id: i32,
    pub is_admin: bool,
}

/// Whether `viewer` may receive an event for `audience` owned by `owner`.
pub fn may_receive(viewer: Viewer, audience: Audience, owner: Option<i32>) -> bool {
    match audience {
        Audience::Internal => false,
        _ if viewer.is_admin => true,
        Audience::All => true,
        Audience::Owner => owner == Some(viewer.user_id),
        Audience::Admin => false,
    }
}

/// One client's subscriptions (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscriptions {
    /// event type → wanted ids (empty: all). No entry at all: everything.
    by_type: HashMap<String, HashSet<i64>>,
}

impl Subscriptions {
    /// Whether an event of `kind` with envelope id `id` is wanted.
    pub fn wants(&self, kind: &str, id: i64) -> bool {
        id == 0
            || self.by_type.is_empty()
            || self
                .by_type
                .get(kind)
                .is_some_and(|ids| ids.is_empty() || ids.contains(&id))
    }

    /// Applies a subscribe message; refuses (changing nothing) past the bounds.
    pub fn subscribe(&mut self, event: &str, ids: &[i64]) -> Result<(), String> {
        check_event_name(event)?;
        if ids.len() > MAX_SUBSCRIBED_IDS {
            return Err(format!(
                "at most {MAX_SUBSCRIBED_IDS} ids in one subscription"
            ));
        }
        if !self.by_type.contains_key(event) && self.by_type.len() >= MAX_SUBSCRIBED_TYPES {
            return Err(format!(
                "at most {MAX_SUBSCRIBED_TYPES} event types subscribed at once"
            ));
        }
        self.by_type
            .insert(event.to_string(), ids.iter().copied().collect());
        Ok(())
    }

    /// Applies an unsubscribe message.
    pub fn unsubscribe(&mut self, event: &str) {
        self.by_type.remove(event);
    }
}

fn check_event_name(event: &str) -> Result<(), String> {
    if event.is_empty() || event.len() > MAX_EVENT_NAME {
        return Err(format!("an event type is 1 to {MAX_EVENT_NAME} bytes long"));
    }
    Ok(())
}

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Inbound {
    Ping,
    Subscribe {
        event: String,
        #[serde(default)]
        ids: Vec<i64>,
    },
    Unsubscribe {
        event: String,
    },
}

impl Inbound {
    /// Parses a text message; `Err` says why it is not one (unknown type, bad JSON).
    pub fn parse(text: &str) -> Result<Inbound, String> {
        serde_json::from_str(text).map_err(|e| format!("not a client message: {e}"))
    }
}

/// An event as published (schema/0008_ws.sql), parsed from its notification body.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Notice {
    #[serde(rename = "type")]
    pub kind: String,
    pub action: String,
    #[serde(default)]
    pub id: i64,
    pub audience: Audience,
    #[serde(default)]
    pub owner: Option<i32>,
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// What a notification body holds: an event, an array of events (one statement's), or the id
/// of a stored body (over 8 kB) holding either.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Events(Vec<Notice>),
    Ref(i64),
}

#[derive(Deserialize)]
struct RefBody {
    #[serde(rename = "ref")]
    event_id: i64,
}

impl Body {
    pub fn parse(text: &str) -> Result<Body, String> {
        if text.trim_start().starts_with('[') {
            return serde_json::from_str::<Vec<Notice>>(text)
                .map(Body::Events)
                .map_err(|e| format!("not an array of events: {e}"));
        }
        if let Ok(r) = serde_json::from_str::<RefBody>(text) {
            return Ok(Body::Ref(r.event_id));
        }
        serde_json::from_str::<Notice>(text)
            .map(|n| Body::Events(vec![n]))
            .map_err(|e| format!("not an event: {e}"))
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    id: i64,
    action: &'a str,
    payload: &'a serde_json::Value,
}

impl Notice {
    /// The envelope sent to clients: `{type, id, action, payload}` (no audience, no owner).
    pub fn envelope(&self) -> String {
        serde_json::to_string(&Envelope {
            kind: &self.kind,
            id: self.id,
            action: &self.action,
            payload: &self.payload,
        })
        .expect("a JSON value serializes")
    }
}

/// The reply to a ping.
pub const PONG: &str = r#"{"type":"pong"}"#;

/// An error reply to a message that could not be applied.
pub fn error_reply(message: &str) -> String {
    serde_json::json!({"type": "error", "message": message}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALICE: Viewer = Viewer {
        user_id: 1,
        is_admin: false,
    };
    const ADMIN: Viewer = Viewer {
        user_id: 9,
        is_admin: true,
    };

    #[test]
    fn visibility() {
        assert!(may_receive(ALICE, Audience::All, None));
        assert!(may_receive(ALICE, Audience::Owner, Some(1)));
        assert!(!may_receive(ALICE, Audience::Owner, Some(2)));
        assert!(!may_receive(ALICE, Audience::Owner, None));
        assert!(!may_receive(ALICE, Audience::Admin, None));
        assert!(may_receive(ADMIN, Audience::Owner, None));
        assert!(may_receive(ADMIN, Audience::Admin, None));
        assert!(!may_receive(ADMIN, Audience::Internal, None));
    }

    #[test]
    fn subscriptions_as_appendix_a() {
        let mut s = Subscriptions::default();
        assert!(s.wants("task", 5) && s.wants("worker", 7));
        s.subscribe("worker", &[7]).unwrap();
        assert!(s.wants("worker", 7));
        assert!(!s.wants("worker", 8));
        assert!(
            !s.wants("task", 5),
            "the first subscription ends everything"
        );
        assert!(s.wants("task", 0), "id 0 reaches everyone");
        s.subscribe("task", &[]).unwrap();
        assert!(s.wants("task", 5));
        s.subscribe("worker", &[8]).unwrap();
        assert!(!s.wants("worker", 7) && s.wants("worker", 8), "replaced");
        s.unsubscribe("worker");
        assert!(!s.wants("worker", 8));
        s.unsubscribe("task");
        assert!(
            s.wants("worker", 8) && s.wants("task", 1),
            "back to everything"
        );
    }

    #[test]
    fn subscription_bounds() {
        let mut s = Subscriptions::default();
        assert!(s.subscribe("", &[]).is_err());
        assert!(s.subscribe(&"x".repeat(65), &[]).is_err());
        assert!(s.subscribe("t", &vec![1; MAX_SUBSCRIBED_IDS + 1]).is_err());
        for i in 0..MAX_SUBSCRIBED_TYPES {
            s.subscribe(&format!("t{i}"), &[]).unwrap();
        }
        assert!(s.subscribe("one-more", &[]).is_err());
        s.subscribe("t0", &[1]).unwrap();
    }

    #[test]
    fn client_messages() {
        assert_eq!(Inbound::parse(r#"{"type":"ping"}"#), Ok(Inbound::Ping));
        assert_eq!(
            Inbound::parse(r#"{"type":"subscribe","event":"task","ids":[1,2]}"#),
            Ok(Inbound::Subscribe {
                event: "task".into(),
                ids: vec![1, 2]
            })
        );
        assert_eq!(
            Inbound::parse(r#"{"type":"subscribe","event":"task"}"#),
            Ok(Inbound::Subscribe {
                event: "task".into(),
                ids: vec![]
            })
        );
        assert_eq!(
            Inbound::parse(r#"{"type":"unsubscribe","event":"task"}"#),
            Ok(Inbound::Unsubscribe {
                event: "task".into()
            })
        );
        assert!(Inbound::parse(r#"{"type":"shout"}"#).is_err());
        assert!(Inbound::parse("nope").is_err());
    }

    #[test]
    fn bodies_and_envelopes() {
        assert_eq!(Body::parse(r#"{"ref": 12}"#), Ok(Body::Ref(12)));
        let Ok(Body::Events(events)) = Body::parse(
            r#"{"type":"task","action":"status","id":3,"audience":"owner","owner":1,
               "payload":{"taskId":3,"status":"A"}}"#,
        ) else {
            panic!("an event")
        };
        let n = &events[0];
        assert_eq!(n.owner, Some(1));
        let env: serde_json::Value = serde_json::from_str(&n.envelope()).unwrap();
        assert_eq!(
            env,
            serde_json::json!({"type":"task","id":3,"action":"status",
                               "payload":{"taskId":3,"status":"A"}})
        );
        assert!(Body::parse(r#"{"type":"task"}"#).is_err());
        let Ok(Body::Events(two)) = Body::parse(
            r#"[{"type":"task","action":"created","id":1,"audience":"owner","owner":null},
                {"type":"step-stats","action":"delta","id":2,"audience":"owner","owner":null}]"#,
        ) else {
            panic!("an array")
        };
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].kind, "step-stats");
        assert!(Body::parse("[1]").is_err());
    }

    proptest! {
        /// Parsing never panics, whatever a client sends.
        #[test]
        fn parsing_never_panics(text in ".{0,200}") {
            let _ = Inbound::parse(&text);
            let _ = Body::parse(&text);
        }

        /// Unsubscribing from every subscribed type always gives "everything" back.
        #[test]
        fn unsubscribing_all_restores_everything(
            types in proptest::collection::vec("[a-z]{1,5}", 1..8),
            id in 1i64..100,
        ) {
            let mut s = Subscriptions::default();
            for t in &types {
                s.subscribe(t, &[id + 1]).unwrap();
            }
            for t in &types {
                prop_assert!(!s.wants(t, id));
            }
            for t in &types {
                s.unsubscribe(t);
            }
            prop_assert_eq!(s, Subscriptions::default());
        }
    }
}
