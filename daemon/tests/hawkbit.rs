//! cairnd's hawkBit agent against the DDI double (`cairn_api::testing_ddi`) over HTTPS on
//! loopback: a device whose install reads the artifact as the real one does (to its last
//! byte) and whose slots, trial record and reboots the test plays.

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_api::ddi::{Auth, Client};
use cairn_api::fetch::{self, FetchLimits};
use cairn_api::testing_ddi::{ActionStatus, Ddi, DdiAuth};
use cairn_daemon::hawkbit::{read_record, Agent, Device, Step};
use cairn_updater::state::{Outcome, TrialRecord};
use sha2::{Digest, Sha256};

#[derive(Default)]
struct World {
    running: String,
    trial: Option<TrialRecord>,
    /// sha256 of each artifact the install read whole.
    installed: Vec<String>,
    refused: Vec<String>,
    install_errors: Vec<String>,
    reboots: usize,
}

#[derive(Clone)]
struct FakeDevice(Arc<Mutex<World>>);

impl FakeDevice {
    fn new() -> FakeDevice {
        FakeDevice(Arc::new(Mutex::new(World {
            running: "a".into(),
            ..World::default()
        })))
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap()
    }

    /// The reboot into the trial, then the health window's verdict.
    fn boot_trial(&self, healthy: bool) {
        let mut w = self.world();
        let trial = w.trial.as_mut().expect("an armed trial");
        if healthy {
            w.running = "b".into();
            let t = w.trial.as_mut().unwrap();
            t.outcome = Outcome::Committed;
        } else {
            trial.outcome = Outcome::RolledBack;
            trial.reason = Some("probe tcp 127.0.0.1:9: connection refused".into());
            w.running = "a".into();
        }
    }
}

impl Device for FakeDevice {
    fn facts(&self) -> Vec<(String, String)> {
        let w = self.world();
        vec![
            ("board".into(), "qemu-x86_64".into()),
            (
                "version".into(),
                if w.running == "b" { "2.0.0" } else { "1.0.0" }.into(),
            ),
            ("slot".into(), w.running.clone()),
            ("health".into(), "healthy".into()),
        ]
    }

    fn running_slot(&self) -> String {
        self.world().running.clone()
    }

    fn last_trial(&self) -> Option<TrialRecord> {
        self.world().trial.clone()
    }

