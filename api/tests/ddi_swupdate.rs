//! Debian's swupdate (its suricatta hawkBit client) against the DDI double: an independent
//! client, written from the same published API, must be able to poll, take the deployment,
//! download the artifact and send feedback that the double accepts. Skipped (saying so) when
//! /usr/bin/swupdate is missing (`apt-get install swupdate`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_api::testing_ddi::{ActionStatus, Ddi, DdiAuth};

const SWUPDATE: &str = "/usr/bin/swupdate";

/// A cpio "newc" archive, as .swu files are.
fn cpio(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let pad = |out: &mut Vec<u8>| {
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    };
    let entry = |out: &mut Vec<u8>, ino: u32, name: &str, data: &[u8], mode: u32| {
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad(out);
        out.extend_from_slice(data);
        pad(out);
    };
    for (i, (name, data)) in files.iter().enumerate() {
        entry(&mut out, i as u32 + 1, name, data, 0o100644);
    }
    entry(&mut out, 0, "TRAILER!!!", &[], 0);
    out
}

/// Runs openssl in `dir`; the signing key and certificate for the .swu are made with it, as
/// swupdate's documentation shows (Debian builds swupdate for CMS-signed images).
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn swu(dir: &Path) -> Vec<u8> {
    let payload = vec![0x5au8; 4096];
    let sha: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&payload)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let description = format!(
        "software =\n{{\n  version = \"2.0.0\";\n  hardware-compatibility: [ \"1.0\" ];\n  images: (\n    {{\n      filename = \"payload.bin\";\n      \
         type = \"raw\";\n      device = \"/dev/null\";\n      sha256 = \"{sha}\";\n    }}\n  );\n}}\n"
    );
    std::fs::write(dir.join("sw-description"), &description).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=cairn test swu signer",
            "-addext",
            "extendedKeyUsage=emailProtection",
            "-addext",
            "keyUsage=digitalSignature",
        ],
    );
    openssl(
        dir,
        &[
            "cms",
            "-sign",
            "-in",
            "sw-description",
            "-out",
            "sw-description.sig",
            "-signer",
            "cert.pem",
            "-inkey",
            "key.pem",
            "-outform",
            "DER",
            "-nosmimecap",
            "-binary",
        ],
    );
    let sig = std::fs::read(dir.join("sw-description.sig")).unwrap();
    cpio(&[
        ("sw-description", description.as_bytes()),
        ("sw-description.sig", &sig),
        ("payload.bin", &payload),
    ])
}

/// One run of `swupdate` with suricatta polling the double as `swu-01`, until `done` says so
/// (or it exits, or a minute passes); stopped by its pid. Returns its log.
fn suricatta(ddi: &Ddi, dir: &Path, hw: &str, extra: &str, done: &dyn Fn() -> bool) -> String {
    // swupdate's control sockets have fixed names: one instance at a time.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let log = std::fs::File::create(dir.join("swupdate.log")).unwrap();
    // -n: dry run (the raw image goes nowhere); -m: no update state in a bootloader env.
    // -x: the double's certificate comes from a throwaway CA that swupdate is not given.
    let mut child = Command::new(SWUPDATE)
        .args(["-v", "-n", "-m", "-k", "cert.pem", "-H", hw, "-u"])
        .arg(format!(
            "-t DEFAULT -u {} -i swu-01 -k {} -p 1 -x {extra}",
            ddi.url(),
            Ddi::token("swu-01")
        ))
        .current_dir(dir)
        .env("TMPDIR", dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("swupdate starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !done() && child.try_wait().ok().flatten().is_none() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(dir.join("swupdate.log")).unwrap_or_default()
}

/// A good image: suricatta polls, reads the deployment, downloads the artifact (HEAD, then
/// GET), installs it and reports `proceeding`, never `closed`, until it is restarted with the
/// post-reboot confirmation (`-c 2`), which closes the action with success. Every request it
/// made got a 2xx from the double, so the double's feedback and configData checks accept
/// another client's JSON too.
#[test]
fn swupdate_suricatta_takes_a_deployment_from_the_double() {
    if !Path::new(SWUPDATE).exists() {
        println!("skipped: {SWUPDATE} is not installed (apt-get install swupdate)");
        return;
    }
    let ddi = Ddi::start(DdiAuth::Target);
    let dir = tempfile::tempdir().unwrap();
    ddi.add_artifact("update.swu", swu(dir.path()));
    let id = ddi.assign("swu-01", "update.swu", "forced", "forced");
    let installed = || {
        ddi.log()
            .iter()
            .any(|l| l.contains("/artifacts/update.swu 200"))
            && ddi.action(id).feedback.len() >= 2
    };
    let text = suricatta(&ddi, dir.path(), "cairn:1.0", "", &installed);
    let log = ddi.log();
    println!(
        "swupdate's requests: {log:?}\nits feedback: {:?}",
        ddi.action(id).steps()
    );
    assert!(installed(), "swupdate did not install; its log:\n{text}");
    assert!(
        log.iter().all(|l| l.ends_with(" 200")),
        "the double refused some of swupdate's requests: {log:?}"
    );
    for needed in [
        "GET /DEFAULT/controller/v1/swu-01 ",
        "GET /DEFAULT/controller/v1/swu-01/deploymentBase/",
        "POST /DEFAULT/controller/v1/swu-01/deploymentBase/1/feedback",
    ] {
        assert!(
            log.iter().any(|l| l.starts_with(needed)),
            "no {needed}: {log:?}"
        );
    }
    let action = ddi.action(id);
    assert_eq!(
        action.status,
        ActionStatus::Running,
        "{:?}; its log:\n{text}",
        action.steps()
    );
    assert!(action.steps().iter().all(|(e, _)| e == "proceeding"));

    // After the "reboot": swupdate confirms the update, and the double closes the action.
    let finished = || ddi.action(id).status != ActionStatus::Running;
    let text = suricatta(&ddi, dir.path(), "cairn:1.0", "-c 2", &finished);
    let action = ddi.action(id);
    assert_eq!(
        action.status,
        ActionStatus::Finished,
        "{:?}; its log:\n{text}",
        action.steps()
    );
    assert_eq!(
        action.steps().last().unwrap(),
        &("closed".to_string(), "success".to_string())
    );
}

/// An image for other hardware: suricatta refuses it and closes the action with failure.
#[test]
fn swupdate_suricatta_reports_a_refused_image_as_failure() {
    if !Path::new(SWUPDATE).exists() {
        println!("skipped: {SWUPDATE} is not installed (apt-get install swupdate)");
        return;
    }
    let ddi = Ddi::start(DdiAuth::Target);
    let dir = tempfile::tempdir().unwrap();
    ddi.add_artifact("update.swu", swu(dir.path()));
    let id = ddi.assign("swu-01", "update.swu", "forced", "forced");
    let closed = || ddi.action(id).status != ActionStatus::Running;
    let text = suricatta(&ddi, dir.path(), "cairn:9.9", "", &closed);
    let action = ddi.action(id);
    assert_eq!(
        action.status,
        ActionStatus::Error,
        "{:?}; its log:\n{text}",
        action.steps()
    );
    assert_eq!(
        action.steps().last().unwrap(),
        &("closed".to_string(), "failure".to_string())
    );
}
