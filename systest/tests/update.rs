//! Updates end to end in QEMU, on both boards: bundles made with `cairnctl bundle create`'s code
//! from freshly built images, arriving on a stick plugged into the running machine (a USB stick
//! on qemu-x86_64, a hot-plugged virtio disk on qemu-aarch64), installed by cairnd into slot B,
//! and then committed or rolled back by the device itself.
//!
//! - `good_update`: bundles that must be refused (each with its own error, nothing installed,
//!   the machine still on A), then a good one rolled out by hawkBit (the DDI double, which A's
//!   own image names): installed, trial boot, health passes, committed, and only then the
//!   action closed with success by the new slot (FINISHED),
//!   still B after two more reboots, where a new `cairnctl events` tells the update from the
//!   rollout's install to the commit and `cairnctl slots` both slots' versions and install
//!   times. The new system runs a host container (busybox httpd, an OCI archive the test
//!   builds, brought on a stick): it answers on a forwarded port, `cairnctl services` lists it
//!   with its memory, `cairnctl logs web` shows its output, and its volume on DATA holds a line
//!   from each of its starts across the boots. Then an older bundle below the raised
//!   security floor is refused, and the running version on a stick left in is not installed
//!   again.
//! - `unhealthy_update`: rolled out by hawkBit (the DDI double, `cairn_api::testing_ddi`, which
//!   A's own image names in its `hawkbit:` section); the new system's machine config has a
//!   probe that can never pass and a host container whose probe never passes (its archive
//!   brought by a stick first): the trial is marked bad, the rollback record names the
//!   container, the machine returns to A, and A's cairnd logs why and closes the hawkBit
//!   action with failure and that reason (ERROR), which was only `proceeding` while B was on
//!   trial. After the reboot, `cairnctl events` tells the rollout's install, the
//!   trial boot, the failed rounds, the verdict and the rollback with its reason, and `slots`
//!   shows what each slot holds.
//! - `broken_init_update`: the new root's init hangs once stage 1 has armed the watchdog (softdog
//!   on qemu-aarch64, the i6300esb on qemu-x86_64): only the watchdog gets the machine back,
//!   with no hand on it. Boot counting spends B's tries and A comes back, reporting the update
//!   abandoned, in its log and in the events.
//!
//! The good and unhealthy updates' machines have no TPM: the first boot makes DATA plain ext4 on
//! /var (said once, and never again on later boots, updates or rollbacks), which host containers
//! need; encryption is the storage tests' business. containerd's store lives there: in the good
//! update, slot B imports the web image on its trial boot and the boots after it find it in the
//! store and do not import it again; in the unhealthy one, the archive A copied to DATA is
//! what B's trial imports. Their containers need the container extension in the images.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use cairn_api::testing_ddi::{ActionStatus, Ddi, DdiAuth, Options as DdiOptions};
use cairn_board::Board;
use cairn_image::RootExtras;
use cairn_qemu::{free_local_port, LaunchOptions, Machine, PortForward};
use cairn_systest::ctl::Ctl;
use cairn_systest::fault_init::{self, Fault};
use cairn_systest::release::{build_release, dev_api_secrets, dev_key, sign_bundle};
use cairn_systest::stick::{make_stick, StickFile};
use cairn_systest::{busybox_archive, http_get, image_dir, qemu_lock};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
const NEW_VERSION: &str = "0.2.0";
const API_PORT: u16 = 50000;
/// Where the host container of the good update answers in the guest.
const WEB_PORT: u16 = 8080;

struct Rig {
    board: &'static Board,
    tmp: tempfile::TempDir,
    disk: PathBuf,
    work: PathBuf,
    sticks: usize,
    /// The host port forwarded to the guest's API.
    port: u16,
    /// The host port forwarded to the guest's [`WEB_PORT`] (a host container).
    web_port: u16,
}

impl Rig {
    fn new(board_name: &str) -> Rig {
        let board = cairn_board::find(board_name).unwrap();
        let tmp = cairn_systest::rig_dir("cairn-update-");
        let disk = tmp.path().join("disk.img");
        cairn_image::copy_sparse(&image_dir(board).join("disk.img"), &disk).unwrap();
        Rig {
            board,
            work: tmp.path().join("work"),
            tmp,
            disk,
            sticks: 0,
            port: free_local_port().unwrap(),
            web_port: free_local_port().unwrap(),
        }
    }

    /// `cairnctl` as `role`, through the forwarded port.
    fn ctl(&self, role: &str) -> Ctl {
        Ctl::for_role(role, self.tmp.path(), &format!("127.0.0.1:{}", self.port))
    }

