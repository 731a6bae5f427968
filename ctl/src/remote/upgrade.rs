//! `cairnctl upgrade`: a bundle file streamed to the device in chunks, or an https:// URL the
//! device fetches, with the device's progress shown as it comes.
//!
//! The file is read on a blocking thread into a channel a few chunks deep, so memory stays at a
//! few chunks whatever the bundle's size and the upload goes as fast as the device takes it
//! (HTTP/2 flow control holds the reader back). Progress is a bar on a terminal and plain lines
//! on stderr otherwise (and with `--json`), so logs of scripted upgrades stay readable.

use std::io::{IsTerminal as _, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use cairn_api::proto::{self, upgrade_request, upgrade_response, upgrade_start};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::connect::Session;
use super::show;

/// Bytes per upload message: well under the device's 1 MiB chunk limit, and large enough that
/// message framing costs nothing.
const CHUNK: usize = 256 * 1024;
/// Chunks read ahead of the network.
const READ_AHEAD: usize = 4;

/// Where the bundle comes from; opened before connecting, so a wrong path fails at once.
pub enum Source {
    File {
        path: PathBuf,
        file: std::fs::File,
        size: u64,
    },
    Url(String),
}

impl Source {
    pub fn open(bundle: &str) -> anyhow::Result<Source> {
        if bundle.starts_with("https://") {
            return Ok(Source::Url(bundle.to_string()));
        }
        if bundle.starts_with("oci://") {
            cairn_api::registry::Reference::parse(bundle)?;
            return Ok(Source::Url(bundle.to_string()));
        }
        anyhow::ensure!(
            !bundle.contains("://"),
            "{bundle}: the device fetches bundles over https:// or from an OCI registry \
             (oci://registry/repo:tag) only; give one of those or a bundle file"
        );
        let path = PathBuf::from(bundle);
        let file =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let size = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        anyhow::ensure!(size > 0, "{} is empty, not a bundle", path.display());
        Ok(Source::File { path, file, size })
    }
}

/// Runs the upgrade call and prints its outcome.
pub async fn run(
    session: &Session,
    source: Source,
    reboot: bool,
    json: bool,
) -> anyhow::Result<()> {
    let (size, start_source) = match &source {
        Source::File { size, .. } => (
            Some(*size),
            upgrade_start::Source::Upload(proto::Upload { size: *size }),
        ),
        Source::Url(url) => (
            None,
            upgrade_start::Source::Fetch(proto::Fetch { url: url.clone() }),
        ),
    };
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let start = proto::UpgradeRequest {
        message: Some(upgrade_request::Message::Start(proto::UpgradeStart {
            source: Some(start_source),
            reboot,
        })),
    };
    tx.try_send(start)
        .expect("the channel has room for the first message");
    let mut client = session.client();
    // The device answers once it has the UpgradeStart, so a refusal (the role, an upgrade
    // already running) comes before any of the upload is sent.
    let mut answers = session
        .call("upgrade", client.upgrade(ReceiverStream::new(rx)))
        .await?;

    let progress = Arc::new(Progress::new(size, json));
    // A failed read ends the upload early; the device then complains about a short upload,
    // but the read error is what the operator needs to hear.
    let read_failure = Arc::new(Mutex::new(None::<String>));
    match source {
        Source::File { path, file, size } => {
            let (progress, read_failure) = (progress.clone(), read_failure.clone());
            tokio::task::spawn_blocking(move || {
                if let Err(why) = pump(file, size, &tx, &progress) {
                    *read_failure.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("reading {}: {why}", path.display()));
                }
            });
        }
        // A fetch sends nothing after its start: close our side.
        Source::Url(_) => drop(tx),
    }
    let failed = |e: anyhow::Error| {
        progress.abandon();
        match read_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(why) => anyhow::anyhow!(why),
            None => e,
        }
    };
    let mut done = None;
    loop {
        match answers.message().await {
            Ok(Some(answer)) => match answer.event {
                Some(upgrade_response::Event::Progress(p)) => progress.device(&p),
                Some(upgrade_response::Event::Done(d)) => done = Some(d),
                None => {}
            },
            Ok(None) => break,
            Err(status) => return Err(failed(session.explain("upgrade", &status))),
        }
    }
    progress.finish();
    let done = done.ok_or_else(|| {
        anyhow::anyhow!(
            "upgrade: the device ended the call without an outcome; see `cairnctl slots` and \
             `cairnctl events`"
        )
    })?;
    if json {
        println!("{:#}", show::upgrade_done_json(&done));
        return Ok(());
    }
    let then = if done.rebooting {
        "the device is rebooting into it now".to_string()
    } else {
        "it boots as a trial at the next reboot (`cairnctl reboot`)".to_string()
    };
    println!(
        "installed {} (security version {}) into slot {}; {then}",
        done.os_version,
        done.security_version,
        show::slot(done.slot)
    );
    Ok(())
}

