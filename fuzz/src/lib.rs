//! What each fuzz target feeds the crate it fuzzes, the promises it checks beyond not panicking,
//! and the seed corpus it starts from: one module per fuzzed crate, its targets named in the
//! module's documentation. Each module's `seeds` makes inputs shaped like real ones (signed
//! bundles, DHCP replies, LUKS2 headers, ...); the `seeds` example writes them all.

pub mod api;
pub mod boot;
pub mod bundle;
pub mod daemon;
pub mod facts;
pub mod image;
pub mod luks;
pub mod netcfg;
pub mod tpm;

/// A seed: the target it is for, its file name and its bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// Every module's seeds; `scratch` is an empty folder the bundle seeds build their payloads in.
pub fn seeds(scratch: &std::path::Path) -> Vec<Seed> {
    let mut all = bundle::seeds(scratch);
    all.extend(api::seeds());
    all.extend(boot::seeds());
    all.extend(daemon::seeds());
    all.extend(facts::seeds());
    all.extend(image::seeds());
    all.extend(luks::seeds());
    all.extend(netcfg::seeds());
    all.extend(tpm::seeds());
    all
}
