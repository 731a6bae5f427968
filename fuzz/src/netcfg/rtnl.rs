//! The `rtnl_datagram` target: the input is one datagram as the NETLINK_ROUTE socket receives
//! it from the kernel (or from anything that can write to the socket). It is decoded as
//! `Rtnl::state` and the link monitor decode it; what it yields must be what the planner can
//! take: planning with nothing desired changes nothing, and flushing any link it names plans
//! without a panic. Every error is one line.

use cairn_netcfg::rtnl::fuzzing::read_datagram;
use cairn_netcfg::rtnl::{plan, plan_flush, Desired, DesiredLink};

/// The kernel's answers this module was tested against (`src/rtnl/testdata/captured.hex`).
const CAPTURED: &str = include_str!("../../../netcfg/src/rtnl/testdata/captured.hex");

/// Decodes `datagram` and plans on what it says; panics (a finding) on a broken promise.
pub fn check_datagram(datagram: &[u8]) {
    let (state, refusals, _done, error) = read_datagram(datagram);
    if let Some(e) = &error {
        assert!(!e.to_string().contains('\n'), "{e}");
    }
    for r in &refusals {
        assert!(r.errno > 0, "errno {}", r.errno);
        if let Some(m) = &r.message {
            assert!(!m.is_empty() && m.trim() == m && !m.contains('\0'), "{m:?}");
        }
    }
    // Nothing desired: no link is managed, so nothing may change.
    let none = plan(&state, &Desired::default()).expect("an empty plan is refused");
    assert!(none.is_empty(), "changes with nothing desired: {none:?}");
    // Every link it names, desired bare: planned, or refused with one line.
    let desired = Desired {
        links: state
            .links
            .iter()
            .map(|l| DesiredLink {
                name: l.name.clone(),
                ..DesiredLink::default()
            })
            .collect(),
    };
    match plan(&state, &desired) {
        Ok(changes) => {
            for c in changes {
                assert!(!c.to_string().contains('\n'));
            }
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
    }
    for link in &state.links {
        if let Err(e) = plan_flush(&state, link.index) {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
}

/// The captured datagrams, as (file name, bytes).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    CAPTURED
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, hex) = l.split_once(' ').expect("name and hex");
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            (format!("{name}.nl"), bytes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzzer's first finding: link-address messages naming a link "lo\n", desired by
    /// name, were refused over two lines (`PlanError::BadName` now quotes the name).
    #[test]
    fn a_link_named_with_a_line_break() {
        let hex: String = [
        "4c0000001100860003000000e62d01000300000001000008000000017f000001080002007f00000107000300",
        "6c6f0000080008008000000014000600ffffffffffff088100000001000003f94c0000001000020003000000",
        "e62d0000020880fe01000008010000007f000001080002007f000001070003006c6f8d000800080080000000",
        "14000600ffffffffffff80ff00000001000003f94c000000110000000100000000000000000a000001000000",
        "010000007f000001080002007f000001070003006c6f0a00080008008000000014000600ffffffffffff80ff",
        "00000001000003f94c000000110000000100000000000000000a00000100000007fffc007f00000108000200",
        "7f000001070003006c00000008000110800000001400064a6c6f000000000000000000000000000000000000",
        "000000000000ff00001e6454000800080027",
        ]
        .concat();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        check_datagram(&bytes);
    }
}