    /// Builds an image of this board (trusting the development key) and returns its folder.
    fn image(&self, name: &str, version: &str, security: u32, extras: RootExtras) -> PathBuf {
        let seed = format!("systest-{}-{name}", self.board.name);
        build_release(
            self.board,
            &self.tmp.path().join(name),
            version,
            security,
            &seed,
            extras,
        )
    }

    /// A bundle of `image`, signed with `key`, written next to it.
    fn bundle(&self, image: &Path, key: &cairn_bundle::SecretKey) -> PathBuf {
        sign_bundle(image, key)
    }

    /// Boots A, plugs in a stick with a bundle of `image`, and waits until cairnd installed it
    /// (the machine is then rebooting into the trial).
    fn boot_and_install(&mut self, image: &Path) -> Machine {
        let bundle = self.bundle(image, &dev_key());
        let mut m = self.launch();
        assert_eq!(ready(&mut m), s("a", "no", "0.1.0"));
        m.wait_for_line("cairnd: waiting for update bundles", STEP_TIMEOUT)
            .unwrap();
        // Left in across the reboots, as a user would: the trial boot finds it already there.
        self.plug(&mut m, vec![StickFile::Copy("update.cairn", bundle)]);
        m.wait_for_line("cairnd: installed version", STEP_TIMEOUT)
            .unwrap();
        m
    }

    fn launch(&mut self) -> Machine {
        let mut opts = LaunchOptions::new(self.board, &self.disk, &self.work);
        opts.writable_image = true;
        opts.echo_console = true;
        opts.port_forwards = vec![
            PortForward::new(self.port, API_PORT),
            PortForward::new(self.web_port, WEB_PORT),
        ];
        Machine::launch(opts).unwrap()
    }

    /// Plugs in a stick holding `files`; returns its id.
    fn plug(&mut self, m: &mut Machine, files: Vec<StickFile>) -> String {
        self.sticks += 1;
        let id = format!("stick{}", self.sticks);
        let path = self.tmp.path().join(format!("{id}.img"));
        make_stick(&path, "UPDATE", files);
        m.attach_stick(&path, &id).unwrap();
        id
    }
}

/// What cairnd says when it makes plain DATA (no TPM): once per machine.
const DATA_MADE: &str = "cairnd: DATA: made an ext4 file system (not encrypted)";

/// How many console lines so far contain `needle`, over every boot of the machine.
fn count(m: &Machine, needle: &str) -> usize {
    m.lines().iter().filter(|l| l.contains(needle)).count()
}

/// Waits for the next ready line and returns (slot, trial, version).
fn ready(m: &mut Machine) -> (String, String, String) {
    let line = m.wait_for_line("cairn-init: ready ", BOOT_TIMEOUT).unwrap();
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            .to_string()
    };
    (field("slot="), field("trial="), field("version="))
}

fn s(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.into(), b.into(), c.into())
}

fn stop(mut m: Machine) {
    m.quit().unwrap();
    m.wait_exit(Duration::from_secs(60)).unwrap();
}

/// An event's kind: its one key besides `seq` and `time_unix_ms`.
fn kind(e: &Value) -> &str {
    e.as_object()
        .unwrap()
        .keys()
        .find(|k| *k != "seq" && *k != "time_unix_ms")
        .map_or("", |k| k.as_str())
}

