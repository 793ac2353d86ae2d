//! Hellos (peer id bindings) checked off the swarm task: bounded at once and per neighbour,
//! with the messages of an author whose hello is being checked held until the check ends.

use super::*;

/// Hello verifications (an X.509 chain and a signature check each) running off the swarm task
/// at once; a hello beyond them is ignored, not forwarded. Its sender says hello again.
pub const MAX_HELLO_CHECKS: usize = 8;
/// Hello verifications started for messages one neighbour passes on, per
/// [`HELLO_RATE_WINDOW`]; beyond it they are ignored. Honest neighbours pass on a hello per
/// node of the mesh per hello period, far fewer.
pub const HELLOS_PER_NEIGHBOUR: u32 = 32;
/// The same over all neighbours connected from one IP address: several honest nodes may share
/// one (behind a NAT, or on one host), each passing on a few new hellos per hello period.
pub const HELLOS_PER_ADDRESS: u32 = 128;
pub const HELLO_RATE_WINDOW: Duration = Duration::from_secs(10);
/// Messages kept per author while its hello is being checked, applied once it verified: a new
/// peer's state that follows its hello is not lost to the check. More are ignored.
pub const MAX_HELD_PER_CHECK: usize = 16;
/// A verified peer's unchanged hello is taken without a check for this long; then it is checked
/// again, so a certificate that expired (or a CA that changed) is noticed.
pub const HELLO_RECHECK: Duration = Duration::from_secs(3600);

/// A message held while its author's hello is checked: its id, the neighbour that passed it
/// on, and the message.
pub(super) type HeldMessage = (gossipsub::MessageId, PeerId, GossipMsg);

/// Where a hello came from: a gossip message (reported to gossipsub once checked), or a
/// neighbour directly (`super::direct`).
#[derive(Clone)]
pub(super) enum Origin {
    Gossip(gossipsub::MessageId),
    Direct,
}

/// A hello verified off the task, with what is needed to report and apply it.
pub(super) struct HelloCheck {
    origin: Origin,
    source: PeerId,
    author: PeerId,
    msg: GossipMsg,
    result: std::result::Result<PeerInfo, String>,
}

impl MeshTask {
    /// A hello from `author`: taken at once when it is the one that verified last, else checked
    /// on the blocking pool (None: reported once checked), unless too many checks run.
    pub(super) fn on_hello(
        &mut self,
        author: PeerId,
        hello: Hello,
        msg: GossipMsg,
        origin: Origin,
        source: PeerId,
    ) -> Option<MessageAcceptance> {
        if self.revocations.revokes(&hello.cert_der) {
            debug!("hello from {author} refused: its certificate is revoked");
            self.metrics.count_drop("revoked");
            return Some(MessageAcceptance::Reject);
        }
        let known = self
            .verified
            .get(&author)
            .filter(|v| v.hello == hello && v.checked.elapsed() < HELLO_RECHECK);
        if let Some((info, checked)) = known.map(|v| (v.info.clone(), v.checked)) {
            return Some(self.admit_hello(author, hello, info, checked, &msg));
        }
        if self.hello_checks.len() >= MAX_HELLO_CHECKS {
            self.metrics.count_drop("hello_busy");
            return Some(MessageAcceptance::Ignore);
        }
        let now = Instant::now();
        let address = self.neighbour_address.get(&source).copied();
        let by_address = address.map(|ip| self.hello_rate_by_address.entry(ip).or_insert((now, 0)));
        if by_address.is_some_and(|w| !has_room(w, HELLOS_PER_ADDRESS, now)) {
            self.metrics.count_drop("hello_rate_address");
            return Some(MessageAcceptance::Ignore);
        }
        let by_neighbour = self.hello_rate.entry(source).or_insert((now, 0));
        if !has_room(by_neighbour, HELLOS_PER_NEIGHBOUR, now) {
            self.metrics.count_drop("hello_rate");
            return Some(MessageAcceptance::Ignore);
        }
        by_neighbour.1 += 1;
        // Counted in both windows only once both had room.
        if let Some(w) = address.and_then(|ip| self.hello_rate_by_address.get_mut(&ip)) {
            w.1 += 1;
        }
        self.held.entry(author).or_default().0 += 1;
        let (trust, hello) = (self.trust.clone(), hello);
        self.hello_checks.spawn_blocking(move || {
            // A check that panics still comes back, so its hello is reported and the
            // author's held messages are let go.
            let check = std::panic::AssertUnwindSafe(|| {
                binding::verify_binding(&hello, &author, &trust).map_err(|e| format!("{e:#}"))
            });
            let result = std::panic::catch_unwind(check)
                .unwrap_or_else(|_| Err("the check of its binding failed".to_string()));
            HelloCheck { origin, source, author, msg, result }
        });
        None
    }

