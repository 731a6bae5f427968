//! The three roles a client certificate can carry, spelled as the subject's Organization.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// What a client may do; the API's role table maps each RPC to the roles allowed to call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Everything, including upgrades, rollback, reboot and config changes.
    Admin,
    /// Day-to-day operation (the API's role table says exactly what).
    Operator,
    /// Read-only: version, health, slots, services, logs, events.
    Reader,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Operator, Role::Reader];

    /// The subject Organization that carries this role: `cairn:admin`, ….
    pub fn organization(self) -> &'static str {
        match self {
            Role::Admin => "cairn:admin",
            Role::Operator => "cairn:operator",
            Role::Reader => "cairn:reader",
        }
    }

    /// The short name: `admin`, `operator` or `reader` (also the file names `gen secrets` uses).
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Reader => "reader",
        }
    }

    /// The role an Organization value names, if any. Exact match: `Cairn:Admin` is not a role.
    pub fn from_organization(org: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.organization() == org)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.organization())
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
    fn names_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.name().parse::<Role>().unwrap(), role);
            assert_eq!(role.organization().parse::<Role>().unwrap(), role);
            assert_eq!(Role::from_organization(role.organization()), Some(role));
            assert_eq!(role.to_string(), role.organization());
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