/// The index of the first event from `from` on that is a `kind` for which `f` holds; panics
/// with the whole list (`what` says what was looked for).
fn next_event(
    events: &[Value],
    from: usize,
    what: &str,
    kind_: &str,
    f: impl Fn(&Value) -> bool,
) -> usize {
    events
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, e)| kind(e) == kind_ && f(&e[kind_]))
        .map(|(i, _)| i)
        .unwrap_or_else(|| {
            panic!(
                "no {what} after event {from} in:\n{}",
                events
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
}

/// The events of a new `cairnctl events` connection, once they reach a boot of `slot` after
/// the story's end (an event of `last_kind` for which `last` holds).
fn events_after(
    ctl: &Ctl,
    last_kind: &'static str,
    last: impl Fn(&Value) -> bool,
    slot: &'static str,
) -> Vec<Value> {
    ctl.events_until(500, STEP_TIMEOUT, |events| {
        events
            .iter()
            .position(|e| kind(e) == last_kind && last(&e[last_kind]))
            .is_some_and(|i| {
                events[i..]
                    .iter()
                    .any(|e| kind(e) == "boot" && e["boot"]["slot"] == slot)
            })
    })
}

/// `cairnctl slots --json`, and the table, which must show the same versions.
fn slots(ctl: &Ctl) -> (Value, Value) {
    let json = ctl.json(&["slots"]);
    let table = ctl.until_ok(&["slots"]);
    let slot = |name: &str| {
        json["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["slot"] == name)
            .unwrap_or_else(|| panic!("no slot {name}: {json}"))
            .clone()
    };
    let (a, b) = (slot("a"), slot("b"));
    for s in [&a, &b] {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == s["slot"].as_str())
            .unwrap_or_else(|| panic!("no row for {s} in:\n{table}"));
        let version = match s["os_version"].as_str().unwrap() {
            "" => "-",
            v => v,
        };
        assert!(
            row.split_whitespace().nth(2) == Some(version),
            "{row} / {s}"
        );
        // SLOT STATE VERSION SECURITY TRIES DATE TIME …: an installed slot shows when.
        if s["installed_unix_ms"].as_i64() > Some(0) {
            assert_ne!(row.split_whitespace().nth(5), Some("-"), "{row}");
        }
    }
    (a, b)
}

/// A slot holds `version` in `state`, installed at a time after `since_ms`.
fn holds(slot: &Value, state: &str, version: &str, since_ms: i64) {
    assert_eq!(slot["state"], state, "{slot}");
    assert_eq!(slot["os_version"], version, "{slot}");
    let installed = slot["installed_unix_ms"].as_i64().unwrap();
    assert!(
        installed >= since_ms,
        "{slot}: installed before the test began"
    );
}

/// Now, on the host, less a few seconds for the guest's clock, which starts from the emulated
/// RTC's whole seconds.
fn start_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 5_000
}

/// A copy of `bundle` changed by `f`.
fn altered(bundle: &Path, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = std::fs::read(bundle).unwrap();
    f(&mut bytes);
    bytes
}

fn good_update(board_name: &str) {
    let _serial = qemu_lock();
    let since = start_ms();
    let mut rig = Rig::new(board_name);
    // The good bundle is rolled out by hawkBit: A's own image and the new one name the DDI
    // double (the new one reports the result once it committed).
    let ddi = hawkbit_double();
    let controller = format!("systest-{board_name}");
    let hawkbit = hawkbit_config(&ddi, &controller);
    own_old_image(&rig, &hawkbit);
    // The new system runs a host container from an archive the update's stick brings (A
    // copies it onto DATA, which both slots share).
    let web = busybox_archive(
        rig.board,
        rig.tmp.path(),
        "web",
        // Each start adds a line to /data/starts (a volume on DATA), on the disk before it
        // serves (the test resets the machine, as a power cut would), and serves the lines.
        &format!(
            "echo web starting; echo start >> /data/starts; busybox sync; busybox mkdir -p /data/www; \
             busybox cp /www/index.html /data/starts /data/www/; exec httpd -f -p 0.0.0.0:{WEB_PORT} -h /data/www"
        ),
    );
    let mut config: Value = serde_json::from_str(&format!(
        r#"{{"containers":[{{"name":"web","image":"/var/lib/cairn-images/web.tar",
            "probe":{{"http":"http://127.0.0.1:{WEB_PORT}/","status":200}},"memory_mib":64,
            "volumes":[{{"host":"/var/lib/cairn-volumes/web","path":"/data"}}]}}]}}"#
    ))
    .unwrap();
    config["hawkbit"] = hawkbit["hawkbit"].clone();
    let config = config.to_string();
    let new = rig.image(
        "new",
        NEW_VERSION,
        1,
        RootExtras {
            machine_config: Some(config),
            ..Default::default()
        },
    );
    let good = rig.bundle(&new, &dev_key());
    let stranger = rig.bundle(&new, &cairn_bundle::SecretKey::from_bytes([0x5e; 32]));
    let other_board = if board_name == "qemu-aarch64" {
        "qemu-x86_64"
    } else {
        "qemu-aarch64"
    };
    let other_image = {
        let other = Rig {
            board: cairn_board::find(other_board).unwrap(),
            tmp: tempfile::tempdir_in(rig.tmp.path()).unwrap(),
            disk: PathBuf::new(),
            work: PathBuf::new(),
            sticks: 0,
            port: 0,
            web_port: 0,
        };
        let dir = other.image("other", NEW_VERSION, 1, RootExtras::default());
        let b = other.bundle(&dir, &dev_key());
        let bytes = std::fs::read(b).unwrap();
        drop(other);
        bytes
    };
    let (manifest, _) = cairn_bundle::inspect(std::fs::File::open(&good).unwrap()).unwrap();
    let payloads_len: u64 = manifest
        .payloads
        .iter()
        .map(|p| p.size.div_ceil(4096) * 4096)
        .sum();
    let good_len = std::fs::metadata(&good).unwrap().len();
    let first_payload = (good_len - payloads_len) as usize;
    // The Ed25519 signature is the last 64 bytes of the signed manifest after the header.
    let header = std::fs::read(&good).unwrap()[..16].to_vec();
    let manifest_len = u32::from_be_bytes(header[12..16].try_into().unwrap()) as usize;
    let signature_byte = 16 + manifest_len - 10;

    let mut m = rig.launch();
    assert_eq!(ready(&mut m), s("a", "no", "0.1.0"));
    m.wait_for_line("cairnd: waiting for update bundles", STEP_TIMEOUT)
        .unwrap();
    assert_eq!(count(&m, DATA_MADE), 1, "no TPM: DATA is made plain ext4");

    // Each refusal names its problem, and the machine stays on A with nothing installed.
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "bad signature",
            altered(&good, |b| b[signature_byte] ^= 0x01),
            "signature",
        ),
        (
            "unknown key",
            std::fs::read(&stranger).unwrap(),
            "does not trust",
        ),
        (
            "truncated",
            altered(&good, |b| b.truncate(b.len() - 5000)),
            "truncated",
        ),
        ("wrong board", other_image, other_board),
        (
            "garbage",
            b"this is not a bundle at all, just text\n".to_vec(),
            "not a Cairn bundle",
        ),
        (
            "hostile manifest length",
            altered(&good, |b| {
                b[12..16].copy_from_slice(&u32::MAX.to_be_bytes())
            }),
            "manifest length",
        ),
        // Found while streaming: the target slot is left not bootable, the running one as it was.
        (
            "flipped payload byte",
            altered(&good, |b| b[first_payload + 4096 * 3 + 100] ^= 0x80),
            "does not match its hash",
        ),
    ];
    for (what, bytes, want) in cases {
        let id = rig.plug(&mut m, vec![StickFile::Bytes("update.cairn", bytes)]);
        let line = m
            .wait_for_any(&["refused", "installed version"], STEP_TIMEOUT)
            .unwrap()
            .line;
        assert!(
            line.contains("refused") && line.contains(want),
            "{what}: expected a refusal naming {want:?}, got: {line}"
        );
        m.detach_stick(&id, STEP_TIMEOUT).unwrap();
    }

    // The good bundle, from a hawkBit rollout: installed, reboot, trial, healthy, committed.
    // The container's archive comes on a stick of its own.
    let id = rig.plug(&mut m, vec![StickFile::Copy("containers/web.tar", web)]);
    m.wait_for_line(
        "container images copied to /var/lib/cairn-images: web.tar",
        STEP_TIMEOUT,
    )
    .unwrap();
    m.wait_for_line("no *.cairn bundle at the root of the stick", STEP_TIMEOUT)
        .unwrap();
    ddi.add_artifact("update.cairn", std::fs::read(&good).unwrap());
    let action = ddi.assign(&controller, "update.cairn", "forced", "forced");
    m.wait_for_line(
        &format!("(update.cairn): installed version {NEW_VERSION} into slot b"),
        STEP_TIMEOUT,
    )
    .unwrap();

    assert_eq!(ready(&mut m), s("b", "yes", NEW_VERSION));
    // On trial: hawkBit has heard only `proceeding` so far.
    let a = ddi.action(action);
    assert_eq!(a.status, ActionStatus::Running, "{:?}", a.steps());
    assert!(
        a.steps().iter().all(|(e, _)| e == "proceeding"),
        "{:?}",
        a.steps()
    );
    // Slot b's root partition got the bundle's containers extension with the root, and init
    // verified and mounted it with the root hash the new image records.
    let new_manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(new.join("image.json")).unwrap()).unwrap();
    let ext_hash = new_manifest["extension"]["roothash"].as_str().unwrap();
    let mounted: Vec<String> = m
        .lines()
        .into_iter()
        .filter(|l| l.contains("cairn-init: containers extension mounted, "))
        .collect();
    assert_eq!(mounted.len(), 2, "slot a's boot and slot b's: {mounted:#?}");
    assert!(
        mounted[1].ends_with(&format!(" MiB, verity {}", &ext_hash[..12])),
        "{}",
        mounted[1]
    );
    m.wait_for_line("cairnd: slot b healthy", STEP_TIMEOUT)
        .unwrap();
    // Committed: the new slot closes the action with success (FINISHED), once.
    let a = closed_action(&ddi, action);
    assert_eq!(a.status, ActionStatus::Finished, "{:?}", a.steps());
    assert_eq!(
        a.steps().iter().filter(|(e, _)| e == "closed").count(),
        1,
        "{:?}",
        a.steps()
    );
    let detail = a.feedback.last().unwrap()["status"]["details"][0].clone();
    assert_eq!(
        detail,
        format!("version {NEW_VERSION} committed in slot b after passing its health window")
            .as_str(),
    );
    let config = ddi.target(&controller).unwrap().config_data.unwrap();
    assert_eq!(config["data"]["slot"], "b", "{config}");
    // Pulled once the committed system runs (a PCIe unplug needs the guest's consent), so that
    // the next stick finds the port free.
    m.wait_for_line("cairnd: waiting for update bundles", STEP_TIMEOUT)
        .unwrap();
    m.detach_stick(&id, STEP_TIMEOUT).unwrap();
    for _ in 0..2 {
        m.system_reset().unwrap();
        assert_eq!(ready(&mut m), s("b", "no", NEW_VERSION));
        m.wait_for_line("cairnd: waiting for update bundles", STEP_TIMEOUT)
            .unwrap();
    }
    // A new connection after those reboots: the update, from the stick to the commit.
    let ctl = rig.ctl("reader");
    let events = events_after(&ctl, "update", |u| u["stage"] == "committed", "b");
    let installed = next_event(&events, 0, "the install", "update", |u| {
        u["stage"] == "installed" && u["os_version"] == NEW_VERSION && u["detail"] == "slot b"
    });
    let started = (0..installed)
        .rev()
        .find(|&i| kind(&events[i]) == "update" && events[i]["update"]["stage"] == "started")
        .unwrap_or_else(|| panic!("no start before the install: {events:?}"));
    assert_eq!(
        events[started]["update"]["detail"],
        format!("hawkBit action {action} (update.cairn)").as_str(),
        "{}",
        events[started]
    );
    let trial = next_event(&events, installed, "the trial boot", "boot", |b| {
        b["slot"] == "b" && b["trial"] == true && b["os_version"] == NEW_VERSION
    });
    let healthy = next_event(&events, trial, "the healthy verdict", "health", |h| {
        h["healthy"] == true
    });
    let committed = next_event(&events, healthy, "the commit", "update", |u| {
        u["stage"] == "committed" && u["os_version"] == NEW_VERSION
    });
    next_event(&events, committed, "a normal boot of b", "boot", |b| {
        b["slot"] == "b" && b["trial"] == false
    });
    // The refused bundles are in the story too, each with its reason.
    let refusals = events[..started]
        .iter()
        .filter(|e| kind(e) == "update" && e["update"]["stage"] == "failed")
        .count();
    assert_eq!(refusals, 7, "{events:?}");
    let (a, b) = slots(&ctl);
    holds(&a, "good", "0.1.0", since);
    holds(&b, "good", NEW_VERSION, since);
    assert!(b["installed_unix_ms"].as_i64() >= a["installed_unix_ms"].as_i64());
    // The host container: its check passed in the trial; it runs, answers on the forwarded
    // port, is listed with its memory, and its output is in its log.
    let body = (0..60)
        .find_map(|_| {
            http_get(rig.web_port, "/").or_else(|| {
                std::thread::sleep(Duration::from_secs(2));
                None
            })
        })
        .expect("the host container answers on the forwarded port");
    assert_eq!(body, "hello from web\n");
    // Its volume on DATA kept what every start wrote: the trial boot's, whose health check
    // passed, and this boot's (the resets between may come before a boot's containers start).
    let starts = http_get(rig.web_port, "/starts").unwrap_or_default();
    assert!(
        starts.lines().count() >= 2 && starts.lines().all(|l| l == "start"),
        "{starts:?}"
    );
    let services = ctl.json(&["services"]);
    let web = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap_or_else(|| panic!("no container web in {services}"));
    assert_eq!(web["state"], "running", "{web}");
    assert!(web["rss_bytes"].as_u64().unwrap() > 0, "{web}");
    let (ok, log, err) = ctl.run(&["logs", "web"]);
    assert!(ok && log.contains("web starting"), "{log}{err}");
    let (_, health) = ctl.health();
    let check = health["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "container web")
        .unwrap_or_else(|| panic!("no check of container web in {health}"));
    assert_eq!(check["state"], "passing", "{check}");
    let lines = m.lines();
    assert!(
        lines.iter().any(|l| l.contains(&format!(
            "last update: version {NEW_VERSION} in slot b committed"
        ))),
        "the committed update is reported"
    );
    assert!(
        lines.iter().any(|l| l.contains("security floor 1")),
        "the floor rose to 1"
    );
    // containerd's store is on DATA: the trial boot imported the image, and the boots after it
    // found it there (a reset may come before a boot's containers start: at least the last one
    // got there, since the container answered); DATA itself was made once, on A's first boot.
    assert_eq!(
        count(
            &m,
            "cairnd: container web: imported /var/lib/cairn-images/web.tar (sha256:"
        ),
        1,
        "imported once, on the trial boot"
    );
    assert!(
        count(
            &m,
            "cairnd: container web: cairn.local/web:current (sha256:"
        ) >= 1,
        "a boot after the trial finds the image in containerd's store"
    );
    assert_eq!(count(&m, DATA_MADE), 1);

    // The original 0.1.0 system, security level 0, is now below the floor.
    let old = rig.bundle(&image_dir(rig.board), &dev_key());
    let id = rig.plug(&mut m, vec![StickFile::Copy("old.cairn", old)]);
    let line = m
        .wait_for_any(&["refused", "installed version"], STEP_TIMEOUT)
        .unwrap()
        .line;
    assert!(line.contains("below this device's floor 1"), "{line}");
    m.detach_stick(&id, STEP_TIMEOUT).unwrap();

    // The running version again (a stick left in): not installed.
    let id = rig.plug(&mut m, vec![StickFile::Copy("update.cairn", good.clone())]);
    m.wait_for_line(
        &format!("not installed: version {NEW_VERSION} is already running"),
        STEP_TIMEOUT,
    )
    .unwrap();
    m.detach_stick(&id, STEP_TIMEOUT).unwrap();
    m.system_reset().unwrap();
    assert_eq!(ready(&mut m), s("b", "no", NEW_VERSION));
    stop(m);
}

