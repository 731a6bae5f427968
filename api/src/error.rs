//! Errors of setting the API up. Errors of calls are gRPC statuses (see [`crate::DeviceError`]).

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the {what} is not valid PEM")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the {what} holds no {expected}: give a PEM file with a \"-----BEGIN {expected}-----\" block")]
    Empty {
        what: &'static str,
        expected: &'static str,
    },
    #[error("CA certificate {index} cannot be a trust anchor")]
    Anchor {
        index: usize,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot verify client certificates with these CA certificates")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("the server certificate and key do not make a TLS server (does the key belong to the certificate?)")]
    ServerCert(#[source] rustls::Error),
    #[error("cannot start the API runtime")]
    Runtime(#[source] io::Error),
    #[error("cannot use the API listener")]
    Listener(#[source] io::Error),
    #[error("the API thread panicked")]
    Panicked,
}
