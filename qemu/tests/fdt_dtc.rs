//! The device tree reader and writer against the real peer: Debian's `dtc` (package
//! device-tree-compiler, installed by `cargo xtask setup`) compiles a tree, ours reads, edits
//! and writes it, and `dtc` must read the result back to the same source.

use std::path::Path;
use std::process::Command;

use cairn_qemu::rpi::{dtb, fdt::Fdt};

const SOURCE: &str = r#"/dts-v1/;
/memreserve/ 0x0 0x1000;
/ {
	#address-cells = <0x02>;
	#size-cells = <0x01>;
	model = "Raspberry Pi 4 Model B";
	chosen {
		stdout-path = "serial1:115200n8";
	};
	soc {
		#address-cells = <0x01>;
		#size-cells = <0x01>;
		watchdog@7e100000 {
			compatible = "brcm,bcm2711-pm", "brcm,bcm2835-pm-wdt";
			reg = <0x7e100000 0x114>;
		};
		serial@7e201000 {
			compatible = "arm,pl011", "arm,primecell";
			status = "okay";
			bluetooth {
				compatible = "brcm,bcm43438-bt";
			};
		};
		mmc@7e300000 {
			status = "okay";
			mmc-pwrseq = <0x10>;
			non-removable;
			wifi@1 {
				reg = <0x01>;
			};
		};
		interrupt-controller@7ef00100 {
			interrupt-controller;
			phandle = <0x19>;
		};
	};
	wifi-pwrseq {
		compatible = "mmc-pwrseq-simple";
		phandle = <0x10>;
	};
};
"#;

fn dtc(args: &[&str], input: &Path, output: &Path) {
    let out = Command::new("dtc")
        .args(args)
        .arg("-o")
        .arg(output)
        .arg(input)
        .output()
        .expect("dtc (package device-tree-compiler) is installed by `cargo xtask setup`");
    assert!(
        out.status.success(),
        "dtc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn decompile(dir: &Path, blob: &[u8], name: &str) -> String {
    let dtb = dir.join(format!("{name}.dtb"));
    let dts = dir.join(format!("{name}.dts"));
    std::fs::write(&dtb, blob).unwrap();
    dtc(&["-q", "-I", "dtb", "-O", "dts"], &dtb, &dts);
    std::fs::read_to_string(dts).unwrap()
}

#[test]
fn dtc_reads_what_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.dts");
    std::fs::write(&src, SOURCE).unwrap();
    let compiled = dir.path().join("in.dtb");
    dtc(&["-q", "-I", "dts", "-O", "dtb"], &src, &compiled);
    let blob = std::fs::read(&compiled).unwrap();

    // Unchanged: the same tree, as dtc sees it.
    let ours = Fdt::parse(&blob).unwrap().to_bytes();
    assert_eq!(
        decompile(dir.path(), &ours, "ours"),
        decompile(dir.path(), &blob, "theirs")
    );

    // Edited for the emulator.
    let edited = dtb::for_emulator(&blob, true, 3).unwrap();
    let text = decompile(dir.path(), &edited, "edited");
    let node = |name: &str| {
        let start = text
            .find(&format!("{name} {{"))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        let end = text[start..].find("};").unwrap() + start;
        text[start..end].to_string()
    };
    for name in [
        "watchdog@7e100000",
        "bluetooth",
        "wifi@1",
        "interrupt-controller@7ef00100",
        "wifi-pwrseq",
    ] {
        assert!(
            node(name).contains("status = \"disabled\";"),
            "{name}: {text}"
        );
    }
    assert!(!text.contains("mmc-pwrseq = "), "{text}");
    assert!(node("bootloader").contains("tryboot = <0x01>;"), "{text}");
    assert!(node("bootloader").contains("partition = <0x03>;"), "{text}");
    assert!(
        text.contains("/memreserve/\t0x0000000000000000 0x0000000000001000;"),
        "{text}"
    );
}
