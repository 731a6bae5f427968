//! Who may hold the server's connections, so that no client below admin, and no peer without a
//! certificate, can keep the admin out.
//!
//! A connection passes two gates. While its TLS handshake runs it holds one of
//! [`Limits::max_handshakes`] places; when they are all taken, a new connection ends the oldest
//! refused connection still being told why (see below), else the oldest socket that has sent
//! nothing yet, else the oldest handshake (a socket that sends nothing loses its place to the
//! next one, instead of blocking it for the whole handshake timeout). So neither a client
//! refused over and over nor a peer opening sockets as fast as it can crowds out a handshake in
//! progress, such as the admin's. Once the certificate is verified the connection
//! is admitted by role and identity:
//!
//! - one certificate subject holds at most [`Limits::max_per_identity`] connections;
//! - roles below admin share `max_connections - admin_reserve` places; an admin may take any of
//!   the [`Limits::max_connections`], so the last [`Limits::admin_reserve`] are always the admin's;
//! - a connection with no call in flight for [`Limits::idle_timeout`] is closed (the policy
//!   layer counts calls through [`Activity`]).
//!
//! A connection that is not admitted is told why: it is answered with RESOURCE_EXHAUSTED and
//! that reason on every call for a few seconds, while it still holds its handshake place.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::oneshot;
use tonic::body::Body;

use crate::{Caller, Limits, Role};

/// How far a connection holding a handshake place got; the lowest gives its place up first.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Standing {
    /// Refused, and only being told why.
    Refused,
    /// Has sent nothing yet.
    Silent,
    /// Has sent its first bytes: a handshake under way.
    Speaking,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Handshakes in progress and refused connections, oldest first, each with the means to end
    /// it and how far it got.
    handshakes: VecDeque<(u64, oneshot::Sender<()>, Standing)>,
    /// Admitted connections, and of those the ones whose role is below admin.
    admitted: usize,
    below_admin: usize,
    per_identity: HashMap<Arc<str>, usize>,
}

/// The server's bookkeeping of connections; shared by every connection task.
pub(crate) struct Admission {
    limits: Limits,
    state: Mutex<State>,
}

/// A handshake's place; dropping it gives the place back.
pub(crate) struct Pending {
    admission: Arc<Admission>,
    id: u64,
    /// Fires (or closes) when a newer connection took this place.
    pub(crate) evicted: oneshot::Receiver<()>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut state = self.admission.state.lock().unwrap();
        state.handshakes.retain(|(id, _, _)| *id != self.id);
    }
}

impl Pending {
    /// This connection was refused and is only being told why: it is the first to give its
    /// place up to a new connection.
    pub(crate) fn refused(&self) {
        self.admission.stand(self.id, Standing::Refused);
    }

    /// What marks this connection as having spoken once its first bytes arrive.
    pub(crate) fn marker(&self) -> SpokeMarker {
        SpokeMarker {
            admission: self.admission.clone(),
            id: self.id,
        }
    }
}

/// Marks a connection holding a handshake place as having sent its first bytes.
pub(crate) struct SpokeMarker {
    admission: Arc<Admission>,
    id: u64,
}

impl SpokeMarker {
    pub(crate) fn spoke(&self) {
        self.admission.stand(self.id, Standing::Speaking);
    }
}

/// An admitted connection's place; dropping it gives the place back.
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    identity: Arc<str>,
    below_admin: bool,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut state = self.admission.state.lock().unwrap();
        state.admitted -= 1;
        if self.below_admin {
            state.below_admin -= 1;
        }
        if let Some(n) = state.per_identity.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                state.per_identity.remove(&self.identity);
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(limits: &Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits: limits.clone(),
            state: Mutex::new(State::default()),
        })
    }

    /// A place for a new connection's handshake. If all are taken, the oldest refused
    /// connection is ended, or else the oldest handshake.
    pub(crate) fn begin(self: &Arc<Self>) -> Pending {
        let (evict, evicted) = oneshot::channel();
        let mut state = self.state.lock().unwrap();
        while state.handshakes.len() >= self.limits.max_handshakes.max(1) {
            // The lowest standing, and of those the oldest.
            let victim = state
                .handshakes
                .iter()
                .enumerate()
                .min_by_key(|(i, (_, _, standing))| (*standing, *i))
                .map_or(0, |(i, _)| i);
            if let Some((_, evict, _)) = state.handshakes.remove(victim) {
                let _ = evict.send(());
            }
        }
        let id = state.next_id;
        state.next_id += 1;
        state.handshakes.push_back((id, evict, Standing::Silent));
        Pending {
            admission: self.clone(),
            id,
            evicted,
        }
    }

    /// Records how far the connection `id` got; a refusal is final.
    fn stand(&self, id: u64, standing: Standing) {
        let mut state = self.state.lock().unwrap();
        if let Some(entry) = state.handshakes.iter_mut().find(|(i, _, _)| *i == id) {
            if entry.2 != Standing::Refused {
                entry.2 = standing;
            }
        }
    }

    /// Admits a connection whose certificate names `caller`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, caller: &Caller) -> Result<Admitted, String> {
        let limits = &self.limits;
        let below_admin = caller.role != Some(Role::Admin);
        let mut state = self.state.lock().unwrap();
        let held = state
            .per_identity
            .get(&caller.subject)
            .copied()
            .unwrap_or(0);
        if held >= limits.max_per_identity {
            return Err(format!(
                "{} already holds {held} connections, the most one certificate may hold",
                caller.subject
            ));
        }
        let shared = limits.max_connections.saturating_sub(limits.admin_reserve);
        if below_admin && state.below_admin >= shared {
            return Err(format!(
                "the {shared} connections for roles below admin are in use (the other {} are kept for the admin)",
                limits.admin_reserve
            ));
        }
        if state.admitted >= limits.max_connections {
            return Err(format!(
                "all {} connections are in use",
                limits.max_connections
            ));
        }
        state.admitted += 1;
        if below_admin {
            state.below_admin += 1;
        }
        *state
            .per_identity
            .entry(caller.subject.clone())
            .or_insert(0) += 1;
        Ok(Admitted {
            admission: self.clone(),
            identity: caller.subject.clone(),
            below_admin,
        })
    }
}

