//! The gRPC handlers: check what the .proto promises about a request, then run the device's
//! method on a blocking thread and carry its answer back.
//!
//! Roles and deadlines are not here but in [`crate::policy`], which every request passes first.
//! What is here: one upgrade (or rollback) at a time, one unlock at a time, a bound on open
//! streams, the upload pump that turns the client's chunks into the [`Upload`] reader the
//! installer reads, and keeping the recovery key out of the log.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::device::{Device, DeviceError, Sink, UpgradeSource, Upload};
use crate::policy;
use crate::proto::device_service_server::DeviceService;
use crate::proto::{self, logs_request, upgrade_request, upgrade_response, upgrade_start};
use crate::{Limits, Log};

/// Longest try mode of ApplyConfig, as the .proto documents.
const MAX_TRY_S: u32 = 3600;

pub(crate) struct Api {
    device: Arc<dyn Device>,
    limits: Limits,
    log: Log,
    /// Held by a running upgrade or rollback: both rewrite which slot boots.
    slots: Arc<Semaphore>,
    /// One permit per open Logs or Events stream.
    streams: Arc<Semaphore>,
    /// Held by a running Unlock: opening a LUKS keyslot costs the KDF's memory and seconds.
    unlocking: Arc<Semaphore>,
}

impl Api {
    pub(crate) fn new(device: Arc<dyn Device>, limits: Limits, log: Log) -> Api {
        Api {
            device,
            streams: Arc::new(Semaphore::new(limits.max_streams)),
            slots: Arc::new(Semaphore::new(1)),
            unlocking: Arc::new(Semaphore::new(1)),
            limits,
            log,
        }
    }

    /// Runs a device method on the blocking pool.
    async fn device<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Device) -> Result<T, DeviceError> + Send + 'static,
    {
        let device = self.device.clone();
        match tokio::task::spawn_blocking(move || f(&*device)).await {
            Ok(result) => result.map_err(Status::from),
            Err(e) => Err(Status::internal(format!("the device failed the call: {e}"))),
        }
    }

    fn slots_free(&self, what: &str) -> Result<OwnedSemaphorePermit, Status> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            Status::failed_precondition(format!(
                "an upgrade or rollback is already running; {what} can start when it has finished"
            ))
        })
    }

    /// Starts a server stream: the device method runs on a blocking thread and pushes into a
    /// bounded channel that the response drains.
    fn stream<Q, T, F>(
        &self,
        request: Q,
        produce: F,
    ) -> Result<ReceiverStream<Result<T, Status>>, Status>
    where
        Q: Send + 'static,
        T: Send + 'static,
        F: FnOnce(&dyn Device, &Q, &Sink<T>) -> Result<(), DeviceError> + Send + 'static,
    {
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} log and event streams are open on the device already; close one first",
                self.limits.max_streams
            ))
        })?;
        let (tx, rx) = mpsc::channel(self.limits.stream_buffer);
        let device = self.device.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let sink = Sink::new(tx);
            if let Err(e) = produce(&*device, &request, &sink) {
                sink.fail(e.into());
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    fn check_name(&self, what: &str, name: &str) -> Result<(), Status> {
        if name.is_empty() {
            return Err(Status::invalid_argument(format!("the {what} is empty")));
        }
        if name.len() > self.limits.max_name {
            return Err(Status::invalid_argument(format!(
                "the {what} is {} bytes long; the device takes at most {}",
                name.len(),
                self.limits.max_name
            )));
        }
        Ok(())
    }

    /// The recovery key's bounds; the messages never quote it.
    fn check_recovery_key(&self, key: &str) -> Result<(), Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument(
                "the recovery key is empty: send the key RecoveryKey gave, or the console showed",
            ));
        }
        if key.len() > self.limits.max_recovery_key {
            return Err(Status::invalid_argument(format!(
                "the recovery key is {} bytes long; a recovery key is at most {} (systemd's are 71)",
                key.len(),
                self.limits.max_recovery_key
            )));
        }
        Ok(())
    }
}

/// `text` with every copy of the recovery key blanked out: what the device says about an
/// unlock goes to the log, and a careless message must not put the key there. Keys shorter
/// than a group of systemd's format are not blanked, since they would garble the message and
/// give little away.
fn without_key(text: &str, key: &str) -> String {
    if key.len() < 8 {
        return text.to_string();
    }
    text.replace(key, "(the recovery key)")
}

