//! Machine configs a device must refuse, as `ApplyConfig` hands them to cairnd: not YAML, a
//! section that is not a mapping,
//! too large, unknown or misspelt keys, values out of range, an alias bomb, deep nesting,
//! certificates that are not, and a network the kernel cannot reach.

/// Nine levels of nine aliases, where the schema takes a list of names: 387 million strings if
/// a parser expanded them before checking what it got.
pub fn alias_bomb() -> String {
    let mut levels = vec!["&a [x, x, x, x, x, x, x, x, x]".to_string()];
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        levels.push(format!(
            "&{name} [{}]",
            vec![format!("*{prev}"); 9].join(", ")
        ));
    }
    format!("network:\n  search: [{}]\n", levels.join(", "))
}

pub fn cases() -> Vec<(String, Vec<u8>, &'static str)> {
    let probes: String = (0..33)
        .map(|i| format!("    - {{tcp: \"127.0.0.1:{}\"}}\n", 8000 + i))
        .collect();
    let bomb = alias_bomb();
    let cases: Vec<(&str, String, &'static str)> = vec![
        (
            "unclosed-quote.yaml",
            "update:\n  source: \"oci://registry.example/cairn\n".into(),
            "quoted scalar",
        ),
        (
            "network-not-a-mapping.yaml",
            "network: [eth0, eth1]\n".into(),
            "network: invalid type: sequence, expected a mapping at line 1",
        ),
        (
            "binary.yaml",
            String::from_utf8_lossy(&[0x00, 0x01, 0x02, 0x1b, b'[', b'2', b'J']).into_owned(),
            "control characters",
        ),
        (
            "too-large.yaml",
            format!("# {}\n", "x".repeat(64 * 1024)),
            "larger than 65536 bytes",
        ),
        ("unknown-section.yaml", "helth:\n  window_s: 60\n".into(), "helth"),
        ("tries-zero.yaml", "update:\n  tries: 0\n".into(), "update.tries 0"),
        ("tries-huge.yaml", "update:\n  tries: 4294967296\n".into(), "tries"),
        ("window-a-year.yaml", "health:\n  window_s: 31536000\n".into(), "health.window_s"),
        ("too-many-probes.yaml", format!("health:\n  probes:\n{probes}"), "more than 32 health probes"),
        ("alias-bomb.yaml", bomb, "network.search"),
        ("deep-nesting.yaml", format!("{}{}\n", "[".repeat(5000), "]".repeat(5000)), "a YAML mapping"),
        (
            "duplicate-key.yaml",
            "update:\n  tries: 2\nupdate:\n  tries: 3\n".into(),
            "duplicate",
        ),
        (
            "fetch-ca-not-pem.yaml",
            "update:\n  fetch_ca: \"-----BEGIN CERTIFICATE-----\\nnot base64\\n-----END CERTIFICATE-----\\n\"\n".into(),
            "update.fetch_ca",
        ),
        (
            "address-not-cidr.yaml",
            "network:\n  interfaces:\n    - name: eth0\n      addresses: [192.168.1.300/24]\n".into(),
            "192.168.1.300",
        ),
        (
            "vlan-id-5000.yaml",
            "network:\n  interfaces:\n    - name: eth0\n      vlans:\n        - {id: 5000, dhcp4: true}\n".into(),
            "5000",
        ),
        (
            "interface-name-too-long.yaml",
            "network:\n  interfaces:\n    - name: abcdefghijklmnopq\n      dhcp4: true\n".into(),
            "abcdefghijklmnopq",
        ),
        (
            "gateway-off-link.yaml",
            "network:\n  interfaces:\n    - name: lo\n      addresses: [192.0.2.10/24]\n      routes:\n        - {to: 0.0.0.0/0, via: 198.51.100.1}\n".into(),
            "198.51.100.1",
        ),
        (
            "missing-interface.yaml",
            "network:\n  interfaces:\n    - name: eth9\n      addresses: [192.0.2.10/24]\n".into(),
            "eth9",
        ),
    ];
    cases
        .into_iter()
        .map(|(n, t, e)| (n.to_string(), t.into_bytes(), e))
        .collect()
}