    fn install(
        &self,
        what: &str,
        reader: &mut dyn Read,
        len: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(String, String), String> {
        let mut hash = Sha256::new();
        let mut buf = vec![0; 64 * 1024];
        let mut done = 0;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let why = format!("{what} refused: {e}");
                    self.world().install_errors.push(why.clone());
                    return Err(why);
                }
            };
            hash.update(&buf[..n]);
            done += n as u64;
            progress(done, len);
        }
        let mut w = self.world();
        w.installed.push(hex(&hash.finalize()));
        w.trial = Some(TrialRecord {
            slot: "b".into(),
            version: "2.0.0".into(),
            security_version: 0,
            outcome: Outcome::Installed,
            reason: None,
        });
        Ok(("2.0.0".into(), "b".into()))
    }

    fn refused(&self, what: &str, why: &str) {
        self.world().refused.push(format!("{what} refused: {why}"));
    }

    fn reboot(&self) {
        self.world().reboots += 1;
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const ID: &str = "edge-01";

fn limits() -> FetchLimits {
    FetchLimits {
        backoff: Duration::from_millis(10),
        connect_timeout: Duration::from_secs(2),
        head_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        ..FetchLimits::default()
    }
}

fn agent(ddi: &Ddi, device: &FakeDevice, state: &std::path::Path) -> Agent<FakeDevice> {
    let tls = fetch::client_config(ddi.roots(), None).unwrap();
    let client = Client::new(&ddi.url(), "DEFAULT", ID, Auth::Target(Ddi::token(ID)), tls)
        .with_limits(limits());
    Agent::new(client, device.clone(), state.to_path_buf())
}

fn bundle() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn rig() -> (Ddi, FakeDevice, tempfile::TempDir, u64) {
    let ddi = Ddi::start(DdiAuth::Target);
    ddi.add_artifact("edge-2.0.0.cairn", bundle());
    let id = ddi.assign(ID, "edge-2.0.0.cairn", "forced", "forced");
    (ddi, FakeDevice::new(), tempfile::tempdir().unwrap(), id)
}

fn closed(ddi: &Ddi, id: u64) -> Vec<(String, String)> {
    ddi.action(id)
        .steps()
        .into_iter()
        .filter(|(e, _)| e == "closed")
        .collect()
}

#[test]
fn a_good_deployment_is_finished_only_after_the_new_slot_committed() {
    let (ddi, device, state, id) = rig();
    let mut a = agent(&ddi, &device, state.path());
    assert_eq!(a.cycle().unwrap(), Step::Rebooting);
    assert_eq!(
        device.world().installed,
        vec![hex(&Sha256::digest(bundle()))]
    );
    assert_eq!(device.world().reboots, 1);
    // Installed and rebooting: proceeding with progress, nothing closed, still RUNNING.
    let action = ddi.action(id);
    assert_eq!(action.status, ActionStatus::Running);
    assert!(closed(&ddi, id).is_empty(), "{:?}", action.steps());
    assert!(action.steps().iter().all(|(e, _)| e == "proceeding"));
    let last = action.feedback.last().unwrap();
    assert_eq!(last.pointer("/status/result/progress/cnt").unwrap(), 100);
    let record = read_record(state.path()).expect("the action is on STATE");
    assert_eq!(
        (record.id.as_str(), record.stage.as_str()),
        (id.to_string().as_str(), "trial")
    );
    let config = ddi
        .target(ID)
        .unwrap()
        .config_data
        .expect("configData sent");
    assert_eq!(config.pointer("/data/slot").unwrap(), "a");
    assert_eq!(config.pointer("/data/board").unwrap(), "qemu-x86_64");
    assert_eq!(config["mode"], "merge");

    // The new slot boots, still on trial (cairnd restarted meanwhile): no verdict, no report.
    device.world().running = "b".into();
    let mut a = agent(&ddi, &device, state.path());
    assert!(matches!(a.cycle().unwrap(), Step::Sleep(_)));
    assert!(closed(&ddi, id).is_empty());
    assert_eq!(device.world().installed.len(), 1, "not installed twice");

    // Committed: the new slot reports success, once; the record is gone.
    device.boot_trial(true);
    assert!(matches!(a.cycle().unwrap(), Step::Sleep(_)));
    assert_eq!(closed(&ddi, id), vec![("closed".into(), "success".into())]);
    assert_eq!(ddi.action(id).status, ActionStatus::Finished);
    assert_eq!(read_record(state.path()), None);
    let config = ddi.target(ID).unwrap().config_data.unwrap();
    assert_eq!(config.pointer("/data/version").unwrap(), "2.0.0");
    a.cycle().unwrap();
    assert_eq!(ddi.action(id).feedback.len(), action.feedback.len() + 1);
}

#[test]
fn an_unhealthy_slot_is_reported_as_failure_by_the_old_slot_after_the_rollback() {
    let (ddi, device, state, id) = rig();
    assert_eq!(
        agent(&ddi, &device, state.path()).cycle().unwrap(),
        Step::Rebooting
    );
    device.boot_trial(false);
    // The old slot's cairnd starts again.
    agent(&ddi, &device, state.path()).cycle().unwrap();
    let closed = closed(&ddi, id);
    assert_eq!(closed, vec![("closed".into(), "failure".into())]);
    let action = ddi.action(id);
    assert_eq!(action.status, ActionStatus::Error);
    let detail = action.feedback.last().unwrap()["status"]["details"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains("rolled back: probe tcp 127.0.0.1:9: connection refused")
            && detail.contains("running slot a again"),
        "{detail}"
    );
    assert_eq!(read_record(state.path()), None);
}

#[test]
fn a_cancel_before_the_install_is_accepted_and_nothing_is_installed() {
    let (ddi, device, state, id) = rig();
    ddi.cancel(id);
    let mut a = agent(&ddi, &device, state.path());
    assert!(matches!(a.cycle().unwrap(), Step::Sleep(_)));
    let action = ddi.action(id);
    assert_eq!(action.status, ActionStatus::Canceled);
    assert_eq!(action.cancel_feedback.len(), 1);
    assert_eq!(action.cancel_feedback[0]["status"]["execution"], "closed");
    assert!(device.world().installed.is_empty());
    a.cycle().unwrap();
    assert!(device.world().installed.is_empty());
    assert!(ddi.log().iter().all(|l| !l.contains("/deploymentBase/")));
}

#[test]
fn a_cancel_after_the_trial_is_armed_is_rejected_and_the_result_still_follows() {
    let (ddi, device, state, id) = rig();
    assert_eq!(
        agent(&ddi, &device, state.path()).cycle().unwrap(),
        Step::Rebooting
    );
    ddi.cancel(id);
    device.world().running = "b".into();
    agent(&ddi, &device, state.path()).cycle().unwrap();
    let action = ddi.action(id);
    assert_eq!(action.cancel_feedback[0]["status"]["execution"], "rejected");
    assert_eq!(action.status, ActionStatus::Running);
    device.boot_trial(true);
    agent(&ddi, &device, state.path()).cycle().unwrap();
    assert_eq!(ddi.action(id).status, ActionStatus::Finished);
}

#[test]
fn an_artifact_that_does_not_match_its_hash_is_refused_and_nothing_is_armed() {
    let (ddi, device, state, id) = rig();
    ddi.edit(id, |a| a.announced_sha256 = "ab".repeat(32));
    let step = agent(&ddi, &device, state.path()).cycle().unwrap();
    assert!(matches!(step, Step::Sleep(_)));
    let w = device.world();
    assert!(
        w.installed.is_empty(),
        "the install never read the last bytes"
    );
    assert_eq!(w.reboots, 0);
    assert_eq!(w.install_errors.len(), 1);
    let e = &w.install_errors[0];
    assert!(
        e.contains("the deployment announces abab") && !e.contains('\n'),
        "{e}"
    );
    drop(w);
    let action = ddi.action(id);
    assert_eq!(action.status, ActionStatus::Error);
    assert!(action.feedback.last().unwrap()["status"]["details"][0]
        .as_str()
        .unwrap()
        .contains("sha256"));
    assert_eq!(read_record(state.path()), None);
}

#[test]
fn a_download_cut_midway_resumes_with_a_range() {
    let (ddi, device, state, _id) = rig();
    ddi.cut_next_download(100_000);
    assert_eq!(
        agent(&ddi, &device, state.path()).cycle().unwrap(),
        Step::Rebooting
    );
    assert_eq!(
        device.world().installed,
        vec![hex(&Sha256::digest(bundle()))]
    );
    let gets = ddi
        .log()
        .iter()
        .filter(|l| l.contains("/artifacts/"))
        .count();
    assert_eq!(gets, 2, "{:?}", ddi.log());
}

#[test]
fn skip_and_a_closed_maintenance_window_wait() {
    let (ddi, device, state, id) = rig();
    ddi.edit(id, |a| a.update = "skip".into());
    let mut a = agent(&ddi, &device, state.path());
    assert!(matches!(a.cycle().unwrap(), Step::Sleep(_)));
    ddi.edit(id, |a| {
        a.update = "attempt".into();
        a.window = Some("unavailable".into());
    });
    assert!(matches!(a.cycle().unwrap(), Step::Sleep(_)));
    assert!(device.world().installed.is_empty());
    assert!(ddi.action(id).feedback.is_empty());
    ddi.edit(id, |a| a.window = Some("available".into()));
    assert_eq!(a.cycle().unwrap(), Step::Rebooting);
}

#[test]
fn the_polling_sleep_is_the_servers() {
    let (ddi, device, state, id) = rig();
    ddi.cancel(id);
    ddi.set_sleep("00:07:30");
    let mut a = agent(&ddi, &device, state.path());
    assert_eq!(a.cycle().unwrap(), Step::Sleep(Duration::from_secs(450)));
}

#[test]
fn a_wrong_token_is_refused_by_the_server() {
    let (ddi, device, state, _) = rig();
    let tls = fetch::client_config(ddi.roots(), None).unwrap();
    let client = Client::new(&ddi.url(), "DEFAULT", ID, Auth::Target("nope".into()), tls)
        .with_limits(limits());
    let e = Agent::new(client, device.clone(), state.path().into())
        .cycle()
        .unwrap_err();
    assert!(e.message.contains("401"), "{e}");
    assert!(device.world().installed.is_empty());
}

#[test]
fn a_gateway_token_works_for_any_target() {
    let ddi = Ddi::start(DdiAuth::Gateway("tenant-secret".into()));
    ddi.add_artifact("b.cairn", bundle());
    let id = ddi.assign(ID, "b.cairn", "forced", "forced");
    let tls = fetch::client_config(ddi.roots(), None).unwrap();
    let client = Client::new(
        &ddi.url(),
        "DEFAULT",
        ID,
        Auth::Gateway("tenant-secret".into()),
        tls,
    )
    .with_limits(limits());
    let device = FakeDevice::new();
    let state = tempfile::tempdir().unwrap();
    let mut a = Agent::new(client, device.clone(), state.path().into());
    assert_eq!(a.cycle().unwrap(), Step::Rebooting);
    assert_eq!(ddi.action(id).status, ActionStatus::Running);
}

/// A server that takes connections and drops them: the agent's polls are counted, and they
/// must thin out (1, 2, 4 … times the first pause), not spin.
#[test]
fn an_unreachable_server_is_polled_with_a_growing_pause() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = accepted.clone();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(c);
        }
    });
    let ddi = Ddi::start(DdiAuth::Target);
    let tls = fetch::client_config(ddi.roots(), None).unwrap();
    let client = Client::new(
        &format!("https://{addr}"),
        "DEFAULT",
        ID,
        Auth::Target(Ddi::token(ID)),
        tls,
    )
    .with_limits(limits());
    let state = tempfile::tempdir().unwrap();
    let mut a = Agent::new(client, FakeDevice::new(), state.path().into());
    a.first_retry = Duration::from_millis(100);
    let start = Instant::now();
    a.run_until(&|| start.elapsed() > Duration::from_millis(3200));
    // Pauses 0.1, 0.2, 0.4, 0.8, 1.6 s: about 5 or 6 attempts in 3.2 s.
    let n = accepted.load(Ordering::SeqCst);
    assert!((3..=7).contains(&n), "{n} connections in 3.2 s");
}

