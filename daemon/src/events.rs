//! The device's events (boot, health, update stages, rollback, config, storage), kept in a
//! bounded ring the API's Events call follows. Capabilities push; only the API reads.

use std::time::SystemTime;

use cairn_api::proto::{self, events_response::Event};
use cairn_boot::Slot;

use crate::journal::Ring;
use crate::log::unix_ms;

/// Events kept for the API's Events call.
const EVENTS: usize = 256;

pub struct Events(Ring<(i64, Event)>);

impl Events {
    pub fn new() -> Events {
        Events(Ring::new(EVENTS))
    }

    /// Records `event` as happening now.
    pub fn push(&self, event: Event) {
        self.0.push((unix_ms(SystemTime::now()), event));
    }

    /// The ring itself, for readers.
    pub fn ring(&self) -> &Ring<(i64, Event)> {
        &self.0
    }
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

/// A slot as the API names it.
pub fn proto_slot(slot: Slot) -> proto::Slot {
    match slot {
        Slot::A => proto::Slot::A,
        Slot::B => proto::Slot::B,
    }
}