    /// A hello checked off the task: applied and reported.
    pub(super) fn on_hello_checked(&mut self, c: HelloCheck) {
        let acceptance = match c.result {
            Ok(_) if matches!(&c.msg.body, Body::Hello(h) if self.revocations.revokes(&h.cert_der)) =>
            {
                // Revoked while it was being checked.
                self.metrics.count_drop("revoked");
                MessageAcceptance::Reject
            }
            Ok(info) => {
                let Body::Hello(hello) = &c.msg.body else {
                    unreachable!("only hellos are checked")
                };
                let hello = hello.clone();
                self.admit_hello(c.author, hello, info, Instant::now(), &c.msg)
            }
            Err(e) => {
                debug!("hello from {} refused: {e}", c.author);
                self.metrics.count_drop("bad_binding");
                MessageAcceptance::Reject
            }
        };
        match &c.origin {
            Origin::Gossip(id) => self.report_late(id, &c.source, acceptance),
            Origin::Direct => self.on_direct_checked(c.author),
        }
        // What the author sent meanwhile: applied once its hello verified, ignored once no check
        // of its hello is left.
        let Some((checks, _)) = self.held.get_mut(&c.author) else { return };
        *checks = checks.saturating_sub(1);
        if *checks > 0 && !self.verified.contains_key(&c.author) {
            return;
        }
        let (_, held) = self.held.remove(&c.author).unwrap_or_default();
        for (id, source, msg) in held {
            let acceptance = self.on_state_message(c.author, msg);
            self.report_late(&id, &source, acceptance);
        }
    }

    /// Reports a message validated after it arrived. Gossipsub keeps an unvalidated message for
    /// a few of its heartbeats only; one reported later is applied here but not passed on.
    fn report_late(
        &mut self,
        id: &gossipsub::MessageId,
        source: &PeerId,
        acceptance: MessageAcceptance,
    ) {
        let accepted = matches!(acceptance, MessageAcceptance::Accept);
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        if !gossipsub.report_message_validation_result(id, source, acceptance) && accepted {
            self.metrics.count_drop("not_forwarded");
        }
    }

    /// A hello whose binding verified as `info` at `checked`.
    fn admit_hello(
        &mut self,
        author: PeerId,
        hello: Hello,
        info: PeerInfo,
        checked: Instant,
        msg: &GossipMsg,
    ) -> MessageAcceptance {
        let known = self.verified.contains_key(&author);
        if !known {
            if let Err(reason) = self.may_bind(&info) {
                debug!("hello from {author} ({info}) refused: {reason}");
                self.metrics.count_drop(reason);
                return MessageAcceptance::Ignore;
            }
        }
        self.metrics.count("hello", "in");
        let now = self.now();
        self.verified.insert(author, Verified { info: info.clone(), hello, checked, last: now });
        self.open_gate(&author);
        if !known {
            debug!("mesh peer {author} verified as {info}");
            // A node we did not know: it probably does not know us either.
            self.hello_due = true;
            self.revocations_due = true;
            for l in self.local.values_mut() {
                l.dirty = true;
            }
        }
        let _ = self.view.apply(msg, &peer_ref(&author), now);
        self.view_dirty = true;
        MessageAcceptance::Accept
    }

    /// May a newly verified peer with certificate `info` join the verified peers? The reason
    /// counted when not.
    fn may_bind(&self, info: &PeerInfo) -> Result<(), &'static str> {
        if self.verified.len() >= MAX_VERIFIED_PEERS {
            return Err("too_many_peers");
        }
        let same = |v: &&Verified| v.info.role == info.role && v.info.name == info.name;
        if self.verified.values().filter(same).count() >= MAX_BINDINGS_PER_NODE {
            return Err("too_many_bindings");
        }
        Ok(())
    }
}

/// Whether a rate window (when it began, checks started in it) has room for one more check
/// under `limit`; a window older than [`HELLO_RATE_WINDOW`] starts again.
fn has_room(window: &mut (Instant, u32), limit: u32, now: Instant) -> bool {
    let (since, started) = window;
    if now.duration_since(*since) >= HELLO_RATE_WINDOW {
        (*since, *started) = (now, 0);
    }
    *started < limit
}
