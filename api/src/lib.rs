//! The management API: gRPC (package `cairn.v1`, `proto/cairn/v1/*.proto`) over mutual TLS.
//!
//! The one idea: a call reaches the device only through three gates, in this order. TLS: the
//! client's certificate must chain to the CA the device trusts, or there is no connection at
//! all (and no plaintext port exists). Role: the certificate's Organization names a role
//! (`cairn:reader`, `cairn:operator`, `cairn:admin`) and [`Rpc::required`] says which role each
//! call needs; a call above the caller's role is PERMISSION_DENIED and logged with the
//! certificate's subject. Limits ([`Limits`]): message sizes, a deadline on every call, one
//! upgrade at a time, bounded streams and connections. What is left is the [`Device`] trait,
//! synchronous like the daemon that implements it; each call runs on a blocking thread.
//!
//! The server is one thread with a current-thread tokio runtime: [`serve`] starts it and the
//! returned [`Server`] stops it.

mod admission;
pub mod ddi;
mod device;
mod error;
pub mod fetch;
mod limits;
mod policy;
pub mod registry;
mod role;
mod server;
mod service;
#[doc(hidden)]
pub mod subject;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "testing")]
pub mod testing_ddi;
#[cfg(feature = "testing")]
pub mod testing_registry;
mod tls;

/// The types, the server trait and a transport-generic client generated from the .proto files.
pub mod proto {
    #![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]
    tonic::include_proto!("cairn.v1");
}

pub use cairn_pki::Role;
pub use device::{Closed, Device, DeviceError, ErrorKind, Sink, UpgradeSource, Upload};
pub use error::Error;
pub use limits::Limits;
pub use role::{Caller, Rpc, SERVICE};
pub use server::{serve, Log, Options, Server};
pub use tls::{TlsCheck, TlsConfig};

/// The `api_version` this crate serves (see `VersionResponse.api_version`).
pub const API_VERSION: &str = "1";