/// Reads `size` bytes of `file` into upload messages. Stops quietly when the call has ended
/// (its status says why).
fn pump(
    file: std::fs::File,
    size: u64,
    tx: &mpsc::Sender<proto::UpgradeRequest>,
    progress: &Progress,
) -> Result<(), String> {
    // Never more than announced, even if the file grows meanwhile.
    let mut reader = file.take(size);
    let mut sent = 0u64;
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let n = fill(&mut reader, &mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        chunk.truncate(n);
        let message = proto::UpgradeRequest {
            message: Some(upgrade_request::Message::Chunk(chunk)),
        };
        if tx.blocking_send(message).is_err() {
            return Ok(());
        }
        sent += n as u64;
        progress.uploaded(sent);
    }
    if sent < size {
        return Err(format!(
            "the file shrank while uploading: {sent} of {size} bytes"
        ));
    }
    Ok(())
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// What the operator sees while the upgrade runs.
struct Progress {
    /// A bar on a terminal; `None` prints lines.
    bar: Option<ProgressBar>,
    /// The upload's size; `None` for a URL.
    size: Option<u64>,
    shown: Mutex<Shown>,
}

/// The stage on screen, and for lines the last tenth printed.
#[derive(Default)]
struct Shown {
    stage: String,
    tenth: Option<u64>,
}

const BYTES: &str = "{msg:>16} [{bar:30}] {bytes}/{total_bytes}  {binary_bytes_per_sec}  eta {eta}";
const BYTES_NO_TOTAL: &str = "{msg:>16} {spinner} {bytes}  {binary_bytes_per_sec}";
const SPINNER: &str = "{msg:>16} {spinner}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("the templates are valid")
        .progress_chars("=> ")
}

impl Progress {
    fn new(size: Option<u64>, json: bool) -> Progress {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = match size {
                Some(n) => ProgressBar::new(n).with_style(style(BYTES)),
                None => ProgressBar::no_length().with_style(style(BYTES_NO_TOTAL)),
            };
            bar.set_message(if size.is_some() { "upload" } else { "download" });
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            size,
            shown: Mutex::new(Shown::default()),
        }
    }

    /// Bytes of the file handed to the network so far.
    fn uploaded(&self, bytes: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(bytes),
            None => self.line("upload", bytes, self.size),
        }
    }

    /// A progress message from the device.
    fn device(&self, p: &proto::UpgradeProgress) {
        let phase = proto::UpgradePhase::try_from(p.phase).ok();
        let stage = match phase {
            Some(proto::UpgradePhase::Receiving) if self.size.is_some() => "upload".to_string(),
            Some(proto::UpgradePhase::Receiving) => "download".to_string(),
            Some(proto::UpgradePhase::Writing) if !p.payload.is_empty() => {
                format!("write {}", p.payload)
            }
            _ => show::upgrade_phase(p.phase),
        };
        let (done, total) = match phase {
            Some(proto::UpgradePhase::Receiving) => (p.received, self.size),
            Some(proto::UpgradePhase::Writing) if p.total > 0 => (p.written, Some(p.total)),
            _ => (0, None),
        };
        if stage == "upload" {
            // The reader reports the upload, and knows first.
            return;
        }
        let Some(bar) = &self.bar else {
            return self.line(&stage, done, total);
        };
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        if shown.stage != stage {
            bar.reset();
            bar.set_style(style(match (phase, total) {
                (_, Some(_)) => BYTES,
                (Some(proto::UpgradePhase::Receiving), None) => BYTES_NO_TOTAL,
                _ => SPINNER,
            }));
            bar.set_message(stage.clone());
            shown.stage = stage;
        }
        if let Some(total) = total {
            bar.set_length(total);
        }
        bar.set_position(done);
    }

    /// A plain line when the stage changes, and at each tenth of a known total.
    fn line(&self, stage: &str, done: u64, total: Option<u64>) {
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        let changed = shown.stage != stage;
        if changed {
            shown.stage = stage.to_string();
            shown.tenth = None;
        }
        match total {
            Some(total) if total > 0 => {
                let tenth = done.min(total) * 10 / total;
                if shown.tenth.is_some_and(|t| t >= tenth) {
                    return;
                }
                shown.tenth = Some(tenth);
                eprintln!(
                    "upgrade: {stage} {} of {} ({}%)",
                    HumanBytes(done),
                    HumanBytes(total),
                    done.min(total) * 100 / total
                );
            }
            _ if changed => eprintln!("upgrade: {stage}"),
            _ => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn abandon(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        for t in [BYTES, BYTES_NO_TOTAL, SPINNER] {
            assert!(ProgressStyle::with_template(t).is_ok(), "{t}");
        }
    }

    #[test]
    fn fill_reads_across_short_reads() {
        // A reader that hands out 3 bytes at a time.
        struct Trickle(Vec<u8>);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(3).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0.drain(..n);
                Ok(n)
            }
        }
        let mut r = Trickle((0..10).collect());
        let mut buf = [0u8; 8];
        assert_eq!(fill(&mut r, &mut buf).unwrap(), 8);
        assert_eq!(buf, [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(fill(&mut r, &mut buf).unwrap(), 2);
        assert_eq!(fill(&mut r, &mut buf).unwrap(), 0);
    }
}
