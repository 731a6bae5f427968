//! The remote commands: cairnctl as a client of a device's management API (gRPC
//! `cairn.v1.DeviceService` over mutual TLS).
//!
//! Each command is one call. Everything that can be checked here is checked before
//! connecting (the config file, the bundle file, the machine config), then [`Session`]
//! connects and the answer is printed by [`show`], as text or with `--json` as JSON. Whatever
//! fails comes back as one line that says what to do: [`explain`] turns refused connections
//! into lines about certificates and CAs, and the device's own errors already are such lines.
//!
//! `unlock` is the one command that does not check the device's certificate against `ca:`: a
//! device in maintenance mode has only a self-signed one, and is known by its key's
//! fingerprint instead ([`unverified`]).

mod config;
mod connect;
mod explain;
mod kubeconfig;
mod recovery;
mod show;
mod unverified;
mod upgrade;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use cairn_api::proto::{self, logs_request};
use clap::{Args, Subcommand};

use cairn_pki::Fingerprint;
use connect::{ServerIdentity, Session};
use recovery::RecoveryKey;

/// Options of every command (they matter to the remote ones).
#[derive(Args)]
pub struct Global {
    /// The device's API as host:port, instead of `endpoint:` in the config.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub endpoint: Option<String>,
    /// The cairnctl config [default: $CAIRNCTL_CONFIG, else ./cairnctl.yaml, else
    /// ~/.config/cairn/cairnctl.yaml].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the answer as JSON (streams: one object per line).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Show the device's release, board and running slot.
    Version,
    /// Show the device's health checks and their last results. Exits with status 2 when the
    /// device is not healthy, 1 when it could not be asked, 0 when it is healthy.
    Health,
    /// Show both system slots and the last update's outcome.
    Slots,
    /// List the supervised services.
    Services,
    /// Restart a supervised service.
    Restart { service: String },
    /// Print a service's log, or the kernel's (`kernel`).
    Logs {
        /// Keep printing new lines until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// How many of the last lines to print first.
        #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 100)]
        lines: u32,
        /// A service name (see `cairnctl services`), or `kernel`.
        source: String,
    },
    /// Install a signed bundle into the other slot and reboot into it.
    Upgrade {
        /// A bundle file to upload, an https:// URL the device fetches, or an OCI reference
        /// (oci://registry/repo:tag or @sha256:…) the device pulls.
        bundle: String,
        /// Install it as a trial for the next reboot, without rebooting now.
        #[arg(long)]
        no_reboot: bool,
    },
    /// Give up the running slot and reboot into the other, committed one.
    Rollback,
    /// Reboot the device into the same slot.
    Reboot,
    /// Power the device off (someone has to be there to power it on again).
    Shutdown,
    /// Check a machine config here, then apply it on the device.
    ApplyConfig {
        /// The machine config (YAML); see `cairnctl config schema`.
        file: PathBuf,
        /// Only show what would change.
        #[arg(long, conflicts_with = "try_for")]
        dry_run: bool,
        /// Apply it, and go back to the previous config unless `cairnctl confirm-config`
        /// follows within this time (e.g. 90s, 2m, 1h; at most 1h).
        #[arg(long = "try", value_name = "DURATION", value_parser = parse_duration)]
        try_for: Option<u32>,
    },
    /// Keep a config applied with `apply-config --try`.
    ConfirmConfig {
        /// The generation `apply-config --try` printed.
        generation: u64,
    },
    /// Print the device's events as they happen, until interrupted.
    ///
    /// Boots, health changes, updates, rollbacks, config changes and services starting and
    /// stopping; the most recent ones first.
    Events {
        /// How many recent events to print first.
        #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 20)]
        lines: u32,
    },
    /// Print the recovery key of the device's encrypted disks, which it gives out only once.
    ///
    /// The device forgets the key when it answers: store it somewhere safe. `cairnctl unlock`
    /// needs it when the device's TPM refuses to unlock the disks.
    RecoveryKey,
    /// Print k3s's admin kubeconfig (admin role), its server set to the device's address.
    ///
    /// It holds the cluster admin's key: with --out it is written with mode 0600.
    Kubeconfig {
        /// Write it to this file (mode 0600) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Unlock a device in maintenance mode with its disks' recovery key.
    ///
    /// The key is read from --recovery-key-file, or else as one line from standard input;
    /// never from the command line, where other users can read it. A device in maintenance
    /// mode has a self-signed certificate: the key is sent only to a device whose certificate
    /// chains to `ca:`, or whose key is the one --expect-fingerprint names (the fingerprint on
    /// the device's console).
    Unlock {
        /// A file holding the recovery key (one line) [default: standard input].
        #[arg(long, value_name = "FILE")]
        recovery_key_file: Option<PathBuf>,
        /// The fingerprint the device's console shows (40 hex digits): refuse any other key.
        #[arg(long, value_name = "FP", value_parser = recovery::parse_fingerprint)]
        expect_fingerprint: Option<Fingerprint>,
        /// Send the key to a device nobody vouched for, with only its fingerprint printed
        /// afterwards: whoever answers at the endpoint gets the recovery key.
        #[arg(long, conflicts_with = "expect_fingerprint")]
        send_key_to_unverified_device: bool,
    },
}

/// `90s`, `2m`, `1h` or plain seconds, as whole seconds from 1 s to 1 h (the device's range).
fn parse_duration(s: &str) -> Result<u32, String> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("`{s}` is not a duration like 90s, 2m or 1h")),
    };
    let secs = number
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("`{s}` is not a duration like 90s, 2m or 1h"))?;
    if !(1..=3600).contains(&secs) {
        return Err(format!("`{s}` is out of range: a try lasts 1s to 1h"));
    }
    Ok(secs)
}

