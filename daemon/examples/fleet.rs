//! A staged rollout shown: N simulated devices, each running cairnd's own hawkBit agent
//! (`cairn_daemon::hawkbit::Agent`, one thread each, in this one process), against the DDI
//! double (`cairn_api::testing_ddi`) on loopback, which runs a rollout in groups with hawkBit's
//! success and error thresholds. A device's health outcome is set by its group: from group
//! `--bad-group` on, `--bad-percent` of the devices fail their trial and roll back. The wave
//! stops where a group's error share crosses its threshold.
//!
//! `cargo xtask fleet [--devices N] [--groups G] [--bad-group K] [--bad-percent P]
//! [--success-threshold S] [--error-threshold E] [--interval-s I] [--seconds T]`
//!
//! Prints the groups' outcome and the figures: devices per second taken through a whole
//! update (poll, download, install, reboot, verdict, report), requests per second the double
//! answered, and the poll load a hawkBit server would see from 10,000 devices at `--interval-s`.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_api::ddi::{Auth, Client};
use cairn_api::fetch::{self, FetchLimits};
use cairn_api::testing_ddi::{ActionStatus, Ddi, DdiAuth, Group, GroupStatus, RolloutStatus};
use cairn_daemon::hawkbit::{Agent, Device};
use cairn_updater::state::{Outcome, TrialRecord};

struct Sim {
    running: String,
    trial: Option<TrialRecord>,
    rebooting: bool,
}

#[derive(Clone)]
struct SimDevice {
    healthy: bool,
    sim: Arc<Mutex<Sim>>,
}

impl Device for SimDevice {
    fn facts(&self) -> Vec<(String, String)> {
        let s = self.sim.lock().unwrap();
        vec![
            ("board".into(), "sim".into()),
            ("slot".into(), s.running.clone()),
            ("health".into(), "healthy".into()),
        ]
    }

    fn running_slot(&self) -> String {
        self.sim.lock().unwrap().running.clone()
    }

    fn last_trial(&self) -> Option<TrialRecord> {
        self.sim.lock().unwrap().trial.clone()
    }

    fn install(
        &self,
        what: &str,
        reader: &mut dyn Read,
        len: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(String, String), String> {
        let mut buf = vec![0; 64 * 1024];
        let mut done = 0;
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    done += n as u64;
                    progress(done, len);
                }
                Err(e) => return Err(format!("{what} refused: {e}")),
            }
        }
        let mut s = self.sim.lock().unwrap();
        s.trial = Some(TrialRecord {
            slot: "b".into(),
            version: "2.0.0".into(),
            security_version: 0,
            outcome: Outcome::Installed,
            reason: None,
        });
        Ok(("2.0.0".into(), "b".into()))
    }

    fn refused(&self, _what: &str, _why: &str) {}

    fn reboot(&self) {
        self.sim.lock().unwrap().rebooting = true;
    }
}

