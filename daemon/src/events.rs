//! The device's events (boot, health, update stages, rollback, config, storage), kept in a
//! bounded ring the API's Events call follows, and in the event log on STATE ([`eventlog`]) so
//! that they outlive a reboot. Capabilities push; only the API reads.
//!
//! When cairnd starts, the ring is filled from the log first: a client connecting after a
//! rollback sees the install, the trial and the rollback that happened before the reboot.

use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use cairn_api::proto::{self, events_response::Event};
use cairn_boot::Slot;
use prost::Message;

use crate::eventlog::{Limits, Log};
use crate::journal::Ring;
use crate::log::{say, unix_ms};

/// The event log's file name on STATE.
pub const LOG_FILE: &str = "events.log";

pub struct Events {
    ring: Ring<(i64, Event)>,
    /// None when STATE had no usable log: events are then kept in memory only.
    log: Mutex<Option<Log>>,
}

impl Events {
    /// Events kept in memory only.
    pub fn new() -> Events {
        Events {
            ring: Ring::new(Limits::EVENTS.records),
            log: Mutex::new(None),
        }
    }

    /// Events kept in `dir`'s event log as well, starting with the ones it already holds. A log
    /// that cannot be opened is reported and the events stay in memory.
    pub fn open(dir: &Path) -> Events {
        let events = Events::new();
        let path = dir.join(LOG_FILE);
        match Log::open(&path, Limits::EVENTS) {
            Ok((log, records, opened)) => {
                if opened.torn > 0 {
                    say!(
                        "{}: cut off {} bytes of an event that was being written when the power \
                         went",
                        path.display(),
                        opened.torn
                    );
                }
                let earlier: Vec<(i64, Event)> = records.iter().filter_map(|r| decode(r)).collect();
                events.ring.prepend(earlier);
                *events.log.lock().unwrap_or_else(|e| e.into_inner()) = Some(log);
            }
            Err(e) => say!(
                "{}: {e}: events are kept in memory only until the next boot",
                path.display()
            ),
        }
        events
    }

    /// Records `event` as happening now: in the log first, then for readers.
    pub fn push(&self, event: Event) {
        let ms = unix_ms(SystemTime::now());
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = log.as_mut() {
            if let Err(e) = l.append(&encode(ms, &event)) {
                say!("writing an event to {LOG_FILE}: {e}");
            }
        }
        // Pushed under the log's lock, so that the ring and the log keep the same order.
        self.ring.push((ms, event));
    }

    /// The ring itself, for readers.
    pub fn ring(&self) -> &Ring<(i64, Event)> {
        &self.ring
    }
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

/// An event as the log stores it: the API's message, without a sequence number.
fn encode(ms: i64, event: &Event) -> Vec<u8> {
    proto::EventsResponse {
        seq: 0,
        time_unix_ms: ms,
        event: Some(event.clone()),
    }
    .encode_to_vec()
}

/// A record of the log; None for one that does not decode or holds an event this version does
/// not know (a newer release wrote it before a rollback).
fn decode(record: &[u8]) -> Option<(i64, Event)> {
    let m = proto::EventsResponse::decode(record).ok()?;
    Some((m.time_unix_ms, m.event?))
}

/// A slot as the API names it.
pub fn proto_slot(slot: Slot) -> proto::Slot {
    match slot {
        Slot::A => proto::Slot::A,
        Slot::B => proto::Slot::B,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn boot(version: &str) -> Event {
        Event::Boot(proto::BootEvent {
            slot: proto::Slot::A as i32,
            os_version: version.into(),
            trial: false,
        })
    }

    #[test]
    fn events_come_back_after_a_restart_before_the_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let first = Events::open(dir.path());
        first.push(boot("0.1.0"));
        first.push(Event::Rollback(proto::RollbackEvent {
            from_slot: proto::Slot::B as i32,
            to_slot: proto::Slot::A as i32,
            reason: "not healthy".into(),
        }));
        drop(first);
        let second = Events::open(dir.path());
        second.push(boot("0.1.0"));
        let b = second.ring().after(0, 100, Duration::ZERO);
        let kinds: Vec<(u64, &str)> = b
            .entries
            .iter()
            .map(|(seq, (_, e))| {
                (
                    *seq,
                    match e {
                        Event::Boot(_) => "boot",
                        Event::Rollback(_) => "rollback",
                        _ => "other",
                    },
                )
            })
            .collect();
        assert_eq!(kinds, vec![(1, "boot"), (2, "rollback"), (3, "boot")]);
        match &b.entries[1].1 .1 {
            Event::Rollback(r) => assert_eq!(r.reason, "not healthy"),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn a_log_that_cannot_be_opened_leaves_events_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let events = Events::open(&dir.path().join("missing"));
        events.push(boot("0.1.0"));
        assert_eq!(events.ring().last_seq(), 1);
    }
}
