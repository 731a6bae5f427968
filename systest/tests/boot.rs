//! QEMU boots of the built images: firmware → systemd-boot → kernel → initramfs init → squashfs
//! root of slot A → the ready line; then a clean power-off through the ACPI power button.

use std::time::Duration;

use cairn_systest::{image_dir, qemu_lock};

fn boot_and_power_off(board_name: &str) {
    let _serial = qemu_lock();
    let board = cairn_board::find(board_name).unwrap();
    let dir = image_dir(board);
    let recorded = cairn_systest::manifest(board)["disk"]["sha256"].clone();
    let work = tempfile::tempdir().unwrap();
    let launched = std::time::Instant::now();
    let mut m = cairn_qemu::Machine::launch(cairn_qemu::LaunchOptions::new(
        board,
        dir.join("disk.img"),
        work.path().to_path_buf(),
    ))
    .unwrap();
    let pid = m.pid();

    // systemd-boot picks the slot A entry and the kernel hands over to our init.
    let ready = m
        .wait_for_line("cairn-init: ready", Duration::from_secs(300))
        .unwrap();
    let expected = format!(
        "cairn-init: ready slot=a trial=no version={} boot_ms=",
        env!("CARGO_PKG_VERSION")
    );
    assert!(ready.starts_with(&expected), "ready line: {ready}");
    eprintln!(
        "{board_name}: ready {:.1} s after launch ({ready})",
        launched.elapsed().as_secs_f64()
    );
    let boot_ms: u64 = ready[expected.len()..].trim().parse().unwrap();
    assert!(boot_ms > 0, "{ready}");
    let stats = m
        .wait_for_line("cairn-init: init_ms=", Duration::from_secs(30))
        .unwrap();
    assert!(stats.contains("rss_kib="), "{stats}");

    // The containers extension was verified and overlaid before the switch, with the root hash
    // image.json records; after ready, every container module loaded and cgroup v2 has the
    // controllers containers need.
    let roothash = cairn_systest::manifest(board)["extension"]["roothash"]
        .as_str()
        .expect("the image has a containers extension")
        .to_string();
    let before_ready = m.lines();
    let mounted = before_ready
        .iter()
        .position(|l| l.contains("cairn-init: containers extension mounted, "))
        .unwrap_or_else(|| panic!("no extension line:\n{}", before_ready.join("\n")));
    assert!(
        before_ready[mounted].ends_with(&format!(" MiB, verity {}", &roothash[..12])),
        "{}",
        before_ready[mounted]
    );
    let ready_at = before_ready
        .iter()
        .position(|l| l.contains("cairn-init: ready"))
        .unwrap();
    assert!(mounted < ready_at);
    // Stage 1 loaded every module of the initramfs (from its dependency graph, as many at once
    // as the board's command line says) before it found ROOT-A.
    let modules = before_ready
        .iter()
        .find(|l| l.contains("cairn-init: slot a: ") && l.contains(" modules loaded ("))
        .unwrap_or_else(|| panic!("no modules line:\n{}", before_ready.join("\n")));
    let workers = board
        .kernel_args
        .iter()
        .find_map(|a| a.strip_prefix("cairn.module_workers="))
        .expect("the QEMU boards set cairn.module_workers");
    assert!(
        modules.contains(&format!(" modules loaded ({workers} at a time) in "))
            && !modules.contains(" not loaded)")
            && modules.contains(", ROOT-A is /dev/"),
        "{modules}"
    );
    // The rest of the machine's drivers load from the root after ready, all of them; cairnd
    // waited for them before it touched storage.
    let late = m
        .wait_for_line(" late kernel modules loaded (", Duration::from_secs(60))
        .unwrap();
    assert!(
        late.contains(&format!(
            " late kernel modules loaded ({workers} at a time) in "
        )) && !late.contains(" not loaded)"),
        "{late}"
    );
    // cairnd's line may reach the console before init's (init's goes through the kernel's
    // log buffer, cairnd's straight to the console), so it is looked for anywhere.
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while !m.lines().iter().any(|l| l.contains("cairnd: waited ")) {
        assert!(
            std::time::Instant::now() < until,
            "cairnd never said it waited for the late modules"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let lines = m.lines();
    let at = |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap();
    assert!(at("cairn-init: ready") < at(" late kernel modules loaded ("));
    m.wait_for_line(" kernel modules loaded, ", Duration::from_secs(60))
        .unwrap();
    let kernel: Vec<String> = m
        .lines()
        .into_iter()
        .filter(|l| l.contains("cairn-init: containers: "))
        .collect();
    assert_eq!(kernel.len(), 1, "{kernel:#?}");
    assert!(
        kernel[0].contains(
            " kernel modules loaded, 0 failed, 0 missing; cgroup v2 on /sys/fs/cgroup with cpu, \
             memory, pids"
        ),
        "{}",
        kernel[0]
    );

    m.powerdown().unwrap();
    m.wait_for_line(
        "synced and unmounted; powering off",
        Duration::from_secs(60),
    )
    .unwrap();
    let status = m.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "QEMU exit: {status}");
    let lines = m.lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("cairn-init: ready"))
            .count(),
        1,
        "exactly one ready line"
    );
    assert!(
        !lines.iter().any(|l| l.contains("cairn-init: fatal")),
        "init reported a fatal error"
    );
    drop(m);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU pid {pid} still running"
    );
    // The run wrote to an overlay, never to the built image.
    let now = cairn_image::deb::sha256_file(&dir.join("disk.img")).unwrap();
    assert_eq!(serde_json::Value::from(now), recorded);
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_aarch64_boots_slot_a_and_powers_off() {
    boot_and_power_off("qemu-aarch64");
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_x86_64_boots_slot_a_and_powers_off() {
    boot_and_power_off("qemu-x86_64");
}
