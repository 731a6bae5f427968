//! The device tree a Raspberry Pi 4 kernel gets under QEMU's `raspi4b`: the boot partition's
//! DTB with what the firmware adds (`/chosen/bootloader`) and with the devices QEMU does not
//! model switched off, each for a reason the kernel would otherwise run into.

use super::fdt::{cell, Fdt, FdtError};

/// Nodes switched off (`status = "disabled"`), with why. Paths that a variant of the tree lacks
/// are skipped.
pub const DISABLED: &[(&str, &str)] = &[
    (
        "/soc/watchdog@7e100000",
        "QEMU's model resets the machine as soon as the watchdog is armed; the emulated Pi runs \
         without one",
    ),
    (
        "/soc/serial@7e201000/bluetooth",
        "the Bluetooth chip on the PL011 is not emulated, and the PL011 is the console here",
    ),
    (
        "/soc/mmc@7e300000/wifi@1",
        "the SD card sits where the wifi chip is on a Pi 4; no SDIO wifi is emulated",
    ),
    (
        "/wifi-pwrseq",
        "its reset line is on the firmware's GPIO expander, which is not emulated",
    ),
];

/// Properties removed, with why.
pub const REMOVED: &[(&str, &str, &str)] = &[(
    "/soc/mmc@7e300000",
    "mmc-pwrseq",
    "the controller would wait for the wifi power sequence forever",
)];

/// The HDMI block (its clock, its interrupt controller, the HDMI and DDC nodes) lives at these
/// addresses; QEMU does not emulate it, and its interrupt controller's probe takes an external
/// abort (`brcmstb_l2_intc_of_init`).
pub const HDMI_BLOCK: std::ops::Range<u64> = 0x7ef0_0000..0x7f00_0000;

/// The boot partition's DTB, changed for this boot under the emulator.
pub fn for_emulator(blob: &[u8], tryboot: bool, partition: u32) -> Result<Vec<u8>, FdtError> {
    let mut fdt = Fdt::parse(blob)?;
    for (path, _why) in DISABLED {
        if fdt.node(path).is_some() {
            fdt.disable(path)?;
        }
    }
    for (path, prop, _why) in REMOVED {
        if let Ok(node) = fdt.node_mut(path) {
            node.remove_prop(prop);
        }
    }
    let soc = fdt.node_mut("/soc")?;
    for child in &mut soc.children {
        let address = child
            .name
            .split_once('@')
            .and_then(|(_, a)| u64::from_str_radix(a.split(',').next().unwrap_or(a), 16).ok());
        if address.is_some_and(|a| HDMI_BLOCK.contains(&a)) {
            child.set_prop("status", b"disabled\0".to_vec());
        }
    }
    // What the Pi firmware reports about this boot (each a 32-bit big-endian number).
    let bootloader = fdt.node_or_create("/chosen/bootloader");
    bootloader.set_prop("tryboot", cell(u32::from(tryboot)));
    bootloader.set_prop("partition", cell(partition));
    Ok(fdt.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::fdt::Node;
    use super::*;

    fn node(name: &str, props: &[(&str, &[u8])], children: Vec<Node>) -> Node {
        Node {
            name: name.into(),
            props: props
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect(),
            children,
        }
    }

    #[test]
    fn switches_off_what_qemu_lacks_and_reports_the_boot() {
        let okay: &[u8] = b"okay\0";
        let tree = Fdt {
            boot_cpuid_phys: 0,
            reservations: vec![],
            root: node(
                "",
                &[],
                vec![
                    node("chosen", &[], vec![]),
                    node(
                        "soc",
                        &[],
                        vec![
                            node("watchdog@7e100000", &[], vec![]),
                            node(
                                "serial@7e201000",
                                &[("status", okay)],
                                vec![node("bluetooth", &[], vec![])],
                            ),
                            node(
                                "mmc@7e300000",
                                &[("status", okay), ("mmc-pwrseq", &[0, 0, 0, 0x10])],
                                vec![node("wifi@1", &[], vec![])],
                            ),
                            node("clock@7ef00000", &[], vec![]),
                            node("interrupt-controller@7ef00100", &[], vec![]),
                            node("hdmi@7ef05700", &[("status", okay)], vec![]),
                            node("gpio@7e200000", &[("status", okay)], vec![]),
                        ],
                    ),
                ],
            ),
        };
        let out = Fdt::parse(&for_emulator(&tree.to_bytes(), true, 3).unwrap()).unwrap();
        let status = |p: &str| out.node(p).unwrap().prop("status").map(|v| v.to_vec());
        let disabled = Some(b"disabled\0".to_vec());
        for p in [
            "/soc/watchdog@7e100000",
            "/soc/serial@7e201000/bluetooth",
            "/soc/mmc@7e300000/wifi@1",
            "/soc/clock@7ef00000",
            "/soc/interrupt-controller@7ef00100",
            "/soc/hdmi@7ef05700",
        ] {
            assert_eq!(status(p), disabled, "{p}");
        }
        assert_eq!(status("/soc/serial@7e201000"), Some(okay.to_vec()));
        assert_eq!(status("/soc/mmc@7e300000"), Some(okay.to_vec()));
        assert_eq!(status("/soc/gpio@7e200000"), Some(okay.to_vec()));
        assert_eq!(
            out.node("/soc/mmc@7e300000").unwrap().prop("mmc-pwrseq"),
            None
        );
        let bl = out.node("/chosen/bootloader").unwrap();
        assert_eq!(bl.prop("tryboot"), Some(&[0, 0, 0, 1][..]));
        assert_eq!(bl.prop("partition"), Some(&[0, 0, 0, 3][..]));
    }
}