/// The DDI double on a loopback port, its certificate also naming 10.0.2.2 (the host as
/// QEMU's user network shows it to the guest), polled every 3 s.
fn hawkbit_double() -> Ddi {
    let ddi = Ddi::start_with(
        DdiAuth::Target,
        DdiOptions {
            names: vec!["10.0.2.2".into()],
            ..DdiOptions::default()
        },
    );
    ddi.set_sleep("00:00:03");
    ddi
}

/// A machine config (JSON) whose `hawkbit:` section points at `ddi` as `controller`.
fn hawkbit_config(ddi: &Ddi, controller: &str) -> Value {
    serde_json::json!({"hawkbit": {
        "url": format!("https://10.0.2.2:{}", ddi.addr().port()),
        "controller_id": controller,
        "target_token": Ddi::token(controller),
        "ca": ddi.ca_pem(),
    }})
}

/// Replaces the rig's disk with a 0.1.0 image like `cargo xtask images` builds (the
/// development key and API secrets) whose machine config is `config`.
fn own_old_image(rig: &Rig, config: &Value) {
    let dir = build_release(
        rig.board,
        &rig.tmp.path().join("old"),
        "0.1.0",
        0,
        &format!("systest-{}-old", rig.board.name),
        RootExtras {
            machine_config: Some(config.to_string()),
            api_secrets: Some(dev_api_secrets()),
            ..Default::default()
        },
    );
    cairn_image::copy_sparse(&dir.join("disk.img"), &rig.disk).unwrap();
}

