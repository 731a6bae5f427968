//! Every file of the hostile corpus (`corpus/<kind>/`) and every refused vector of
//! `bundle/vectors/`, fed to the function the device calls for that input, on a device laid
//! out in a temp dir: the ESP folder, ROOT-A and ROOT-B as files, STATE and DATA as folders
//! (what cairnd sees mounted) with their partitions' first MiB as files (the LUKS2 headers),
//! and the raw areas a U-Boot environment and a GPT are read from. Each input must be refused
//! with one line that contains the phrase `expected.txt` gives, and a hash of each region taken
//! before and after must not change. Prints a table: kind, count, refused with the disk
//! unchanged.
//!
//! API messages go through the device's real API server (mutual TLS, roles, limits, decoding,
//! each call's checks) as an admin's raw gRPC bodies; what passes those reaches a device that
//! maps the mutating calls onto the same capabilities cairnd maps them onto (the installer, the
//! config, the recovery-key unlock), on the temp device, and refuses everything else, saying
//! the message got further than it should have.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cairn_api::{proto, DeviceError, Sink, UpgradeSource};
use cairn_boot::bls::Entry;
use cairn_boot::fs::DirFs;
use cairn_boot::sdboot::{self, SdBoot};
use cairn_boot::uboot::env::{Area, EnvStore, FileStorage, Limits};
use cairn_boot::uboot::state::BootState;
use cairn_boot::Bootloader as _;
use cairn_boot::Slot;
use cairn_bundle::{DeviceFacts, Keyring};
use cairn_daemon::config::MachineConfig;
use cairn_daemon::events::Events;
use cairn_daemon::settings::Settings;
use cairn_daemon::storage::{self, Partitions};
use cairn_hostile::{corpus_dir, expected_txt, generate, Case, KINDS, RELEASES_B};
use cairn_image::formats::gpt;
use cairn_netcfg::agent::{Netcfg, Options};
use cairn_netcfg::sntp::{query_with, SystemClock};
use cairn_updater::install::{Installer, Layout};
use cairn_updater::state::{SlotRecord, SlotSource, StateDir};
use semver::Version;
use sha2::{Digest, Sha256};

mod api;

#[test]
fn the_corpus_is_what_its_generator_makes() {
    let write = std::env::var_os("CAIRN_WRITE_VECTORS").is_some();
    let cases = generate();
    for kind in KINDS {
        let dir = corpus_dir().join(kind);
        let mut files: Vec<(String, Vec<u8>)> = cases
            .iter()
            .filter(|c| c.kind == kind)
            .map(|c| (c.name.clone(), c.bytes.clone()))
            .collect();
        files.push((
            "expected.txt".into(),
            expected_txt(kind, &cases).into_bytes(),
        ));
        if write {
            fs::create_dir_all(&dir).unwrap();
            for e in fs::read_dir(&dir).unwrap() {
                fs::remove_file(e.unwrap().path()).unwrap();
            }
        }
        for (name, bytes) in &files {
            let path = dir.join(name);
            if write {
                fs::write(&path, bytes).unwrap();
            }
            let on_disk = fs::read(&path).unwrap_or_else(|e| {
                panic!("{}: {e} (CAIRN_WRITE_VECTORS=1 writes it)", path.display())
            });
            assert!(
                on_disk == *bytes,
                "{kind}/{name} differs from what the generator makes"
            );
        }
        let mut listed: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        listed.sort();
        let mut made: Vec<String> = files.into_iter().map(|(n, _)| n).collect();
        made.sort();
        assert_eq!(listed, made, "{kind}: files the generator does not make");
    }
}

