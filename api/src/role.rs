//! Who may call what: the role a client certificate carries and the role each call needs.
//!
//! A role ([`Role`], from `cairn_pki`, which writes it into the certificates it issues) is the
//! certificate's subject Organization, so the CA decides roles when it issues certificates and
//! the device keeps no user list. Roles are ordered: each may do what the ones below it may, so
//! the table holds one minimum role per call.
//!
//! | role     | calls |
//! |----------|-------|
//! | reader   | Version, Health, SlotStatus, ServiceList, Logs, Events |
//! | operator | + ServiceRestart, Upgrade, Rollback, Reboot |
//! | admin    | + Shutdown, ApplyConfig, ConfirmConfig, RecoveryKey, Unlock, Kubeconfig |
//!
//! Why this split: a reader observes and changes nothing (a monitoring system). An operator
//! does what brings a box back or forward and cannot lock anyone out: an upgrade only installs
//! bundles signed by a key the device trusts, a rollback only boots a slot that was committed,
//! and a reboot comes back by itself. Admin keeps what a mistake cannot undo remotely:
//! Shutdown (someone has to go to the box to power it on) and the machine config (a wrong
//! network section cuts the box off; try mode helps, but it is still the admin's call), and the
//! disks' recovery key, which opens the device's data to whoever holds it, and k3s's admin
//! kubeconfig, which is full control of the cluster and its workloads.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use cairn_pki::Role;
use rustls::pki_types::CertificateDer;

use crate::subject::Subject;

/// The gRPC service's full name, as in request paths (`/cairn.v1.DeviceService/Version`).
pub const SERVICE: &str = "cairn.v1.DeviceService";

/// Every call of the service. A test checks this list against the .proto files, so a new RPC
/// cannot be served without a row in [`Rpc::required`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    Version,
    Health,
    SlotStatus,
    ServiceList,
    ServiceRestart,
    Logs,
    Upgrade,
    Rollback,
    Reboot,
    Shutdown,
    ApplyConfig,
    ConfirmConfig,
    Events,
    RecoveryKey,
    Unlock,
    Kubeconfig,
}

impl Rpc {
    pub const ALL: [Rpc; 16] = [
        Rpc::Version,
        Rpc::Health,
        Rpc::SlotStatus,
        Rpc::ServiceList,
        Rpc::ServiceRestart,
        Rpc::Logs,
        Rpc::Upgrade,
        Rpc::Rollback,
        Rpc::Reboot,
        Rpc::Shutdown,
        Rpc::ApplyConfig,
        Rpc::ConfirmConfig,
        Rpc::Events,
        Rpc::RecoveryKey,
        Rpc::Unlock,
        Rpc::Kubeconfig,
    ];

    /// The role table: the lowest role that may make this call.
    pub const fn required(self) -> Role {
        match self {
            Rpc::Version
            | Rpc::Health
            | Rpc::SlotStatus
            | Rpc::ServiceList
            | Rpc::Logs
            | Rpc::Events => Role::Reader,
            Rpc::ServiceRestart | Rpc::Upgrade | Rpc::Rollback | Rpc::Reboot => Role::Operator,
            Rpc::Shutdown
            | Rpc::ApplyConfig
            | Rpc::ConfirmConfig
            | Rpc::RecoveryKey
            | Rpc::Unlock
            | Rpc::Kubeconfig => Role::Admin,
        }
    }

    /// The method name, as in the .proto file.
    pub const fn name(self) -> &'static str {
        match self {
            Rpc::Version => "Version",
            Rpc::Health => "Health",
            Rpc::SlotStatus => "SlotStatus",
            Rpc::ServiceList => "ServiceList",
            Rpc::ServiceRestart => "ServiceRestart",
            Rpc::Logs => "Logs",
            Rpc::Upgrade => "Upgrade",
            Rpc::Rollback => "Rollback",
            Rpc::Reboot => "Reboot",
            Rpc::Shutdown => "Shutdown",
            Rpc::ApplyConfig => "ApplyConfig",
            Rpc::ConfirmConfig => "ConfirmConfig",
            Rpc::Events => "Events",
            Rpc::RecoveryKey => "RecoveryKey",
            Rpc::Unlock => "Unlock",
            Rpc::Kubeconfig => "Kubeconfig",
        }
    }

    /// The call a gRPC request path names (`/cairn.v1.DeviceService/Version`), if any.
    pub fn from_path(path: &str) -> Option<Rpc> {
        let method = path
            .strip_prefix('/')?
            .strip_prefix(SERVICE)?
            .strip_prefix('/')?;
        Rpc::ALL.into_iter().find(|r| r.name() == method)
    }

    /// Whether the call changes the device (and so goes to the audit log when allowed).
    pub const fn changes_device(self) -> bool {
        !matches!(self.required(), Role::Reader)
    }
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The client of a connection, from its verified certificate; every request carries it.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The certificate's subject, e.g. `CN=alice, O=cairn:operator`: what logs name.
    pub subject: Arc<str>,
    /// `None` when the certificate names no Cairn role, or more than one.
    pub role: Option<Role>,
    pub addr: SocketAddr,
}