#[tonic::async_trait]
impl DeviceService for Api {
    async fn version(
        &self,
        _: Request<proto::VersionRequest>,
    ) -> Result<Response<proto::VersionResponse>, Status> {
        self.device(|d| d.version()).await.map(Response::new)
    }

    async fn health(
        &self,
        _: Request<proto::HealthRequest>,
    ) -> Result<Response<proto::HealthResponse>, Status> {
        self.device(|d| d.health()).await.map(Response::new)
    }

    async fn slot_status(
        &self,
        _: Request<proto::SlotStatusRequest>,
    ) -> Result<Response<proto::SlotStatusResponse>, Status> {
        self.device(|d| d.slot_status()).await.map(Response::new)
    }

    async fn service_list(
        &self,
        _: Request<proto::ServiceListRequest>,
    ) -> Result<Response<proto::ServiceListResponse>, Status> {
        self.device(|d| d.service_list()).await.map(Response::new)
    }

    async fn service_restart(
        &self,
        request: Request<proto::ServiceRestartRequest>,
    ) -> Result<Response<proto::ServiceRestartResponse>, Status> {
        let name = request.into_inner().name;
        self.check_name("service name", &name)?;
        self.device(move |d| d.service_restart(&name))
            .await
            .map(Response::new)
    }

    type LogsStream = ReceiverStream<Result<proto::LogsResponse, Status>>;

    async fn logs(
        &self,
        request: Request<proto::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let request = request.into_inner();
        match &request.source {
            None => {
                return Err(Status::invalid_argument(
                    "a LogsRequest needs a source: a service name or the kernel log",
                ))
            }
            Some(logs_request::Source::Service(name)) => self.check_name("service name", name)?,
            Some(logs_request::Source::Kernel(_)) => {}
        }
        self.stream(request, |d, r, sink| d.logs(r, sink))
            .map(Response::new)
    }

    type UpgradeStream = ReceiverStream<Result<proto::UpgradeResponse, Status>>;

