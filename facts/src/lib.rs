//! What a Cairn device is told and how it is laid out: the facts that the device binary and the
//! host tools must agree on, in one small crate both link.
//!
//! - [`config`]: the machine config (`machine.yaml`): its types, limits, parsing and checks, and
//!   its JSON Schema (feature `schema`);
//! - [`containers`]: the config's host containers (`containers:`);
//! - [`probe`]: a health probe of the config (tcp or http), checked when parsed, and running it;
//! - [`network`]: the config's `network` section, checked without a kernel (cairn-netcfg
//!   applies it);
//! - [`kubernetes`]: the config's `kubernetes` section (k3s), and that it needs an image with k3s;
//! - [`layout`]: partition labels, a slot's boot files, bundle payload names and the kernel
//!   command-line words that tie a slot to its root;
//! - [`bootspec`]: a bundle's `boot.json`, how to boot the root it carries.
//!
//! The one idea: everything here is a value and the check that makes it one, with explicit
//! limits and one-line errors naming the field, so `cairnctl` refuses a config or a bundle input
//! for the same reasons the device would. The crate is std and serde only: it goes into the
//! static device binary, and it must not pull the daemon or the updater into the host tools.

pub mod bootspec;
pub mod config;
pub mod containers;
pub mod error;
pub mod kubernetes;
pub mod layout;
pub mod network;
pub mod probe;

/// The YAML example in a module's documentation (the lines between its "```yaml" and "```"),
/// so each section's test can check that what the docs show is accepted.
#[cfg(test)]
pub(crate) fn doc_yaml(module_source: &str) -> String {
    module_source
        .lines()
        .skip_while(|l| !l.starts_with("//! ```yaml"))
        .skip(1)
        .take_while(|l| !l.starts_with("//! ```"))
        .map(|l| format!("{}\n", l.strip_prefix("//! ").unwrap_or("")))
        .collect()
}