impl Caller {
    /// Reads the subject and role from a client certificate that TLS has already verified.
    pub fn from_certificate(cert: &CertificateDer<'_>, addr: SocketAddr) -> Caller {
        let subject = webpki::EndEntityCert::try_from(cert)
            .ok()
            .and_then(|c| Subject::parse(c.subject()).ok());
        let Some(subject) = subject else {
            // No role is the safe answer to a subject this parser does not follow.
            return Caller {
                subject: "(unreadable subject)".into(),
                role: None,
                addr,
            };
        };
        let mut roles = subject.organizations().filter_map(Role::from_organization);
        let role = match (roles.next(), roles.next()) {
            (Some(r), None) => Some(r),
            (Some(a), Some(b)) if a == b && roles.all(|r| r == a) => Some(a),
            _ => None,
        };
        Caller {
            subject: subject.to_string().into(),
            role,
            addr,
        }
    }

    /// `Err` holds the one-line reason given to the client (and the log) when the caller may
    /// not make this call.
    pub fn may_call(&self, rpc: Rpc) -> Result<(), String> {
        let needs = rpc.required();
        match self.role {
            Some(role) if role >= needs => Ok(()),
            Some(role) => Err(format!(
                "{rpc} needs the {needs} role; this client certificate ({}) has the {role} role",
                self.subject
            )),
            None => Err(format!(
                "this client certificate ({}) has no Cairn role: its subject Organization must be \
                 exactly one of {}, {}, {}",
                self.subject,
                Role::Reader.organization(),
                Role::Operator.organization(),
                Role::Admin.organization()
            )),
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role {
            Some(role) => write!(f, "{} ({role}) from {}", self.subject, self.addr),
            None => write!(f, "{} (no role) from {}", self.subject, self.addr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_calls() {
        for rpc in Rpc::ALL {
            let path = format!("/{SERVICE}/{}", rpc.name());
            assert_eq!(Rpc::from_path(&path), Some(rpc));
        }
        assert_eq!(Rpc::from_path("/cairn.v1.DeviceService/Nope"), None);
        assert_eq!(Rpc::from_path("/cairn.v2.DeviceService/Version"), None);
        assert_eq!(Rpc::from_path("cairn.v1.DeviceService/Version"), None);
        assert_eq!(Rpc::from_path("/cairn.v1.DeviceServiceX/Version"), None);
    }

    #[test]
    fn the_table() {
        let allowed = |role: Role| -> Vec<&str> {
            Rpc::ALL
                .into_iter()
                .filter(|r| r.required() <= role)
                .map(Rpc::name)
                .collect()
        };
        assert_eq!(
            allowed(Role::Reader),
            [
                "Version",
                "Health",
                "SlotStatus",
                "ServiceList",
                "Logs",
                "Events"
            ]
        );
        assert_eq!(allowed(Role::Operator).len(), 10);
        assert!(!allowed(Role::Operator).contains(&"RecoveryKey"));
        assert!(!allowed(Role::Operator).contains(&"Unlock"));
        assert!(!allowed(Role::Operator).contains(&"Kubeconfig"));
        assert_eq!(allowed(Role::Admin).len(), Rpc::ALL.len());
        assert!(Rpc::RecoveryKey.changes_device() && Rpc::Unlock.changes_device());
        assert!(Rpc::Reboot.changes_device());
        assert!(!Rpc::Version.changes_device());
    }

    #[test]
    fn denial_names_the_subject_and_the_role_needed() {
        let caller = Caller {
            subject: "CN=bob, O=cairn:reader".into(),
            role: Some(Role::Reader),
            addr: "127.0.0.1:1".parse().unwrap(),
        };
        assert!(caller.may_call(Rpc::Logs).is_ok());
        let why = caller.may_call(Rpc::Upgrade).unwrap_err();
        assert!(why.contains("Upgrade needs the operator role"), "{why}");
        assert!(why.contains("CN=bob"), "{why}");
        let nobody = Caller {
            role: None,
            ..caller
        };
        let why = nobody.may_call(Rpc::Version).unwrap_err();
        assert!(why.contains("no Cairn role"), "{why}");
    }
}
