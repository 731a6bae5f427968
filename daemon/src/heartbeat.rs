//! The heartbeat of cairnd's main loop, and the thread that feeds the watchdog while it is
//! fresh: a hung daemon (or a hung system) stops the feeding and the watchdog resets the
//! machine. Long work (an install, the health window, disk encryption) beats as it goes.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_updater::health::Clock;

use crate::log::say;
use crate::watchdog;

const WATCHDOG: &str = "/dev/watchdog";
/// The timeout cairnd keeps (init arms it with the same one).
const WATCHDOG_TIMEOUT_S: u32 = 30;
/// How long the main loop may go without a heartbeat before the feeder stops feeding.
const HUNG_AFTER: Duration = Duration::from_secs(60);

/// When the main loop last showed it is alive; cheap to clone and share.
#[derive(Clone)]
pub struct Heartbeat {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Heartbeat {
    pub fn new() -> Heartbeat {
        let heart = Heartbeat {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        };
        heart.beat();
        heart
    }

    pub fn beat(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// Beats every few seconds, forever: for a daemon that has nothing left to do but must
    /// keep the machine from being reset (a reboot is on its way, or updates are off).
    pub fn idle(&self) -> ! {
        loop {
            self.beat();
            std::thread::sleep(Duration::from_secs(5));
        }
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat::new()
    }
}

/// Starts the feeding thread if the device has a watchdog.
pub fn start_feeder(heart: Heartbeat) {
    if !Path::new(WATCHDOG).exists() {
        say!("no watchdog device; a hung system will not reset itself");
        return;
    }
    let dog = match watchdog::Watchdog::open(Path::new(WATCHDOG), Some(WATCHDOG_TIMEOUT_S)) {
        Ok(d) => d,
        Err(e) => {
            say!("cannot open {WATCHDOG}: {e}");
            return;
        }
    };
    let timeout = dog.timeout();
    say!(
        "feeding the watchdog ({}, timeout {} s)",
        dog.identity(),
        timeout.as_secs()
    );
    let every = (timeout / 4).max(Duration::from_secs(1));
    std::thread::spawn(move || loop {
        if heart.age() < HUNG_AFTER {
            if let Err(e) = dog.keepalive() {
                say!("feeding the watchdog: {e}");
            }
        } else {
            say!(
                "main loop silent for {} s: no longer feeding the watchdog",
                heart.age().as_secs()
            );
        }
        std::thread::sleep(every);
    });
}

/// Real time, beating the heart while it sleeps (the health window's clock).
pub struct BeatingClock<'a>(pub &'a Heartbeat, pub Instant);

impl Clock for BeatingClock<'_> {
    fn now(&self) -> Duration {
        self.1.elapsed()
    }
    fn sleep(&self, d: Duration) {
        self.0.beat();
        std::thread::sleep(d);
        self.0.beat();
    }
}