/// The record as a power cut leaves it between the trial being armed and the record saying
/// so: still `installing`, with the update record from before the install.
fn cut_after_arming(state: &std::path::Path, id: u64, before: &str) {
    let text = format!(
        r#"{{"id":"{id}","stage":"installing","version":"","slot":"","before":"{before}"}}"#
    );
    std::fs::write(state.join(cairn_daemon::hawkbit::ACTION), text).unwrap();
}

#[test]
fn a_power_cut_after_the_trial_was_armed_still_reports_the_trials_result() {
    let (ddi, device, state, id) = rig();
    assert_eq!(
        agent(&ddi, &device, state.path()).cycle().unwrap(),
        Step::Rebooting
    );
    cut_after_arming(state.path(), id, "");
    device.boot_trial(true);
    agent(&ddi, &device, state.path()).cycle().unwrap();
    assert_eq!(ddi.action(id).status, ActionStatus::Finished);
    assert_eq!(device.world().installed.len(), 1, "not installed again");
    assert_eq!(read_record(state.path()), None);
}

#[test]
fn a_power_cut_during_the_download_takes_the_deployment_again() {
    let (ddi, device, state, id) = rig();
    // An earlier update's record, left as it was: the installer never got to write its own.
    device.world().trial = Some(TrialRecord {
        slot: "a".into(),
        version: "1.0.0".into(),
        security_version: 0,
        outcome: Outcome::Committed,
        reason: None,
    });
    cut_after_arming(state.path(), id, "a 1.0.0 Committed");
    assert_eq!(
        agent(&ddi, &device, state.path()).cycle().unwrap(),
        Step::Rebooting
    );
    assert_eq!(device.world().installed.len(), 1);
    assert_eq!(ddi.action(id).status, ActionStatus::Running);
    assert_eq!(read_record(state.path()).unwrap().stage, "trial");
}
