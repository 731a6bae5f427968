//! Errors of this crate. Each message is one line that names the certificate or CA (by
//! [`Fingerprint`]) and, where there is one, the fix.

use std::path::PathBuf;

use crate::ca::CaKind;
use crate::fingerprint::Fingerprint;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn ca_name(ca: &Option<Fingerprint>) -> String {
    match ca {
        Some(fp) => format!("CA {fp}"),
        None => "a CA that does not name its key (no authority key identifier)".to_string(),
    }
}

fn issues(kind: &CaKind) -> &'static str {
    match kind {
        CaKind::Client => "client certificates come from the client CA",
        CaKind::Device => "server certificates come from the device CA",
    }
}

/// Everything that can go wrong making, loading or checking certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen failed to make a key or certificate.
    #[error("cannot generate {what}")]
    Generate {
        /// What was being made.
        what: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A key file is not a key rcgen can sign with.
    #[error("the CA key is not a PKCS#8 PEM ECDSA P-256 key")]
    Key {
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A CA certificate and key that do not belong together.
    #[error("the key does not belong to CA {ca}; use the key file written with its certificate")]
    KeyMismatch {
        /// The CA certificate's fingerprint.
        ca: Fingerprint,
    },
    /// The wrong CA asked to issue.
    #[error("CA {ca} is the {} CA, and {}", is.name(), issues(needed))]
    WrongCa {
        /// The CA asked.
        ca: Fingerprint,
        /// What it is.
        is: CaKind,
        /// What was needed.
        needed: CaKind,
    },
    /// A certificate loaded as a CA that is not a Cairn CA.
    #[error("certificate {ca} is not a Cairn CA: {reason}")]
    NotCairnCa {
        /// Its fingerprint.
        ca: Fingerprint,
        /// Why.
        reason: String,
    },
    /// A role name that is not one.
    #[error("unknown role `{name}` (expected admin, operator or reader)")]
    UnknownRoleName {
        /// The name given.
        name: String,
    },
    /// A common name or DNS name that cannot go into a certificate.
    #[error("{name:?} is not a valid name: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// Too many subject alternative names.
    #[error("{count} subject alternative names; a server certificate takes at most {max}")]
    TooManySans {
        /// How many there would be.
        count: usize,
        /// The limit, [`crate::MAX_SANS`].
        max: usize,
    },
    /// A client certificate without exactly one Organization.
    #[error(
        "certificate {subject} names {count} Organizations; a Cairn client certificate has exactly \
         one, its role (cairn:admin, cairn:operator or cairn:reader)"
    )]
    RoleCount {
        /// The certificate's subject.
        subject: String,
        /// How many Organizations it names.
        count: usize,
    },
    /// A client certificate whose Organization is not a role.
    #[error(
        "certificate {subject} has Organization {organization:?}, which is not a Cairn role \
         (expected cairn:admin, cairn:operator or cairn:reader)"
    )]
    UnknownRole {
        /// The certificate's subject.
        subject: String,
        /// Its Organization.
        organization: String,
    },
    /// A certificate from another CA than the trusted one.
    #[error(
        "it was issued by {}, not by the trusted CA {trusted}",
        ca_name(issuer)
    )]
    NotIssuedBy {
        /// The issuing CA, from the certificate's authority key identifier.
        issuer: Option<Fingerprint>,
        /// The CA that was expected.
        trusted: Fingerprint,
    },
    /// A certificate that names the trusted CA but whose signature does not verify.
    #[error(
        "its signature does not verify with CA {trusted}, which it names as issuer: it was \
         altered or forged"
    )]
    BadSignature {
        /// The CA it names.
        trusted: Fingerprint,
    },
    /// A certificate not valid yet.
    #[error("certificate {subject} is not valid before {not_before}; check this machine's clock")]
    NotYetValid {
        /// The certificate's subject.
        subject: String,
        /// Its notBefore.
        not_before: String,
    },
    /// An expired certificate.
    #[error("certificate {subject} expired on {not_after}; issue a new one")]
    Expired {
        /// The certificate's subject.
        subject: String,
        /// Its notAfter.
        not_after: String,
    },
    /// A certificate without the EKU its CA issues for.
    #[error("certificate {subject} lacks extendedKeyUsage {needed}, which its CA issues for")]
    WrongUsage {
        /// The certificate's subject.
        subject: String,
        /// The EKU it lacks.
        needed: &'static str,
    },
    /// Input past [`crate::MAX_PEM_BYTES`].
    #[error("{what} is larger than 64 KiB, so it is not a Cairn certificate or key")]
    TooLarge {
        /// What was read.
        what: String,
    },
    /// Text that is not the PEM expected.
    #[error("{what} is not PEM: {reason}")]
    Pem {
        /// What was read.
        what: String,
        /// Why.
        reason: String,
    },
    /// Bytes that are not an X.509 certificate.
    #[error("{what} is not a valid X.509 certificate: {reason}")]
    Parse {
        /// What was read.
        what: String,
        /// Why.
        reason: String,
    },
    /// `gen secrets` asked to write into a folder that has files.
    #[error(
        "{} already exists and is not an empty folder; refusing to overwrite secrets (choose a \
         new folder)",
        path.display()
    )]
    OutNotEmpty {
        /// The folder.
        path: PathBuf,
    },
    /// A file system operation failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done: `create`, `write`, `read`, ….
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A cairnctl client config that cannot be used.
    #[error("{} is not a usable cairnctl config: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}