    async fn upgrade(
        &self,
        request: Request<Streaming<proto::UpgradeRequest>>,
    ) -> Result<Response<Self::UpgradeStream>, Status> {
        let busy = self.slots_free("this upgrade")?;
        let mut inbound = request.into_inner();
        let start = match inbound.message().await? {
            Some(proto::UpgradeRequest {
                message: Some(upgrade_request::Message::Start(start)),
            }) => start,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of an upgrade must be an UpgradeStart",
                ))
            }
            None => {
                return Err(Status::invalid_argument(
                    "the upgrade call ended before its UpgradeStart",
                ))
            }
        };
        let received = Arc::new(AtomicU64::new(0));
        let pump_failure = Arc::new(Mutex::new(None));
        let source = match start.source {
            Some(upgrade_start::Source::Upload(proto::Upload { size })) => {
                if size == 0 || size > self.limits.max_upload {
                    return Err(Status::invalid_argument(format!(
                        "an upload of {size} bytes cannot be a bundle; the device takes 1 to {} bytes",
                        self.limits.max_upload
                    )));
                }
                let (tx, rx) = mpsc::channel(self.limits.upload_buffer);
                let pump = Pump {
                    inbound,
                    tx,
                    size,
                    received: received.clone(),
                    failure: pump_failure.clone(),
                    limits: self.limits.clone(),
                };
                tokio::spawn(pump.run());
                UpgradeSource::Upload(Upload::new(size, rx))
            }
            Some(upgrade_start::Source::Fetch(proto::Fetch { url })) => {
                self.check_name("bundle URL", &url)?;
                if url.starts_with("oci://") {
                    let reference = crate::registry::Reference::parse(&url)
                        .map_err(|e| Status::invalid_argument(e.to_string()))?;
                    UpgradeSource::Registry { reference }
                } else if !url.starts_with("https://") {
                    return Err(Status::invalid_argument(format!(
                        "the bundle URL {url:?} is not https:// or oci://; the device fetches bundles over HTTPS only"
                    )));
                } else {
                    UpgradeSource::Fetch { url }
                }
            }
            None => {
                return Err(Status::invalid_argument(
                    "the UpgradeStart needs a source: an upload or a URL",
                ))
            }
        };

        let (tx, rx) = mpsc::channel(self.limits.stream_buffer);
        let device = self.device.clone();
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            let _busy = busy;
            let mut progress = |mut p: proto::UpgradeProgress| {
                p.received = p.received.max(received.load(Ordering::Relaxed));
                // Progress is best effort: a client that reads slowly sees fewer updates, and
                // the installer never waits for one.
                let _ = tx.try_send(Ok(proto::UpgradeResponse {
                    event: Some(upgrade_response::Event::Progress(p)),
                }));
            };
            let last = match device.upgrade(source, start.reboot, &mut progress) {
                Ok(done) => Ok(proto::UpgradeResponse {
                    event: Some(upgrade_response::Event::Done(done)),
                }),
                Err(e) => {
                    // When the upload broke, that is the cause the client needs to hear, not
                    // the installer's read error that followed from it.
                    let cause = pump_failure.lock().ok().and_then(|mut f| f.take());
                    let status = cause.unwrap_or_else(|| Status::from(e));
                    log(&format!("upgrade failed: {}", status.message()));
                    Err(status)
                }
            };
            let _ = tx.blocking_send(last);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn rollback(
        &self,
        _: Request<proto::RollbackRequest>,
    ) -> Result<Response<proto::RollbackResponse>, Status> {
        let busy = self.slots_free("a rollback")?;
        self.device(move |d| {
            let _busy = busy;
            d.rollback()
        })
        .await
        .map(Response::new)
    }

    async fn reboot(
        &self,
        _: Request<proto::RebootRequest>,
    ) -> Result<Response<proto::RebootResponse>, Status> {
        self.device(|d| d.reboot()).await?;
        Ok(Response::new(proto::RebootResponse {}))
    }

    async fn shutdown(
        &self,
        _: Request<proto::ShutdownRequest>,
    ) -> Result<Response<proto::ShutdownResponse>, Status> {
        self.device(|d| d.shutdown()).await?;
        Ok(Response::new(proto::ShutdownResponse {}))
    }

    async fn apply_config(
        &self,
        request: Request<proto::ApplyConfigRequest>,
    ) -> Result<Response<proto::ApplyConfigResponse>, Status> {
        let request = request.into_inner();
        if request.config.len() > self.limits.max_config {
            return Err(Status::invalid_argument(format!(
                "the config is {} bytes; the device takes at most {}",
                request.config.len(),
                self.limits.max_config
            )));
        }
        if request.dry_run && request.try_timeout_s != 0 {
            return Err(Status::invalid_argument(
                "a dry run applies nothing, so it cannot be tried: set dry_run or try_timeout_s, not both",
            ));
        }
        if request.try_timeout_s > MAX_TRY_S {
            return Err(Status::invalid_argument(format!(
                "try_timeout_s {} is more than {MAX_TRY_S}",
                request.try_timeout_s
            )));
        }
        self.device(move |d| d.apply_config(&request))
            .await
            .map(Response::new)
    }

    async fn confirm_config(
        &self,
        request: Request<proto::ConfirmConfigRequest>,
    ) -> Result<Response<proto::ConfirmConfigResponse>, Status> {
        let generation = request.into_inner().generation;
        self.device(move |d| d.confirm_config(generation)).await?;
        Ok(Response::new(proto::ConfirmConfigResponse {}))
    }

    type EventsStream = ReceiverStream<Result<proto::EventsResponse, Status>>;

    async fn events(
        &self,
        request: Request<proto::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        self.stream(request.into_inner(), |d, r, sink| d.events(r, sink))
            .map(Response::new)
    }

    async fn recovery_key(
        &self,
        _: Request<proto::RecoveryKeyRequest>,
    ) -> Result<Response<proto::RecoveryKeyResponse>, Status> {
        // The policy has logged who asked; the answer is never logged.
        self.device(|d| d.recovery_key()).await.map(Response::new)
    }

    async fn kubeconfig(
        &self,
        _: Request<proto::KubeconfigRequest>,
    ) -> Result<Response<proto::KubeconfigResponse>, Status> {
        // The policy has logged who asked; the answer (a cluster admin's key) is never logged.
        self.device(|d| d.kubeconfig()).await.map(Response::new)
    }

    async fn unlock(
        &self,
        request: Request<proto::UnlockRequest>,
    ) -> Result<Response<proto::UnlockResponse>, Status> {
        let key = request.into_inner().recovery_key;
        self.check_recovery_key(&key)?;
        let busy = self.unlocking.clone().try_acquire_owned().map_err(|_| {
            Status::failed_precondition(
                "an unlock is already running; wait for its answer before trying again",
            )
        })?;
        // The permit goes with the device call, which runs on when the deadline has passed.
        let log = self.log.clone();
        let result = self
            .device(move |d| {
                let _busy = busy;
                let answer = d.unlock(&key);
                match &answer {
                    Ok(r) => log(&format!("unlocked: {}", without_key(&r.message, &key))),
                    Err(e) => log(&format!("unlock failed: {}", without_key(&e.message, &key))),
                }
                answer.map_err(|e| DeviceError::new(e.kind, without_key(&e.message, &key)))
            })
            .await;
        result.map(Response::new)
    }
}