struct Args {
    devices: usize,
    groups: usize,
    bad_group: usize,
    bad_percent: usize,
    success: u32,
    error: u32,
    interval_s: u64,
    seconds: u64,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        devices: 200,
        groups: 4,
        bad_group: 2,
        bad_percent: 30,
        success: 80,
        error: 20,
        interval_s: 300,
        seconds: 120,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let n: u64 = value
            .parse()
            .map_err(|_| format!("{flag} {value:?} is not a number"))?;
        match flag.as_str() {
            "--devices" => a.devices = n as usize,
            "--groups" => a.groups = n as usize,
            "--bad-group" => a.bad_group = n as usize,
            "--bad-percent" => a.bad_percent = n as usize,
            "--success-threshold" => a.success = n as u32,
            "--error-threshold" => a.error = n as u32,
            "--interval-s" => a.interval_s = n,
            "--seconds" => a.seconds = n,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if a.devices == 0 || a.groups == 0 || a.groups > a.devices || a.interval_s == 0 {
        return Err(
            "--devices, --groups and --interval-s must be positive, groups <= devices".into(),
        );
    }
    if a.success > 100 || a.error > 100 || a.bad_percent > 100 {
        return Err("thresholds and --bad-percent are percentages (0..=100)".into());
    }
    Ok(a)
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fleet: {e}");
            std::process::exit(2);
        }
    };
    cairn_daemon::log::quiet();
    let ddi = Ddi::start(DdiAuth::Target);
    ddi.set_sleep("00:00:01");
    let artifact: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 253) as u8).collect();
    ddi.add_artifact("fleet-2.0.0.cairn", artifact);
    let tls = fetch::client_config(ddi.roots(), None).expect("TLS config");
    let limits = FetchLimits {
        backoff: Duration::from_millis(50),
        connect_timeout: Duration::from_secs(5),
        ..FetchLimits::default()
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let per_group = a.devices.div_ceil(a.groups);
    let name = |i: usize| format!("sim-{i:05}");
    let mut groups = Vec::new();
    for g in 0..a.groups {
        let targets: Vec<String> = (g * per_group..((g + 1) * per_group).min(a.devices))
            .map(name)
            .collect();
        groups.push(Group {
            targets,
            success_percent: a.success,
            error_percent: a.error,
        });
    }
    // Which devices fail their trial: the first bad_percent of each group from bad_group on.
    let healthy = |i: usize| {
        let g = i / per_group + 1;
        let k = i % per_group;
        g < a.bad_group || k * 100 >= a.bad_percent * per_group
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for i in 0..a.devices {
        let controller = name(i);
        let client = Client::new(
            &ddi.url(),
            "DEFAULT",
            &controller,
            Auth::Target(Ddi::token(&controller)),
            tls.clone(),
        )
        .with_limits(limits.clone());
        let device = SimDevice {
            healthy: healthy(i),
            sim: Arc::new(Mutex::new(Sim {
                running: "a".into(),
                trial: None,
                rebooting: false,
            })),
        };
        let state = dir.path().join(&controller);
        std::fs::create_dir_all(&state).expect("a state dir");
        let stop = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut agent = Agent::new(client.clone(), device.clone(), state.clone());
                    agent.first_retry = Duration::from_millis(500);
                    loop {
                        agent.run_until(&|| stop.load(Ordering::Relaxed));
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        // The reboot, the trial, the verdict (what cairnd's judge_trial does).
                        std::thread::sleep(Duration::from_millis(200));
                        {
                            let mut s = device.sim.lock().unwrap();
                            s.rebooting = false;
                            let t = s.trial.as_mut().expect("a trial");
                            if device.healthy {
                                t.outcome = Outcome::Committed;
                                s.running = "b".into();
                            } else {
                                t.outcome = Outcome::RolledBack;
                                t.reason = Some("simulated: a health probe failed".into());
                            }
                        }
                        // A new cairnd on whichever slot came up.
                        agent = Agent::new(client.clone(), device.clone(), state.clone());
                        agent.first_retry = Duration::from_millis(500);
                    }
                })
                .expect("a thread"),
        );
    }
    // Let every agent poll once (register) before the rollout starts.
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let requests_before = ddi.requests();
    ddi.start_rollout("fleet-2.0.0.cairn", groups);
    let deadline = started + Duration::from_secs(a.seconds);
    let mut last_change = Instant::now();
    let mut last_closed = 0;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let r = ddi.rollout().expect("the rollout");
        let actions = ddi.actions();
        let open = actions
            .iter()
            .filter(|x| x.status == ActionStatus::Running)
            .count();
        let closed = actions.len() - open;
        if closed != last_closed {
            last_closed = closed;
            last_change = Instant::now();
        }
        if (r.status != RolloutStatus::Running && open == 0) || Instant::now() > deadline {
            break;
        }
        let _ = last_change;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests = ddi.requests() - requests_before;
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let r = ddi.rollout().expect("the rollout");
    let actions = ddi.actions();
    let finished = actions
        .iter()
        .filter(|x| x.status == ActionStatus::Finished)
        .count();
    let errors = actions
        .iter()
        .filter(|x| x.status == ActionStatus::Error)
        .count();
    let feedback: usize = actions.iter().map(|x| x.feedback.len()).sum();
    println!(
        "fleet: {} devices in {} groups (success >= {} %, error > {} %), from group {} on {} % fail their trial",
        a.devices, a.groups, a.success, a.error, a.bad_group, a.bad_percent
    );
    for (i, (g, status)) in r.groups.iter().enumerate() {
        let of = |s: ActionStatus| {
            g.targets
                .iter()
                .filter(|t| {
                    actions
                        .iter()
                        .rev()
                        .find(|x| &x.target == *t)
                        .is_some_and(|x| x.status == s)
                })
                .count()
        };
        println!(
            "  group {}: {:<9} {} devices, {} FINISHED, {} ERROR, {} not updated",
            i + 1,
            format!("{status:?}"),
            g.targets.len(),
            of(ActionStatus::Finished),
            of(ActionStatus::Error),
            g.targets.len() - of(ActionStatus::Finished) - of(ActionStatus::Error)
        );
    }
    println!("  rollout: {:?}", r.status);
    let stopped = r
        .groups
        .iter()
        .position(|(_, s)| *s == GroupStatus::Error)
        .map_or("none".to_string(), |i| format!("group {}", i + 1));
    println!("  the wave stopped at: {stopped}");
    println!(
        "  {:.1} s from the rollout's start: {} actions closed ({finished} FINISHED, {errors} ERROR), {:.1} devices/s through a whole update",
        elapsed,
        finished + errors,
        (finished + errors) as f64 / elapsed
    );
    println!(
        "  the double answered {requests} requests: {:.0} requests/s sustained ({} devices polling every 1 s, {:.1} status entries per action)",
        requests as f64 / elapsed,
        a.devices,
        feedback as f64 / actions.len().max(1) as f64
    );
    let polls = 10_000.0 / a.interval_s as f64;
    let per_update = 2.0 + feedback as f64 / actions.len().max(1) as f64 + 1.0;
    println!(
        "  10,000 devices polling every {} s: {:.1} polls/s at rest; an update adds about {:.0} requests per device (deployment, download, {:.1} feedback, configData)",
        a.interval_s, polls, per_update, feedback as f64 / actions.len().max(1) as f64
    );
}
