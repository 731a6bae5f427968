//! U-Boot environments a device must refuse, as the two redundant copies lie on its disk (each
//! file is both copies, half each): neither copy's CRC holds, the list runs off the end, an
//! entry without `=`, a name U-Boot would misread, a variable set twice, text that is not
//! UTF-8, more variables than the limit, a copy too small to hold anything, and boot state
//! variables that name no slot.

use cairn_boot::uboot::env::{encode_copy, Vars, HEADER_LEN};
use cairn_boot::uboot::state::initial_vars;
use cairn_boot::Slot;

const SIZE: usize = 1024;

/// A copy holding `data` as its variable list (padded with zeros), with a valid CRC.
fn raw_copy(size: usize, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut copy = vec![0u8; size];
    copy[4] = flags;
    copy[HEADER_LEN..HEADER_LEN + data.len()].copy_from_slice(data);
    let crc = crc32fast::hash(&copy[HEADER_LEN..]);
    copy[..4].copy_from_slice(&crc.to_le_bytes());
    copy
}

/// Both copies holding `data`.
fn both(data: &[u8]) -> Vec<u8> {
    [raw_copy(SIZE, 1, data), raw_copy(SIZE, 2, data)].concat()
}

fn with_vars(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut vars = initial_vars(Slot::A);
    for (k, v) in pairs {
        vars.set(k, v).expect("a settable variable");
    }
    let copy = |flags| encode_copy(&vars, SIZE, flags).expect("fits");
    [copy(1), copy(2)].concat()
}

pub fn cases() -> Vec<(String, Vec<u8>, &'static str)> {
    let good = {
        let v: Vars = initial_vars(Slot::A);
        [
            encode_copy(&v, SIZE, 1).expect("fits"),
            encode_copy(&v, SIZE, 2).expect("fits"),
        ]
        .concat()
    };
    let mut crc_bad = good.clone();
    crc_bad[0] ^= 1;
    crc_bad[SIZE] ^= 1;
    let many: Vec<u8> = (0..4097)
        .flat_map(|i| format!("v{i}=1\0").into_bytes())
        .chain([0])
        .collect();
    let big = 2 * many.len().next_multiple_of(512);
    let cases: Vec<(&str, Vec<u8>, &'static str)> = vec![
        ("crc-both-bad.env", crc_bad, "both copies fail their CRC"),
        (
            "all-zero.env",
            vec![0; 2 * SIZE],
            "both copies fail their CRC",
        ),
        (
            "all-ff.env",
            vec![0xff; 2 * SIZE],
            "both copies fail their CRC",
        ),
        (
            "no-terminator.env",
            both(&vec![b'a'; SIZE - HEADER_LEN]),
            "runs past the end",
        ),
        (
            "entry-without-equals.env",
            both(b"bootcmd\0\0"),
            "has no `=`",
        ),
        ("name-with-space.env", both(b"boot cmd=x\0\0"), "boot cmd"),
        ("set-twice.env", both(b"a=1\0a=2\0\0"), "`a` is set twice"),
        ("value-not-utf8.env", both(b"a=\xff\xfe\0\0"), "not UTF-8"),
        ("copy-too-small.env", vec![0; 8], "size"),
        (
            "too-many-variables.env",
            [raw_copy(big / 2, 1, &many), raw_copy(big / 2, 2, &many)].concat(),
            "4096",
        ),
        (
            "boot-order-unknown-slot.env",
            with_vars(&[("BOOT_ORDER", "A C")]),
            "BOOT_ORDER",
        ),
        (
            "boot-left-not-a-number.env",
            with_vars(&[("BOOT_A_LEFT", "many")]),
            "BOOT_A_LEFT",
        ),
    ];
    cases
        .into_iter()
        .map(|(n, b, e)| (n.to_string(), b, e))
        .collect()
}