/// `health` found the device unhealthy: already reported, and the exit status says so.
#[derive(Debug)]
pub struct Unhealthy;

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the device is not healthy")
    }
}

impl std::error::Error for Unhealthy {}

/// Runs a remote command.
pub fn run(global: &Global, command: Command) -> anyhow::Result<()> {
    // What can fail without the device fails before connecting: the inputs, then the config.
    let prepared = match command {
        Command::Upgrade { bundle, no_reboot } => Prepared::Upgrade {
            source: upgrade::Source::open(&bundle)?,
            reboot: !no_reboot,
        },
        Command::ApplyConfig {
            file,
            dry_run,
            try_for,
        } => Prepared::ApplyConfig {
            text: crate::read_machine_config(&file)?.0,
            file,
            dry_run,
            try_for: try_for.unwrap_or(0),
        },
        Command::Unlock {
            recovery_key_file,
            expect_fingerprint,
            send_key_to_unverified_device,
        } => Prepared::Unlock {
            key: RecoveryKey::read(recovery_key_file.as_deref())?,
            expect: expect_fingerprint,
            risk_unverified: send_key_to_unverified_device,
        },
        other => Prepared::Call(other),
    };
    let identity = match &prepared {
        Prepared::Unlock {
            expect,
            risk_unverified,
            ..
        } => ServerIdentity::AnyKey {
            expect: *expect,
            risk_unverified: *risk_unverified,
        },
        _ => ServerIdentity::Ca,
    };
    let config = config::find(global.config.as_deref())?;
    let target = config::Target::load(&config, global.endpoint.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let session = Session::connect(target, identity).await?;
        prepared.run(&session, global.json).await
    })
}

/// A command with its local inputs read and checked.
enum Prepared {
    Call(Command),
    Upgrade {
        source: upgrade::Source,
        reboot: bool,
    },
    ApplyConfig {
        file: PathBuf,
        text: String,
        dry_run: bool,
        try_for: u32,
    },
    Unlock {
        key: RecoveryKey,
        expect: Option<Fingerprint>,
        risk_unverified: bool,
    },
}

/// Prints a unary answer: pretty JSON, or the text.
fn print(json: bool, value: impl FnOnce() -> serde_json::Value, text: impl FnOnce() -> String) {
    if json {
        println!("{:#}", value());
    } else {
        print!("{}", text());
    }
}