/// Calls in flight on one connection, and when the last one ended.
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    since: Mutex<Instant>,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            since: Mutex::new(Instant::now()),
        })
    }

    /// Counts a call until the returned guard (kept with the response body) is dropped.
    pub(crate) fn call(self: &Arc<Self>) -> CallGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.clone())
    }

    /// Notes a call that was answered at once (a denial).
    pub(crate) fn touch(&self) {
        *self.since.lock().unwrap() = Instant::now();
    }

    /// When the connection became idle, or `None` while a call is in flight.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        let since = *self.since.lock().unwrap();
        (self.in_flight.load(Ordering::SeqCst) == 0).then_some(since)
    }
}

/// One call in flight; see [`Activity::call`].
pub(crate) struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        // The time first, so a check that sees no call in flight sees the new time.
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its call counted until the client has it all (or goes away).
pub(crate) struct Tracked {
    body: Body,
    _call: CallGuard,
}

impl Tracked {
    pub(crate) fn wrap(body: Body, call: CallGuard) -> Body {
        Body::new(Tracked { body, _call: call })
    }
}

impl http_body::Body for Tracked {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str, role: Option<Role>) -> Caller {
        Caller {
            subject: format!("CN={name}").into(),
            role,
            addr: "127.0.0.1:1".parse().unwrap(),
        }
    }

    fn limits() -> Limits {
        Limits {
            max_connections: 6,
            admin_reserve: 2,
            max_per_identity: 3,
            max_handshakes: 2,
            ..Limits::default()
        }
    }

    #[test]
    fn roles_below_admin_leave_the_reserve_to_the_admin() {
        let a = Admission::new(&limits());
        let readers: Vec<_> = (0..4)
            .map(|i| {
                a.admit(&caller(&format!("r{i}"), Some(Role::Reader)))
                    .unwrap()
            })
            .collect();
        let err = a.admit(&caller("r9", Some(Role::Operator))).err().unwrap();
        assert!(err.contains("kept for the admin"), "{err}");
        let admins = [
            a.admit(&caller("admin", Some(Role::Admin))).unwrap(),
            a.admit(&caller("admin", Some(Role::Admin))).unwrap(),
        ];
        assert!(a.admit(&caller("admin2", Some(Role::Admin))).is_err());
        drop(readers);
        // With the readers gone, the admin may use the shared places too.
        let more = a.admit(&caller("admin", Some(Role::Admin))).unwrap();
        assert!(a.admit(&caller("admin", Some(Role::Admin))).is_err());
        drop((admins, more));
        assert_eq!(a.state.lock().unwrap().admitted, 0);
    }

    #[test]
    fn one_identity_holds_a_bounded_number() {
        let a = Admission::new(&limits());
        let held: Vec<_> = (0..3)
            .map(|_| a.admit(&caller("r", Some(Role::Reader))).unwrap())
            .collect();
        let err = a.admit(&caller("r", Some(Role::Reader))).err().unwrap();
        assert!(err.contains("CN=r already holds 3 connections"), "{err}");
        a.admit(&caller("s", None)).unwrap();
        drop(held);
        assert!(!a.state.lock().unwrap().per_identity.contains_key("CN=r"));
    }

    #[test]
    fn a_new_handshake_ends_the_oldest_waiting_one() {
        let a = Admission::new(&limits());
        let mut first = a.begin();
        let mut second = a.begin();
        first.marker().spoke();
        second.marker().spoke();
        assert!(first.evicted.try_recv().is_err());
        let _third = a.begin();
        assert!(first.evicted.try_recv().is_ok());
        assert!(second.evicted.try_recv().is_err());
        drop(second);
        let _fourth = a.begin();
        assert_eq!(a.state.lock().unwrap().handshakes.len(), 2);
    }

    #[test]
    fn a_refused_connection_gives_its_place_up_before_a_handshake_does() {
        let a = Admission::new(&limits());
        let mut handshake = a.begin();
        let mut refused = a.begin();
        refused.refused();
        let mut third = a.begin();
        assert!(
            refused.evicted.try_recv().is_ok(),
            "the refused one goes first"
        );
        assert!(handshake.evicted.try_recv().is_err());
        // With no refused connection left, the oldest handshake goes.
        let _fourth = a.begin();
        assert!(handshake.evicted.try_recv().is_ok());
        assert!(third.evicted.try_recv().is_err());
    }

    #[test]
    fn activity_counts_calls_until_their_guards_go() {
        let activity = Activity::new();
        assert!(activity.idle_since().is_some());
        let call = activity.call();
        assert!(activity.idle_since().is_none());
        let before = Instant::now();
        drop(call);
        assert!(activity.idle_since().unwrap() >= before);
    }
}
