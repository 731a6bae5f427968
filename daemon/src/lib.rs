//! Small, synchronous, device-side building blocks of the `cairnd` role.
//!
//! Each module owns one kernel or network interface and nothing else: [`uevent`] receives the
//! kernel's device events over netlink, [`watchdog`] drives `/dev/watchdog`, and [`netif`] brings
//! an interface up and reports its addresses. There is no async runtime here and no C
//! dependency: everything is std, or libc where std has no call. The daemon's main loop decides
//! when to call what.
//!
//! What the device is told comes from `cairn_facts`: [`config`] is its machine config (with the
//! certificates checked by the API's TLS stack) and [`probe`] its health probes, which run
//! without a shell.

pub mod block;
pub mod cairnd;
pub mod config;
pub mod error;
pub mod journal;
pub mod maintenance;
pub mod netif;
pub mod remote;
pub mod storage;
pub mod uevent;
pub mod watchdog;

pub use cairn_facts::probe;
pub use error::{Error, Result};

#[cfg(test)]
mod testns {
    //! Running a test inside a network namespace of its own, so it can change interfaces
    //! without reaching the host's.

    /// Runs `f` on a new thread that first moves into a new, empty network namespace
    /// (`unshare(CLONE_NEWNET)` applies to the calling thread only; the namespace goes away
    /// when the thread and its sockets do). Returns `None` after printing why when that is not
    /// possible here (not root, or unshare refused); a panic in `f` fails the test.
    ///
    /// Inside, /proc/net and /sys/class/net still show the host's namespace (they follow the
    /// process and the sysfs mount, not the thread): use netlink or socket ioctls.
    pub fn in_fresh_netns<T: Send + 'static>(
        what: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped {what}: needs root to create a network namespace");
            return None;
        }
        let thread = std::thread::spawn(move || {
            // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        });
        match thread.join() {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                println!("skipped {what}: unshare(CLONE_NEWNET) failed: {e}");
                None
            }
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}