/// Waits until the double's action `id` is closed; returns it.
fn closed_action(ddi: &Ddi, id: u64) -> cairn_api::testing_ddi::Action {
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let a = ddi.action(id);
        if a.status != ActionStatus::Running {
            return a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "action {id} still running: {:?}",
            a.steps()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn unhealthy_update(board_name: &str) {
    let _serial = qemu_lock();
    let since = start_ms();
    let mut rig = Rig::new(board_name);
    // The update is rolled out by hawkBit: A's own image names the DDI double.
    let ddi = hawkbit_double();
    let controller = format!("systest-{board_name}");
    own_old_image(&rig, &hawkbit_config(&ddi, &controller));
    // Three reasons at once: a probe that never passes, a network section the kernel refuses
    // (it names an interface the machine does not have), and a host container that runs but
    // never answers its probe.
    let sick = busybox_archive(rig.board, rig.tmp.path(), "sick", "exec sleep 100000");
    let config = r#"{"health":{"window_s":10,"probes":[{"tcp":"127.0.0.1:9","timeout_s":1}]},
        "network":{"interfaces":[{"name":"eth7","addresses":["10.9.0.2/24"]}]},
        "containers":[{"name":"sick","image":"/var/lib/cairn-images/sick.tar",
            "probe":{"tcp":"127.0.0.1:7","timeout_s":1}}]}"#;
    let new = rig.image(
        "unhealthy",
        NEW_VERSION,
        0,
        RootExtras {
            machine_config: Some(config.into()),
            ..Default::default()
        },
    );
    let bundle = rig.bundle(&new, &dev_key());
    let mut m = rig.launch();
    assert_eq!(ready(&mut m), s("a", "no", "0.1.0"));
    m.wait_for_line("cairnd: management API on port 50000", STEP_TIMEOUT)
        .unwrap();
    // The container's archive onto DATA, from a stick with no bundle.
    let id = rig.plug(&mut m, vec![StickFile::Copy("containers/sick.tar", sick)]);
    m.wait_for_line(
        "container images copied to /var/lib/cairn-images: sick.tar",
        STEP_TIMEOUT,
    )
    .unwrap();
    m.wait_for_line("no *.cairn bundle at the root of the stick", STEP_TIMEOUT)
        .unwrap();
    m.detach_stick(&id, STEP_TIMEOUT).unwrap();
    // A fresh disk: B never had anything installed.
    let (a, b) = slots(&rig.ctl("reader"));
    holds(&a, "good", "0.1.0", since);
    assert_eq!(b["state"], "empty", "{b}");
    assert_eq!(
        (&b["os_version"], &b["installed_unix_ms"]),
        (&"".into(), &0.into()),
        "{b}"
    );
    // Rolled out by hawkBit this time: A's cairnd takes the deployment from the DDI double,
    // installs it and reboots into the trial.
    ddi.add_artifact("unhealthy.cairn", std::fs::read(&bundle).unwrap());
    let action = ddi.assign(&controller, "unhealthy.cairn", "forced", "forced");
    assert_eq!(ready(&mut m), s("b", "yes", NEW_VERSION));
    // On trial, hawkBit has only heard that the update is proceeding.
    let a = ddi.action(action);
    assert_eq!(a.status, ActionStatus::Running, "{:?}", a.steps());
    assert!(
        !a.steps().is_empty() && a.steps().iter().all(|(e, _)| e == "proceeding"),
        "{:?}",
        a.steps()
    );
    let config = ddi.target(&controller).unwrap().config_data.unwrap();
    assert_eq!(
        (&config["data"]["slot"], &config["data"]["version"]),
        (&"a".into(), &"0.1.0".into()),
        "{config}"
    );
    let verdict = m
        .wait_for_line("cairnd: slot b is not healthy", STEP_TIMEOUT)
        .unwrap();
    assert!(verdict.contains("tcp 127.0.0.1:9"), "{verdict}");
    assert!(verdict.contains("container sick"), "{verdict}");
    assert!(
        verdict.contains("network config: not applied: ") && verdict.contains("eth7"),
        "{verdict}"
    );
    assert_eq!(ready(&mut m), s("a", "no", "0.1.0"));
    let report = m
        .wait_for_line("cairnd: last update:", STEP_TIMEOUT)
        .unwrap();
    assert!(
        report.contains("rolled back: not healthy within 10 s: ")
            && report.contains("tcp 127.0.0.1:9: connection refused")
            && report.contains("eth7")
            && report.contains("container sick"),
        "{report}"
    );

    // The old slot closes the action with the reason: hawkBit shows ERROR.
    let a = closed_action(&ddi, action);
    assert_eq!(a.status, ActionStatus::Error, "{:?}", a.steps());
    let last = a.feedback.last().unwrap()["status"]["details"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        last.contains("rolled back: not healthy within 10 s")
            && last.contains("tcp 127.0.0.1:9")
            && last.contains("running slot a again"),
        "{last}"
    );
    assert_eq!(
        a.steps().iter().filter(|(e, _)| e == "closed").count(),
        1,
        "{:?}",
        a.steps()
    );

    // A new connection after the rollback's reboot tells the whole update.
    let ctl = rig.ctl("reader");
    let events = events_after(&ctl, "rollback", |r| r["from_slot"] == "b", "a");
    let started = next_event(&events, 0, "the rollout's install", "update", |u| {
        u["stage"] == "started"
            && u["detail"] == format!("hawkBit action {action} (unhealthy.cairn)").as_str()
    });
    let installed = next_event(&events, started, "the install", "update", |u| {
        u["stage"] == "installed" && u["os_version"] == NEW_VERSION
    });
    let trial = next_event(&events, installed, "the trial boot", "boot", |b| {
        b["slot"] == "b" && b["trial"] == true
    });
    // Every round failed, the same way: the rounds' events cover 1..=N without a gap.
    let verdict = next_event(&events, trial, "the verdict", "health", |h| {
        h["healthy"] == false && h["first_round"] == 0
    });
    let rounds: Vec<&Value> = events[trial..verdict]
        .iter()
        .filter(|e| kind(e) == "health")
        .map(|e| &e["health"])
        .collect();
    assert!(!rounds.is_empty(), "no failed rounds: {events:?}");
    let mut next_round = 1;
    for r in &rounds {
        assert_eq!(r["healthy"], false, "{r}");
        assert_eq!(r["first_round"], next_round, "{r}");
        next_round = r["last_round"].as_u64().unwrap() + 1;
    }
    let last = rounds.last().unwrap()["detail"].as_str().unwrap();
    assert!(
        last.contains("tcp 127.0.0.1:9: connection refused") && last.contains("eth7"),
        "{last}"
    );
    let verdict_detail = events[verdict]["health"]["detail"].as_str().unwrap();
    assert!(
        verdict_detail.starts_with(&format!(
            "after {} round(s), not healthy within 10 s",
            next_round - 1
        )),
        "{verdict_detail}"
    );
    let rollback = next_event(&events, verdict, "the rollback", "rollback", |r| {
        r["from_slot"] == "b" && r["to_slot"] == "a"
    });
    let reason = events[rollback]["rollback"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("not healthy within 10 s: ")
            && reason.contains("tcp 127.0.0.1:9")
            && reason.contains("container sick"),
        "{reason}"
    );
    next_event(&events, rollback, "the boot of a", "boot", |b| {
        b["slot"] == "a" && b["trial"] == false
    });
    let (a, b) = slots(&ctl);
    holds(&a, "good", "0.1.0", since);
    holds(&b, "bad", NEW_VERSION, since);
    m.system_reset().unwrap();
    assert_eq!(ready(&mut m), s("a", "no", "0.1.0"));
    // B's trial imported the archive A had copied onto DATA; DATA was made once, on A's first
    // boot, and kept through the trial and the rollback.
    assert_eq!(
        count(
            &m,
            "cairnd: container sick: imported /var/lib/cairn-images/sick.tar"
        ),
        1
    );
    assert_eq!(count(&m, DATA_MADE), 1);
    stop(m);
}

fn broken_init_update(board_name: &str, fault: Fault) {
    let _serial = qemu_lock();
    let since = start_ms();
    let mut rig = Rig::new(board_name);
    let init = rig.tmp.path().join("broken-init");
    std::fs::write(&init, fault_init::elf(rig.board.arch, fault)).unwrap();
    let new = rig.image(
        "broken",
        NEW_VERSION,
        0,
        RootExtras {
            init_override: Some(init),
            ..Default::default()
        },
    );
    let mut m = rig.boot_and_install(&new);
    // Two tries of B (each ends by the watchdog or a panic), then A.
    assert_eq!(ready(&mut m), s("a", "no", "0.1.0"));
    let report = m
        .wait_for_line("cairnd: last update:", STEP_TIMEOUT)
        .unwrap();
    assert!(report.contains("abandoned"), "{report}");
    let lines = m.lines();
    assert!(
        !lines.iter().any(|l| l.contains("ready slot=b")),
        "the broken B never came up"
    );
    // Stage 1 armed the watchdog on each try of B before the broken init ran.
    let armed = lines
        .iter()
        .filter(|l| l.contains("cairn-init: watchdog armed"))
        .count();
    assert!(armed >= 3, "the watchdog was armed on {armed} boots");
    // Reported by A once it is back, after its own boot event.
    let ctl = rig.ctl("reader");
    let events = ctl.events_until(500, STEP_TIMEOUT, |events| {
        events
            .iter()
            .any(|e| kind(e) == "rollback" && e["rollback"]["from_slot"] == "b")
    });
    let installed = next_event(&events, 0, "the install", "update", |u| {
        u["stage"] == "installed" && u["os_version"] == NEW_VERSION
    });
    let back = next_event(&events, installed, "the boot of a", "boot", |b| {
        b["slot"] == "a" && b["trial"] == false
    });
    let rollback = next_event(&events, back, "the rollback", "rollback", |r| {
        r["from_slot"] == "b" && r["to_slot"] == "a"
    });
    let reason = events[rollback]["rollback"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("version {NEW_VERSION} in slot b was abandoned: "))
            && reason.contains("never reported healthy"),
        "{reason}"
    );
    assert!(
        !events[installed..rollback]
            .iter()
            .any(|e| kind(e) == "boot" && e["boot"]["slot"] == "b"),
        "B never booted as far as cairnd: {events:?}"
    );
    let (a, b) = slots(&ctl);
    holds(&a, "good", "0.1.0", since);
    holds(&b, "bad", NEW_VERSION, since);
    stop(m);
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_aarch64_good_update_from_a_stick() {
    good_update("qemu-aarch64");
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_x86_64_good_update_from_a_usb_stick() {
    good_update("qemu-x86_64");
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_aarch64_unhealthy_update_rolls_back() {
    unhealthy_update("qemu-aarch64");
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_x86_64_unhealthy_update_rolls_back() {
    unhealthy_update("qemu-x86_64");
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_aarch64_hanging_init_falls_back_by_watchdog() {
    broken_init_update("qemu-aarch64", Fault::Hang);
}

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn qemu_x86_64_hanging_init_falls_back_by_watchdog() {
    broken_init_update("qemu-x86_64", Fault::Hang);
}