/// The corpus as read back from the folders: (kind, file, bytes, phrase), from each
/// `expected.txt`, so the files on disk are what is tested.
fn read_corpus() -> Vec<Case> {
    let mut out = Vec::new();
    for kind in KINDS {
        let dir = corpus_dir().join(kind);
        let expected = fs::read_to_string(dir.join("expected.txt")).unwrap();
        for line in expected
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (name, phrase) = line.split_once(' ').unwrap_or((line, ""));
            out.push(Case {
                kind,
                name: name.to_string(),
                bytes: fs::read(dir.join(name)).unwrap(),
                expect: Box::leak(phrase.to_string().into_boxed_str()),
            });
        }
    }
    out
}

/// The refused bundles of `bundle/vectors/` (its `expected.txt`), with the keyring they are
/// made for.
fn bundle_vectors() -> (Keyring, Vec<Case>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bundle/vectors");
    let keyring = Keyring::parse(&fs::read_to_string(dir.join("keyring.txt")).unwrap()).unwrap();
    let expected = fs::read_to_string(dir.join("expected.txt")).unwrap();
    let cases = expected
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(".cairn refuse "))
        .map(|l| {
            let (name, phrase) = l.split_once(" refuse ").unwrap();
            Case {
                kind: "bundles",
                name: format!("bundle/vectors/{name}"),
                bytes: fs::read(dir.join(name)).unwrap(),
                expect: Box::leak(phrase.to_string().into_boxed_str()),
            }
        })
        .collect();
    (keyring, cases)
}

/// A device on slot A, version 1.0.0, security floor 1, laid out in a temp dir.
struct Device {
    dir: tempfile::TempDir,
}

const PARTITION_HEAD: usize = 1 << 20;