/// Moves upload chunks from the call into the [`Upload`] reader, checking the announced length
/// and the idle limit. It waits while the installer is behind, so the client is slowed by HTTP/2
/// flow control rather than buffered.
struct Pump {
    inbound: Streaming<proto::UpgradeRequest>,
    tx: mpsc::Sender<io::Result<Vec<u8>>>,
    size: u64,
    received: Arc<AtomicU64>,
    failure: Arc<Mutex<Option<Status>>>,
    limits: Limits,
}

impl Pump {
    async fn run(mut self) {
        if let Some(failure) = self.pump().await {
            let message = failure.message().to_string();
            if let Ok(mut f) = self.failure.lock() {
                *f = Some(failure);
            }
            let _ = self
                .tx
                .send(Err(io::Error::new(io::ErrorKind::InvalidData, message)))
                .await;
        }
    }

    /// Forwards chunks until the client closes its side (`None`) or something is wrong.
    async fn pump(&mut self) -> Option<Status> {
        let mut received = 0u64;
        loop {
            let next = tokio::time::timeout(self.limits.upload_idle, self.inbound.message()).await;
            let chunk = match next {
                Err(_) => {
                    return Some(Status::deadline_exceeded(format!(
                        "the upload sent nothing for {} s, so the upgrade was abandoned",
                        self.limits.upload_idle.as_secs()
                    )))
                }
                Ok(Err(status)) if policy::is_oversize(&status) => {
                    return Some(policy::oversize(self.limits.max_message))
                }
                Ok(Err(status)) => {
                    let why = format!("the upload broke off: {}", status.message());
                    return Some(Status::new(status.code(), why));
                }
                // The reader checks that all `size` bytes came.
                Ok(Ok(None)) => return None,
                Ok(Ok(Some(proto::UpgradeRequest { message }))) => match message {
                    Some(upgrade_request::Message::Chunk(chunk)) => chunk,
                    Some(upgrade_request::Message::Start(_)) => {
                        return Some(Status::invalid_argument(
                            "an upgrade takes one UpgradeStart, and this one sent a second",
                        ))
                    }
                    None => continue,
                },
            };
            if chunk.len() > self.limits.max_chunk {
                return Some(Status::invalid_argument(format!(
                    "an upload chunk of {} bytes is over the device's {} byte limit",
                    chunk.len(),
                    self.limits.max_chunk
                )));
            }
            received += chunk.len() as u64;
            if received > self.size {
                return Some(Status::invalid_argument(format!(
                    "the upload is longer than the {} bytes its UpgradeStart announced",
                    self.size
                )));
            }
            self.received.store(received, Ordering::Relaxed);
            if !chunk.is_empty() && self.tx.send(Ok(chunk)).await.is_err() {
                // The installer stopped reading: it failed, and says why itself.
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recovery_key_is_blanked_out_of_messages() {
        let key = "cbdefghi-jklnrtuv-cbdefghi-jklnrtuv-cbdefghi-jklnrtuv-cbdefghi-jklnrtuv";
        let said = format!("key {key} opens no keyslot of STATE; {key}");
        let blanked = without_key(&said, key);
        assert!(!blanked.contains("cbdefghi"), "{blanked}");
        assert_eq!(
            blanked,
            "key (the recovery key) opens no keyslot of STATE; (the recovery key)"
        );
        assert_eq!(without_key("no key here", key), "no key here");
        // A key too short to be one is left alone rather than garbling the message.
        assert_eq!(without_key("the STATE volume", "a"), "the STATE volume");
    }
}
