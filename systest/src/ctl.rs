//! The real `cairnctl` against a guest's API, as one role of the development secrets.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cairnctl, keys_dir};

/// `cairnctl` with a client config for one role and an endpoint (a port forwarded to the
/// guest's API).
pub struct Ctl {
    pub config: PathBuf,
    pub endpoint: String,
}

impl Ctl {
    /// A client config in `dir` for `role` (admin, operator or reader) of the development
    /// secrets xtask puts on the images.
    pub fn for_role(role: &str, dir: &Path, endpoint: &str) -> Ctl {
        let secrets = keys_dir().join("secrets");
        let config = dir.join(format!("{role}.yaml"));
        let text = format!(
            "endpoint: {endpoint}\nca: {0}/device-ca.crt\ncert: {0}/{role}.crt\nkey: {0}/{role}.key\n",
            secrets.display()
        );
        std::fs::write(&config, text).unwrap();
        Ctl {
            config,
            endpoint: endpoint.to_string(),
        }
    }

    /// The command line, for callers that spawn it themselves.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(cairnctl());
        cmd.arg("--config")
            .arg(&self.config)
            .args(["--endpoint", &self.endpoint])
            .args(args);
        cmd
    }

    /// Runs a command with `stdin` (or none); returns (success, stdout, stderr).
    pub fn run_with(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut child = self
            .command(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(text) = stdin {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        eprintln!("cairnctl {}: {stdout}{stderr}", args.join(" "));
        (out.status.success(), stdout, stderr)
    }

    /// Runs a command; returns (success, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        self.run_with(args, None)
    }

    /// A command's `--json` output, which must succeed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (ok, stdout, stderr) = self.run(&all);
        assert!(ok, "cairnctl {args:?} failed: {stderr}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }

    /// A command's stdout, retried for 90 s while the API comes up after a boot.
    pub fn until_ok(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (ok, stdout, stderr) = self.run(args);
            if ok {
                return stdout;
            }
            assert!(Instant::now() < deadline, "cairnctl {args:?}: {stderr}");
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// `cairnctl --json health`, asked again while the API comes up after a boot: the text and
    /// the report, once the exit status is checked against it (0 healthy, 2 not).
    pub fn health(&self) -> (String, serde_json::Value) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = self.command(&["--json", "health"]).output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            if let Ok(report) = serde_json::from_str::<serde_json::Value>(&stdout) {
                let want = if report["healthy"] == true { 0 } else { 2 };
                assert_eq!(out.status.code(), Some(want), "exit status of {stdout}");
                return (stdout, report);
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(Instant::now() < deadline, "cairnctl health: {stderr}");
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// `cairnctl --json events -n <tail>` on a new connection: the events it prints until
    /// `enough` holds for them, after which the follower is stopped by its pid. Started again
    /// while the API comes up after a boot; panics with what it saw after `timeout`.
    pub fn events_until(
        &self,
        tail: u32,
        timeout: Duration,
        enough: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        use std::io::{BufRead, BufReader};
        let deadline = Instant::now() + timeout;
        let tail = tail.to_string();
        loop {
            let mut child = self
                .command(&["--json", "events", "-n", &tail])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let out = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            let mut seen = Vec::new();
            let done = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) => {
                        seen.push(
                            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")),
                        );
                        if enough(&seen) {
                            break true;
                        }
                    }
                    // Timed out, or cairnctl ended (the API not up yet).
                    Err(_) => break false,
                }
            };
            // By pid: the follower runs until stopped.
            let _ = child.kill();
            child.wait().unwrap();
            for e in &seen {
                eprintln!("event: {e}");
            }
            if done {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "cairnctl events: not what was expected within {timeout:?}"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// The running (version, slot), retried while the API comes up after a boot.
    pub fn version(&self) -> (String, String) {
        let v: serde_json::Value =
            serde_json::from_str(&self.until_ok(&["--json", "version"])).unwrap();
        (
            v["os_version"].as_str().unwrap().to_string(),
            v["running_slot"].as_str().unwrap().to_string(),
        )
    }
}