impl Device {
    fn new() -> Device {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let esp = p.join("esp");
        for slot in Slot::ALL {
            fs::create_dir_all(esp.join(format!("EFI/cairn/{slot}"))).unwrap();
            fs::write(
                esp.join(format!("EFI/cairn/{slot}/vmlinuz")),
                format!("kernel {slot}"),
            )
            .unwrap();
            let fill = if slot == Slot::A { 0xaa } else { 0xbb };
            fs::write(
                p.join(format!("root-{slot}")),
                vec![fill; cairn_hostile::ROOT_SIZE as usize],
            )
            .unwrap();
        }
        fs::create_dir_all(esp.join(sdboot::ENTRIES_DIR)).unwrap();
        fs::write(esp.join(sdboot::LOADER_CONF_PATH), sdboot::loader_conf()).unwrap();
        let entry = |slot: Slot| Entry {
            title: format!("Cairn 1.0.0 (slot {slot})"),
            version: "1.0.0".into(),
            linux: format!("/EFI/cairn/{slot}/vmlinuz"),
            initrd: format!("/EFI/cairn/{slot}/initramfs.img"),
            options: vec![format!("cairn.slot={slot}")],
        };
        for (name, text) in sdboot::initial_entries(&entry(Slot::A), &entry(Slot::B)).unwrap() {
            fs::write(esp.join(sdboot::ENTRIES_DIR).join(name), text).unwrap();
        }
        fs::create_dir_all(p.join("state")).unwrap();
        let state = StateDir::new(p.join("state"));
        state.raise_floor(1).unwrap();
        for slot in Slot::ALL {
            let record = SlotRecord {
                version: "1.0.0".into(),
                security_version: 1,
                installed_unix_ms: 1_780_000_000_000,
                source: SlotSource::Image,
            };
            state.set_slot(slot, &record).unwrap();
        }
        fs::write(p.join("state/machine.yaml"), "update:\n  tries: 2\n").unwrap();
        fs::create_dir_all(p.join("data/app")).unwrap();
        fs::write(p.join("data/app/db"), "rows written before\n").unwrap();
        for part in ["state.part", "data.part", "uboot.env", "disk.img"] {
            fs::write(p.join(part), vec![0u8; PARTITION_HEAD]).unwrap();
        }
        Device { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Puts `bytes` at the start of one of the raw areas (the rest stays as it was).
    fn place(&self, area: &str, bytes: &[u8]) {
        let mut all = vec![0u8; PARTITION_HEAD.max(bytes.len())];
        all[..bytes.len()].copy_from_slice(bytes);
        fs::write(self.path(area), all).unwrap();
    }

    /// A hash of each region.
    fn regions(&self) -> BTreeMap<&'static str, String> {
        let region = |paths: &[&str]| {
            let mut h = Sha256::new();
            for p in paths {
                hash_tree(&self.path(p), &mut h);
            }
            hex::encode(h.finalize())
        };
        BTreeMap::from([
            ("ESP", region(&["esp"])),
            ("ROOT-A", region(&["root-a"])),
            ("ROOT-B", region(&["root-b"])),
            ("STATE", region(&["state", "state.part"])),
            ("DATA", region(&["data", "data.part"])),
            ("U-Boot env", region(&["uboot.env"])),
            ("disk", region(&["disk.img"])),
        ])
    }
}

/// Names, contents and modes of everything under `path`, in order.
fn hash_tree(path: &Path, h: &mut Sha256) {
    h.update(path.to_string_lossy().as_bytes());
    if path.is_dir() {
        let mut names: Vec<PathBuf> = fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for n in names {
            hash_tree(&n, h);
        }
    } else {
        let mut f = File::open(path).unwrap();
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap();
        h.update((buf.len() as u64).to_le_bytes());
        h.update(&buf);
    }
}

/// Runs the device's reader for `case`; `Err` is the refusal as the device reports it.
struct Readers {
    keyring: Keyring,
    vectors_keyring: Keyring,
}

impl Readers {
    fn read(&self, dev: &Device, case: &Case) -> Result<(), String> {
        match case.kind {
            "bundles" => {
                let keyring = if case.name.starts_with("bundle/vectors/") {
                    &self.vectors_keyring
                } else {
                    &self.keyring
                };
                install(
                    dev.dir.path(),
                    keyring,
                    &mut &case.bytes[..],
                    case.bytes.len() as u64,
                )
            }
            "machine-configs" => {
                let settings = settings_on(dev);
                let text =
                    String::from_utf8(case.bytes.clone()).map_err(|e| format!("not UTF-8: {e}"))?;
                settings
                    .apply(&text, false, 0)
                    .map(|_| ())
                    .map_err(|e| e.message)
            }
            "uboot-env" => {
                let size = case.bytes.len() / 2;
                let area = |offset| -> Result<Area<FileStorage>, String> {
                    let storage =
                        FileStorage::open(&dev.path("uboot.env")).map_err(|e| e.to_string())?;
                    Ok(Area::new(storage, offset))
                };
                let store = EnvStore::open(area(0)?, area(size as u64)?, size, Limits::default())
                    .map_err(|e| e.to_string())?;
                BootState::new(store)
                    .status()
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            "gpt" => {
                let mut disk = File::options()
                    .read(true)
                    .write(true)
                    .open(dev.path("disk.img"))
                    .unwrap();
                gpt::read(&mut disk).map(|_| ()).map_err(|e| e.to_string())
            }
            "luks" => {
                let parts = Partitions {
                    state: dev.path("state.part"),
                    data: dev.path("data.part"),
                };
                // The recovery-key unlock (the API's Unlock): reads both headers, changes
                // nothing before both open.
                let key = storage::new_recovery_key();
                storage::unlock_with_recovery(&parts, None, &key).map(|_| ())
            }
            "dhcp" => cairn_netcfg::dhcp::parse(&case.bytes)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            "sntp" => sntp_exchange(&case.bytes),
            "api" => api_call(dev, case),
            other => panic!("no reader for {other}"),
        }
    }
}

/// Installs a bundle of `len` bytes as `Updates::install` does, into slot B of the device laid
/// out in `dir`.
fn install(dir: &Path, keyring: &Keyring, bundle: &mut dyn Read, len: u64) -> Result<(), String> {
    Installer {
        keyring,
        device: DeviceFacts {
            board: cairn_hostile::BOARD.into(),
            arch: cairn_hostile::ARCH.into(),
            installed_version: Version::new(1, 0, 0),
            security_floor: 0,
        },
        running: Slot::A,
        layout: Layout {
            roots: [dir.join("root-a"), dir.join("root-b")],
            esp: dir.join("esp"),
        },
        state: StateDir::new(dir.join("state")),
        tries: 2,
    }
    .install(bundle, Some(len), &mut |_| {})
    .map(|_| ())
    .map_err(|e| cairn_daemon::update::chain(&e))
}

/// The device behind the API for API messages: the calls that change a device mapped onto the
/// capabilities cairnd maps them onto, on the temp device; every other call is refused, naming
/// itself, since no message of the corpus should have got that far.
struct OnDisk {
    dir: PathBuf,
    settings: Arc<Settings>,
}

impl OnDisk {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }
}

fn reached(call: &str) -> DeviceError {
    DeviceError::internal(format!("{call} reached the device"))
}

impl cairn_api::Device for OnDisk {
    fn version(&self) -> Result<proto::VersionResponse, DeviceError> {
        Err(reached("Version"))
    }
    fn health(&self) -> Result<proto::HealthResponse, DeviceError> {
        Err(reached("Health"))
    }
    fn slot_status(&self) -> Result<proto::SlotStatusResponse, DeviceError> {
        Err(reached("SlotStatus"))
    }
    fn service_list(&self) -> Result<proto::ServiceListResponse, DeviceError> {
        Err(reached("ServiceList"))
    }
    fn service_restart(&self, _: &str) -> Result<proto::ServiceRestartResponse, DeviceError> {
        Err(reached("ServiceRestart"))
    }
    fn logs(
        &self,
        _: &proto::LogsRequest,
        _: &Sink<proto::LogsResponse>,
    ) -> Result<(), DeviceError> {
        Err(reached("Logs"))
    }
    fn upgrade(
        &self,
        source: UpgradeSource,
        _: bool,
        _: &mut dyn FnMut(proto::UpgradeProgress),
    ) -> Result<proto::UpgradeDone, DeviceError> {
        let UpgradeSource::Upload(mut upload) = source else {
            return Err(reached("an upgrade from a URL"));
        };
        // As cairnd's `ApiDevice::upgrade` reads an upload, into `Updates::install`.
        let len = upload.size();
        let keyring = Keyring::from_keys([cairn_hostile::device_key().public()]).unwrap();
        install(&self.dir, &keyring, &mut upload, len).map_err(DeviceError::invalid_argument)?;
        Err(reached("a successful install"))
    }
    fn rollback(&self) -> Result<proto::RollbackResponse, DeviceError> {
        Err(reached("Rollback"))
    }
    fn reboot(&self) -> Result<(), DeviceError> {
        Err(reached("Reboot"))
    }
    fn shutdown(&self) -> Result<(), DeviceError> {
        Err(reached("Shutdown"))
    }
    fn apply_config(
        &self,
        request: &proto::ApplyConfigRequest,
    ) -> Result<proto::ApplyConfigResponse, DeviceError> {
        self.settings
            .apply(&request.config, request.dry_run, request.try_timeout_s)
    }
    fn confirm_config(&self, generation: u64) -> Result<(), DeviceError> {
        self.settings.confirm(generation)
    }
    fn events(
        &self,
        _: &proto::EventsRequest,
        _: &Sink<proto::EventsResponse>,
    ) -> Result<(), DeviceError> {
        Err(reached("Events"))
    }
    fn unlock(&self, recovery_key: &str) -> Result<proto::UnlockResponse, DeviceError> {
        // As the maintenance-mode device unlocks (`maintenance.rs`), without a TPM.
        storage::normalize_recovery_key(recovery_key).map_err(DeviceError::invalid_argument)?;
        let parts = Partitions {
            state: self.path("state.part"),
            data: self.path("data.part"),
        };
        storage::unlock_with_recovery(&parts, None, recovery_key)
            .map_err(DeviceError::invalid_argument)?;
        Err(reached("a successful unlock"))
    }
}

/// Sends an API message to [`OnDisk`] on `dev`.
fn api_call(dev: &Device, case: &Case) -> Result<(), String> {
    let device = Arc::new(OnDisk {
        dir: dev.dir.path().to_path_buf(),
        settings: settings_on(dev),
    });
    api::call(device, cairn_hostile::api::method(&case.name), &case.bytes)
}

/// The config capability as cairnd starts it, with the device's STATE, and the network loop in
/// the calling thread's network namespace, running an empty network section.
fn settings_on(dev: &Device) -> Arc<Settings> {
    let options = Options {
        resolv_conf: dev.path("resolv.conf"),
        set_hostname: false,
        sync_clock: false,
        default_ntp: Vec::new(),
        dhcp_retransmit: Default::default(),
    };
    let network = Netcfg::start(Default::default(), options, Arc::new(|_: &str| {})).unwrap();
    Arc::new(Settings::new(
        Ok(MachineConfig::default()),
        network,
        StateDir::new(dev.path("state")),
        Arc::new(Events::new()),
    ))
}

/// Answers one SNTP request on loopback with `reply`, its origin mark replaced by the
/// request's cookie, and returns what the client made of it.
fn sntp_exchange(reply: &[u8]) -> Result<(), String> {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = server.local_addr().unwrap();
    let reply = reply.to_vec();
    let answer = std::thread::spawn(move || {
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert!(n >= 48, "the request is an NTP header");
        let mut out = reply;
        if let Some(at) = out.windows(8).position(|w| w == cairn_hostile::ORIGIN_MARK) {
            out[at..at + 8].copy_from_slice(&buf[40..48]);
        }
        server.send_to(&out, from).unwrap();
    });
    let got = query_with(&SystemClock, addr, Duration::from_millis(400));
    answer.join().unwrap();
    // As the network loop reports it (`agent.rs`).
    got.map(|_| ()).map_err(|e| e.one_line())
}

/// One input's outcome.
struct Outcome {
    refused: Option<String>,
    changed: Vec<&'static str>,
    /// The slot an ordinary reboot starts, from the ESP's boot entries.
    next_boot: Option<Slot>,
}

fn run_all(cases: &[Case], readers: &Readers) -> Vec<Outcome> {
    cases
        .iter()
        .map(|case| {
            let dev = Device::new();
            // Inputs that lie on the disk are put there first: the reader must leave them so.
            match case.kind {
                "uboot-env" => dev.place("uboot.env", &case.bytes),
                "gpt" => fs::write(dev.path("disk.img"), &case.bytes).unwrap(),
                "luks" => dev.place("state.part", &case.bytes),
                _ => {}
            }
            let before = dev.regions();
            let got = readers.read(&dev, case);
            let after = dev.regions();
            let next_boot = SdBoot::new(DirFs::new(dev.path("esp")), Some(Slot::A))
                .status()
                .ok()
                .and_then(|s| s.next);
            Outcome {
                next_boot,
                refused: got.err(),
                changed: after
                    .iter()
                    .filter(|(region, hash)| before[*region] != **hash)
                    .map(|(region, _)| *region)
                    .collect(),
            }
        })
        .collect()
}

/// Brings up `lo` in this thread's network namespace (a new one has it down), for the API
/// server the API messages are sent to.
fn loopback_up() {
    // SAFETY: a plain socket for the ioctls, closed below; `req` is an ifreq the kernel reads
    // and writes within its size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "a socket for SIOCSIFFLAGS");
        let mut req: libc::ifreq = std::mem::zeroed();
        for (to, from) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *to = *from as libc::c_char;
        }
        assert_eq!(
            libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req),
            0,
            "lo's flags"
        );
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &req), 0, "lo up");
        libc::close(fd);
    }
}

