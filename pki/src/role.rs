//! The three roles a client certificate can carry, spelled as the subject's Organization.
//!
//! One type for both ends: this crate writes a role into the client certificates it issues, and
//! the API server (`cairn_api`, which re-exports it) reads it back from the certificate a client
//! presents and keeps the table of the role each call needs. Roles are ordered, lowest first:
//! each may do what the ones below it may, so that table holds one minimum role per call.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// What a client certificate allows, lowest first (the derived order is the privilege order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Read-only: version, health, slots, services, logs, events.
    Reader,
    /// Day-to-day operation (the API's role table says exactly what).
    Operator,
    /// Everything, including what a mistake cannot undo remotely.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Reader, Role::Operator, Role::Admin];

    /// The subject Organization that carries this role: `cairn:admin`, ….
    pub const fn organization(self) -> &'static str {
        match self {
            Role::Reader => "cairn:reader",
            Role::Operator => "cairn:operator",
            Role::Admin => "cairn:admin",
        }
    }

    /// The short name: `admin`, `operator` or `reader` (also the file names `gen secrets` uses,
    /// and what [`fmt::Display`] writes, as in "Upgrade needs the operator role").
    pub const fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The role an Organization value names, if any. Exact match: `Cairn:Admin` is not a role.
    pub fn from_organization(org: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.organization() == org)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses `admin` or `cairn:admin` (and so on), for command lines and config files.
impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Role, Error> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s || r.organization() == s)
            .ok_or_else(|| Error::UnknownRoleName {
                name: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_round_trip() {
        assert!(Role::Reader < Role::Operator && Role::Operator < Role::Admin);
        for r in Role::ALL {
            assert_eq!(Role::from_organization(r.organization()), Some(r));
        }
        assert_eq!(Role::from_organization("cairn:Admin"), None);
        assert_eq!(Role::from_organization("admin"), None);
    }

    #[test]
    fn names_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.name().parse::<Role>().unwrap(), role);
            assert_eq!(role.organization().parse::<Role>().unwrap(), role);
            assert_eq!(Role::from_organization(role.organization()), Some(role));
            assert_eq!(role.to_string(), role.name());
        }
    }

    #[test]
    fn near_misses_are_not_roles() {
        for org in ["admin", "Cairn:Admin", "cairn:admin ", "cairn:root", ""] {
            assert_eq!(Role::from_organization(org), None, "{org:?}");
        }
        let err = "root".parse::<Role>().unwrap_err().to_string();
        assert!(err.contains("admin, operator or reader"), "{err}");
    }
}