/// Prints one line of a stream; `false` once stdout is gone (`| head`), which ends the stream.
fn emit(line: &str) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

impl Prepared {
    async fn run(self, s: &Session, json: bool) -> anyhow::Result<()> {
        let mut c = s.client();
        match self {
            Prepared::Upgrade { source, reboot } => upgrade::run(s, source, reboot, json).await,
            Prepared::ApplyConfig {
                file,
                text,
                dry_run,
                try_for,
            } => {
                let request = proto::ApplyConfigRequest {
                    config: text,
                    dry_run,
                    try_timeout_s: try_for,
                };
                let r = s.call("apply-config", c.apply_config(request)).await?;
                print(
                    json,
                    || show::apply_config_json(&r),
                    || applied_text(&file, &r, dry_run, try_for),
                );
                Ok(())
            }
            Prepared::Call(Command::Version) => {
                let v = s
                    .call("version", c.version(proto::VersionRequest {}))
                    .await?;
                print(json, || show::version_json(&v), || show::version_text(&v));
                Ok(())
            }
            Prepared::Call(Command::Health) => {
                let h = s.call("health", c.health(proto::HealthRequest {})).await?;
                print(json, || show::health_json(&h), || show::health_text(&h));
                if h.healthy {
                    Ok(())
                } else {
                    Err(Unhealthy.into())
                }
            }
            Prepared::Call(Command::Slots) => {
                let r = s
                    .call("slots", c.slot_status(proto::SlotStatusRequest {}))
                    .await?;
                print(json, || show::slots_json(&r), || show::slots_text(&r));
                Ok(())
            }
            Prepared::Call(Command::Services) => {
                let r = s
                    .call("services", c.service_list(proto::ServiceListRequest {}))
                    .await?;
                print(json, || show::services_json(&r), || show::services_text(&r));
                Ok(())
            }
            Prepared::Call(Command::Restart { service }) => {
                let request = proto::ServiceRestartRequest {
                    name: service.clone(),
                };
                let r = s.call("restart", c.service_restart(request)).await?;
                print(
                    json,
                    || serde_json::json!({ "pid": r.pid }),
                    || match r.pid {
                        0 => format!("restarted {service}\n"),
                        pid => format!("restarted {service} (pid {pid})\n"),
                    },
                );
                Ok(())
            }
            Prepared::Call(Command::Logs {
                follow,
                lines,
                source,
            }) => {
                let source = if source == "kernel" {
                    logs_request::Source::Kernel(proto::KernelLog {})
                } else {
                    logs_request::Source::Service(source)
                };
                let request = proto::LogsRequest {
                    source: Some(source),
                    tail: lines,
                    follow,
                };
                let mut stream = s.call("logs", c.logs(request)).await?;
                loop {
                    let line = match stream.message().await {
                        Ok(Some(line)) => line,
                        Ok(None) => return Ok(()),
                        Err(status) => return Err(s.explain("logs", &status)),
                    };
                    if line.dropped > 0 && !json {
                        eprintln!(
                            "cairnctl: {} lines lost here (the device's buffer wrapped)",
                            line.dropped
                        );
                    }
                    let text = if json {
                        show::log_json(&line).to_string()
                    } else {
                        show::log_text(&line)
                    };
                    if !emit(&text)? {
                        return Ok(());
                    }
                }
            }
            Prepared::Unlock { key, .. } => {
                let request = proto::UnlockRequest {
                    recovery_key: key.expose().to_string(),
                };
                let r = s.call("unlock", c.unlock(request)).await?;
                print(
                    json,
                    || serde_json::json!({ "message": r.message }),
                    || format!("{}\n", r.message),
                );
                Ok(())
            }
            Prepared::Call(
                Command::Upgrade { .. } | Command::ApplyConfig { .. } | Command::Unlock { .. },
            ) => {
                unreachable!("prepared before connecting")
            }
            Prepared::Call(Command::Kubeconfig { out }) => {
                let r = s
                    .call("kubeconfig", c.kubeconfig(proto::KubeconfigRequest {}))
                    .await?;
                let text = kubeconfig::for_host(&r.kubeconfig, s.host())?;
                match out {
                    Some(path) => {
                        kubeconfig::write(&path, &text)?;
                        print(
                            json,
                            || serde_json::json!({ "written": path }),
                            || format!("kubeconfig written to {} (mode 0600)\n", path.display()),
                        );
                    }
                    None if json => println!("{:#}", serde_json::json!({ "kubeconfig": text })),
                    None => print!("{text}"),
                }
                Ok(())
            }
            Prepared::Call(Command::RecoveryKey) => {
                let r = s
                    .call("recovery-key", c.recovery_key(proto::RecoveryKeyRequest {}))
                    .await?;
                recovery::print_key(&r.recovery_key, json)
            }
            Prepared::Call(Command::Rollback) => {
                let r = s
                    .call("rollback", c.rollback(proto::RollbackRequest {}))
                    .await?;
                print(
                    json,
                    || serde_json::json!({ "target": show::slot(r.target) }),
                    || {
                        format!(
                            "rolling back: rebooting into slot {}\n",
                            show::slot(r.target)
                        )
                    },
                );
                Ok(())
            }
            Prepared::Call(Command::Reboot) => {
                s.call("reboot", c.reboot(proto::RebootRequest {})).await?;
                print(json, || serde_json::json!({}), || "rebooting\n".into());
                Ok(())
            }
            Prepared::Call(Command::Shutdown) => {
                s.call("shutdown", c.shutdown(proto::ShutdownRequest {}))
                    .await?;
                print(json, || serde_json::json!({}), || "powering off\n".into());
                Ok(())
            }
            Prepared::Call(Command::ConfirmConfig { generation }) => {
                let request = proto::ConfirmConfigRequest { generation };
                s.call("confirm-config", c.confirm_config(request)).await?;
                print(
                    json,
                    || serde_json::json!({}),
                    || format!("confirmed generation {generation}: it stays\n"),
                );
                Ok(())
            }
            Prepared::Call(Command::Events { lines }) => {
                let request = proto::EventsRequest { tail: lines };
                let mut stream = s.call("events", c.events(request)).await?;
                let mut last_seq = None;
                loop {
                    let event = match stream.message().await {
                        Ok(Some(event)) => event,
                        Ok(None) => return Ok(()),
                        Err(status) => return Err(s.explain("events", &status)),
                    };
                    if let Some(last) = last_seq.filter(|&l: &u64| event.seq > l + 1) {
                        if !json {
                            eprintln!(
                                "cairnctl: {} events lost here (the device's buffer wrapped)",
                                event.seq - last - 1
                            );
                        }
                    }
                    last_seq = Some(event.seq);
                    let text = if json {
                        show::event_json(&event).to_string()
                    } else {
                        show::event_text(&event)
                    };
                    if !emit(&text)? {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// What `apply-config` prints.
fn applied_text(
    file: &Path,
    r: &proto::ApplyConfigResponse,
    dry_run: bool,
    try_for: u32,
) -> String {
    let mut out = String::new();
    let file = file.display();
    if dry_run && r.changes.is_empty() {
        out.push_str(&format!(
            "{file}: no changes: it is the config in force (generation {})\n",
            r.generation
        ));
    } else if dry_run {
        out.push_str(&format!(
            "{file}: would change (nothing applied; generation {} is in force):\n",
            r.generation
        ));
    } else if try_for > 0 {
        out.push_str(&format!(
            "applied {file} as generation {} on trial: the device goes back to the previous \
             config at {} unless you run `cairnctl confirm-config {}`\n",
            r.generation,
            show::time_ms(r.revert_unix_ms),
            r.generation
        ));
    } else {
        out.push_str(&format!("applied {file} as generation {}\n", r.generation));
    }
    for change in &r.changes {
        out.push_str(&format!("  {change}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("2m"), Ok(120));
        assert_eq!(parse_duration("1h"), Ok(3600));
        assert_eq!(parse_duration("45"), Ok(45));
        for bad in [
            "",
            "m",
            "2d",
            "1.5m",
            "-1s",
            "2 m",
            "0s",
            "61m",
            "99999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