/// Runs `f` on a thread in a new network namespace; `None` when not root.
fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return None;
        }
        loopback_up();
        Some(f())
    })
    .join()
    .unwrap()
}

#[test]
fn every_hostile_input_is_refused_with_one_line_and_the_disk_unchanged() {
    let corpus = read_corpus();
    let (vectors_keyring, vectors) = bundle_vectors();
    assert!(
        vectors.len() >= 10,
        "bundle/vectors/ holds its refused bundles"
    );
    let mut cases = vectors;
    cases.extend(corpus);
    let readers = Readers {
        keyring: Keyring::from_keys([cairn_hostile::device_key().public()]).unwrap(),
        vectors_keyring,
    };
    // Machine configs are applied as cairnd applies them, network included: in a network
    // namespace of their own, so the host's links are never touched.
    // API messages too: ApplyConfig reaches the same config capability.
    let (configs, others): (Vec<Case>, Vec<Case>) = cases
        .into_iter()
        .partition(|c| c.kind == "machine-configs" || c.kind == "api");
    let mut outcomes = run_all(&others, &readers);
    let config_outcomes = in_fresh_netns(move || {
        let outcomes = run_all(&configs, &readers);
        (configs, outcomes)
    });
    let mut cases = others;
    match config_outcomes {
        Some((configs, config_outcomes)) => {
            cases.extend(configs);
            outcomes.extend(config_outcomes);
        }
        None => println!(
            "skipped machine configs and API messages: needs root to create a network namespace"
        ),
    }

    let mut table = String::from(
        "kind             count  refused, disk unchanged  refused after the install began \
         (slot B released, as designed)\n",
    );
    let mut failures = Vec::new();
    for kind in KINDS {
        let mine: Vec<(&Case, &Outcome)> = cases
            .iter()
            .zip(&outcomes)
            .filter(|(c, _)| c.kind == kind)
            .collect();
        let mut good = 0;
        let mut released = 0;
        for (case, outcome) in &mine {
            let (releases_b, phrase) = match case.expect.strip_prefix(RELEASES_B) {
                Some(p) => (true, p),
                None => (false, case.expect),
            };
            // A released slot B may hold part of what was being written into it.
            let allowed: &[&str] = if releases_b {
                &["ESP", "STATE", "ROOT-B"]
            } else {
                &[]
            };
            let problem = match &outcome.refused {
                None => Some("accepted".to_string()),
                Some(e) if e.contains('\n') || e.chars().any(char::is_control) => {
                    Some(format!("refused with more than one line: {e:?}"))
                }
                Some(e) if !e.contains(phrase) => {
                    Some(format!("refused without naming {phrase:?}: {e}"))
                }
                Some(_) if outcome.changed.iter().any(|r| !allowed.contains(r)) => Some(format!(
                    "refused, but changed {}",
                    outcome.changed.join(", ")
                )),
                Some(_) if releases_b && outcome.next_boot != Some(Slot::A) => Some(format!(
                    "the next boot is {:?}, not the running slot A",
                    outcome.next_boot
                )),
                Some(_) => None,
            };
            match problem {
                None if outcome.changed.is_empty() => good += 1,
                None => released += 1,
                Some(p) => failures.push(format!("{kind}/{}: {p}", case.name)),
            }
        }
        let pct = if mine.is_empty() {
            0.0
        } else {
            100.0 * good as f64 / mine.len() as f64
        };
        writeln!(
            table,
            "{kind:<16} {:>5}  {good:>14} ({pct:>3.0}%)  {released:>5}",
            mine.len()
        )
        .unwrap();
    }
    println!("{table}");
    for (case, outcome) in cases.iter().zip(&outcomes) {
        println!(
            "  {}/{}: {}",
            case.kind,
            case.name,
            outcome.refused.as_deref().unwrap_or("ACCEPTED")
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
