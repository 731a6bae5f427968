//! The management API's certificates: two CAs, role-bearing client certificates and device server
//! certificates, made with rcgen (ring, ECDSA P-256) and read back with a small DER reader of its own (`der.rs`).
//!
//! # Trust model
//!
//! The one idea: **the key that lets a device prove who it is must not be able to vouch for an
//! operator.** A device's disk can be read by whoever holds the device, so everything on it is
//! assumed to leak; what leaks must not let anyone into another device. Hence two CAs, each trusted
//! for one direction only:
//!
//! | CA | its key lives | issues | trusted by |
//! | --- | --- | --- | --- |
//! | client ([`CaKind::Client`]) | with the operator, offline | client certs, role in O | devices |
//! | device ([`CaKind::Device`]) | in the image, on every device | server certs | cairnctl |
//!
//! - **Operators** hold a client certificate whose subject Organization is the role
//!   ([`Role`]: `cairn:admin`, `cairn:operator`, `cairn:reader`) and trust the device CA for the
//!   server's certificate.
//! - **The image build** embeds the client CA certificate (the only client trust anchor the device
//!   has) and the device CA's certificate and key. On first boot the device issues its own server
//!   certificate with [`issue_server`]: its hostname and addresses as SANs, plus `localhost`,
//!   `127.0.0.1` and `::1`. Alternatively the machine config carries a server certificate and key
//!   issued on the host, and then the image need not carry the device CA key at all.
//! - **A stolen device** (or a copy of its image) gives away the device CA key: the thief can
//!   impersonate a Cairn device to cairnctl. It gives away nothing that mints client certificates:
//!   the client CA key was never on a device, and devices trust no other CA for clients, so the
//!   thief cannot reach any other device, let alone as admin. The device CA certificate also
//!   carries EKU serverAuth only, so verifiers that check EKU on CA certificates (OpenSSL does)
//!   refuse a client certificate chained to it even if it were mistakenly configured as a client
//!   anchor; rustls treats anchors as bare keys, so the separation of the two trust stores is what
//!   enforces this, not the EKU.
//! - Where device impersonation matters, give each device a server certificate from the machine
//!   config, and keep the device CA key off the images. If the key is embedded, it should live
//!   outside the verity root (update bundles carry the root, and bundles travel further than
//!   images).
//!
//! Server certificates take the device CA's own validity ([`Ca::validity`]) rather than "now plus
//! N days": a board without a real-time clock issues its certificate before it has the time.
//!
//! CAs are named by their [`Fingerprint`]: the first 20 bytes of sha256 over the public key
//! (SubjectPublicKeyInfo), which is also the CA's Subject Key Identifier and the Authority Key
//! Identifier of everything it issued. So a certificate names its CA without the CA at hand:
//! "issued by CA 5e1f2a3b…, the device trusts CA 9a0c11d2…".

mod ca;
pub mod client_config;
mod der;
mod error;
mod fingerprint;
mod inspect;
mod issue;
mod role;
pub mod secrets;

pub use ca::{Ca, CaKind, Validity, CA_VALIDITY_DAYS};
pub use error::{Error, Result};
pub use fingerprint::Fingerprint;
pub use inspect::{
    check_issued_by, common_name, fingerprint, issuer_fingerprint, pem_to_der, role_of, san_ips,
};
pub use issue::{ephemeral_server_identity, issue_client, issue_server, Issued, San, MAX_SANS};
pub use role::Role;

/// Longest PEM text accepted for one certificate or key, so a hostile file cannot make the parser
/// allocate much. Cairn's certificates are under 1 KiB.
pub const MAX_PEM_BYTES: usize = 64 * 1024;

#[cfg(test)]
mod tests;
