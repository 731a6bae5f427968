//! The server on loopback with a fake device, driven by a tonic client over rustls: roles,
//! refused connections, and limits.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cairn_api::proto::device_service_client::DeviceServiceClient;
use cairn_api::proto::{self, logs_request, upgrade_request, upgrade_response, upgrade_start};
use cairn_api::testing::RECOVERY_KEY;
use cairn_api::{Limits, Role, Rpc};
use common::{Harness, Pem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

type Client = DeviceServiceClient<Channel>;

fn start_message(size: u64) -> proto::UpgradeRequest {
    proto::UpgradeRequest {
        message: Some(upgrade_request::Message::Start(proto::UpgradeStart {
            source: Some(upgrade_start::Source::Upload(proto::Upload { size })),
            reboot: true,
        })),
    }
}

fn chunk_message(bytes: &[u8]) -> proto::UpgradeRequest {
    proto::UpgradeRequest {
        message: Some(upgrade_request::Message::Chunk(bytes.to_vec())),
    }
}

/// Uploads `bundle` in `chunk`-byte pieces; returns every answer.
async fn upload(
    client: &mut Client,
    bundle: &[u8],
    chunk: usize,
) -> Result<Vec<proto::UpgradeResponse>, Status> {
    let mut messages = vec![start_message(bundle.len() as u64)];
    messages.extend(bundle.chunks(chunk).map(chunk_message));
    let mut answers = client
        .upgrade(tokio_stream::iter(messages))
        .await?
        .into_inner();
    let mut all = Vec::new();
    while let Some(m) = answers.message().await? {
        all.push(m);
    }
    Ok(all)
}

fn kernel_logs(tail: u32, follow: bool) -> proto::LogsRequest {
    proto::LogsRequest {
        source: Some(logs_request::Source::Kernel(proto::KernelLog {})),
        tail,
        follow,
    }
}

/// Makes one call of each kind, reading streams to their end.
async fn call(client: &mut Client, rpc: Rpc) -> Result<(), Status> {
    match rpc {
        Rpc::Version => client.version(proto::VersionRequest {}).await.map(drop),
        Rpc::Health => client.health(proto::HealthRequest {}).await.map(drop),
        Rpc::SlotStatus => client
            .slot_status(proto::SlotStatusRequest {})
            .await
            .map(drop),
        Rpc::ServiceList => client
            .service_list(proto::ServiceListRequest {})
            .await
            .map(drop),
        Rpc::ServiceRestart => client
            .service_restart(proto::ServiceRestartRequest {
                name: "containerd".into(),
            })
            .await
            .map(drop),
        Rpc::Logs => {
            let mut lines = client.logs(kernel_logs(2, false)).await?.into_inner();
            while lines.message().await?.is_some() {}
            Ok(())
        }
        Rpc::Upgrade => {
            let answers = upload(client, b"CAIRN bundle bytes", 4).await?;
            assert!(matches!(
                answers.last().and_then(|a| a.event.as_ref()),
                Some(upgrade_response::Event::Done(_))
            ));
            Ok(())
        }
        Rpc::Rollback => client.rollback(proto::RollbackRequest {}).await.map(drop),
        Rpc::Reboot => client.reboot(proto::RebootRequest {}).await.map(drop),
        Rpc::Shutdown => client.shutdown(proto::ShutdownRequest {}).await.map(drop),
        Rpc::ApplyConfig => client
            .apply_config(proto::ApplyConfigRequest {
                config: "update: {tries: 3}\n".into(),
                dry_run: true,
                try_timeout_s: 0,
            })
            .await
            .map(drop),
        Rpc::ConfirmConfig => client
            .confirm_config(proto::ConfirmConfigRequest { generation: 7 })
            .await
            .map(drop),
        Rpc::Events => {
            let mut events = client
                .events(proto::EventsRequest { tail: 10 })
                .await?
                .into_inner();
            while events.message().await?.is_some() {}
            Ok(())
        }
        Rpc::RecoveryKey => client
            .recovery_key(proto::RecoveryKeyRequest {})
            .await
            .map(drop),
        Rpc::Unlock => unlock(client, RECOVERY_KEY).await.map(drop),
        Rpc::Kubeconfig => client
            .kubeconfig(proto::KubeconfigRequest {})
            .await
            .map(drop),
    }
}

async fn unlock(client: &mut Client, key: &str) -> Result<proto::UnlockResponse, Status> {
    let request = proto::UnlockRequest {
        recovery_key: key.into(),
    };
    client
        .unlock(request)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn every_call_reaches_the_device_for_the_roles_allowed_and_no_further() {
    let h = Harness::start();
    for (role, pem) in [
        (Role::Reader, &h.pki.reader),
        (Role::Operator, &h.pki.operator),
        (Role::Admin, &h.pki.admin),
    ] {
        let mut client = h.client(pem).await;
        let mut allowed = Vec::new();
        for rpc in Rpc::ALL {
            let result = call(&mut client, rpc).await;
            if rpc.required() <= role {
                result.unwrap_or_else(|s| panic!("{role} calling {rpc}: {s:?}"));
                allowed.push(rpc);
            } else {
                let status = result.expect_err(rpc.name());
                assert_eq!(
                    status.code(),
                    Code::PermissionDenied,
                    "{role} {rpc}: {status:?}"
                );
            }
        }
        assert_eq!(
            h.device.take_calls(),
            allowed,
            "what reached the device as {role}"
        );
    }
}

#[tokio::test]
async fn a_reader_cannot_upgrade_reboot_or_apply_config_and_the_denial_is_logged() {
    let h = Harness::start();
    let mut reader = h.client(&h.pki.reader).await;
    for rpc in [Rpc::Upgrade, Rpc::Reboot, Rpc::ApplyConfig] {
        let status = call(&mut reader, rpc).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        let needs = rpc.required();
        assert!(
            status
                .message()
                .contains(&format!("{rpc} needs the {needs} role")),
            "{status:?}"
        );
        assert!(status.message().contains("CN=test reader"), "{status:?}");
        let line = h.wait_for_log(&format!("denied {rpc} to")).await;
        assert!(line.contains("CN=test reader"), "{line}");
        assert!(line.contains("O=cairn:reader"), "{line}");
        assert!(line.contains("127.0.0.1:"), "{line}");
    }
    assert!(h.device.take_calls().is_empty());

    // Allowed calls that change the device leave an audit line too.
    let mut operator = h.client(&h.pki.operator).await;
    call(&mut operator, Rpc::Reboot).await.unwrap();
    let line = h.wait_for_log("Reboot by").await;
    assert!(
        line.contains("CN=test operator") && line.contains("(operator)"),
        "{line}"
    );
}

#[tokio::test]
async fn a_certificate_from_the_ca_without_a_role_may_call_nothing() {
    let h = Harness::start();
    let mut nobody = h.client(&h.pki.no_role).await;
    let status = call(&mut nobody, Rpc::Version).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("no Cairn role"), "{status:?}");
    h.wait_for_log("CN=test nobody").await;
    assert!(h.device.take_calls().is_empty());
}

/// Connects with `identity` and calls Version; the error, whichever step failed.
async fn refused(h: &Harness, identity: Option<&Pem>) -> String {
    // With TLS 1.3 the client finishes its side of the handshake before the server has judged
    // its certificate, so the refusal shows at connect or at the first call.
    match h.connect(identity).await {
        Err(e) => format!("connect: {e:?}"),
        Ok(mut client) => {
            let status = client
                .version(proto::VersionRequest {})
                .await
                .expect_err("the server answered a client it should have refused");
            assert_ne!(status.code(), Code::Ok);
            format!("call: {status:?}")
        }
    }
}

#[tokio::test]
async fn clients_without_a_valid_certificate_from_the_ca_get_no_connection() {
    let h = Harness::start();
    let cases: [(Option<&Pem>, &str); 3] = [
        (None, "peer sent no certificates"),
        (Some(&h.pki.stranger), "UnknownIssuer"),
        (Some(&h.pki.expired), "certificate expired"),
    ];
    for (identity, reason) in cases {
        let before = h.log_lines().len();
        let error = refused(&h, identity).await;
        let line = h.wait_for_log(reason).await;
        assert!(
            line.starts_with("refused a connection from 127.0.0.1:"),
            "{line}"
        );
        assert!(h.log_lines().len() > before, "{error}");
    }
    assert!(h.device.take_calls().is_empty());
}

#[tokio::test]
async fn plaintext_http2_is_refused() {
    let h = Harness::start();
    // A gRPC client without TLS.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.addr()))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let status = match channel.connect().await {
        Err(_) => None,
        Ok(channel) => Some(
            DeviceServiceClient::new(channel)
                .version(proto::VersionRequest {})
                .await
                .unwrap_err(),
        ),
    };
    assert!(status.as_ref().is_none_or(|s| s.code() != Code::Ok));

    // The HTTP/2 preface by hand: the answer is a TLS alert or nothing, never an HTTP/2 frame.
    let mut tcp = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "not a TLS alert: {answer:02x?}"
    );
    h.wait_for_log("refused a connection").await;
    assert!(h.device.take_calls().is_empty());
}

#[tokio::test]
async fn a_second_upgrade_is_refused_while_the_first_runs() {
    let h = Harness::start();
    let mut first = h.client(&h.pki.operator).await;
    let bundle = b"CAIRN a bundle in two halves";
    let (tx, rx) = mpsc::channel(4);
    tx.send(start_message(bundle.len() as u64)).await.unwrap();
    tx.send(chunk_message(&bundle[..10])).await.unwrap();
    let mut answers = first
        .upgrade(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // The device is now reading the upload and waiting for the rest.
    let progress = answers.message().await.unwrap().unwrap();
    assert!(matches!(
        progress.event,
        Some(upgrade_response::Event::Progress(proto::UpgradeProgress {
            received: 10,
            ..
        }))
    ));

    let mut second = h.client(&h.pki.admin).await;
    let status = upload(&mut second, b"CAIRN another", 64).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("already running"), "{status:?}");
    let status = call(&mut second, Rpc::Rollback).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    tx.send(chunk_message(&bundle[10..])).await.unwrap();
    drop(tx);
    let mut last = None;
    while let Some(m) = answers.message().await.unwrap() {
        last = m.event;
    }
    let Some(upgrade_response::Event::Done(done)) = last else {
        panic!("no UpgradeDone: {last:?}");
    };
    assert_eq!(done.os_version, "1.5.0");
    assert!(done.rebooting);
    assert_eq!(h.device.take_calls(), [Rpc::Upgrade]);

    // Free again once it is over.
    upload(&mut second, b"CAIRN another", 64).await.unwrap();
}

#[tokio::test]
async fn an_upload_of_another_length_than_announced_fails_with_the_reason() {
    let h = Harness::start();
    let mut client = h.client(&h.pki.operator).await;
    let status = upload_outcome(&mut client, 100, b"CAIRN short").await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("after 11 of the 100 bytes"),
        "{status:?}"
    );

    let status = upload_outcome(&mut client, 5, b"CAIRN too long").await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("longer than the 5 bytes"),
        "{status:?}"
    );
}

/// Uploads `bytes` announced as `size` bytes, expecting a failure; returns it.
async fn upload_outcome(client: &mut Client, size: u64, bytes: &[u8]) -> Status {
    let messages = vec![start_message(size), chunk_message(bytes)];
    let mut answers = match client.upgrade(tokio_stream::iter(messages)).await {
        Ok(answers) => answers.into_inner(),
        Err(status) => return status,
    };
    loop {
        match answers.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the upload succeeded"),
            Err(s) => return s,
        }
    }
}

#[tokio::test]
async fn messages_over_the_size_limit_are_refused() {
    let h = Harness::start();
    let max = Limits::default().max_message;
    let mut admin = h.client(&h.pki.admin).await;

    let status = admin
        .apply_config(proto::ApplyConfigRequest {
            config: "#".repeat(2 * max),
            dry_run: true,
            try_timeout_s: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(&max.to_string()), "{status:?}");

    // Under the message limit but over the device's own config limit.
    let status = admin
        .apply_config(proto::ApplyConfigRequest {
            config: "#".repeat(100 * 1024),
            dry_run: true,
            try_timeout_s: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // An upload chunk over the message limit.
    let big = vec![b'x'; 2 * max];
    let status = upload_outcome(&mut admin, big.len() as u64, &big).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // None of it reached the device but the upgrade, which read nothing.
    assert!(h.device.take_calls().iter().all(|c| *c == Rpc::Upgrade));

    // A message at the limit is fine.
    let chunk = vec![b'x'; Limits::default().max_chunk - 5];
    let mut bundle = b"CAIRN".to_vec();
    bundle.extend_from_slice(&chunk);
    upload(&mut admin, &bundle, bundle.len()).await.unwrap();
}

#[tokio::test]
async fn a_device_call_that_hangs_runs_into_the_deadline() {
    let h = Harness::with_limits(Limits {
        call_deadline: Duration::from_millis(300),
        ..Limits::default()
    });
    h.device.delay(Rpc::ServiceRestart, Duration::from_secs(2));
    let mut operator = h.client(&h.pki.operator).await;
    let started = Instant::now();
    let status = call(&mut operator, Rpc::ServiceRestart).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("ServiceRestart got no answer"),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn an_upload_that_stops_sending_is_abandoned() {
    let h = Harness::with_limits(Limits {
        upload_idle: Duration::from_millis(300),
        ..Limits::default()
    });
    let mut operator = h.client(&h.pki.operator).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(start_message(1000)).await.unwrap();
    tx.send(chunk_message(b"CAIRN")).await.unwrap();
    let mut answers = operator
        .upgrade(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let status = loop {
        match answers.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a stalled upload succeeded"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("sent nothing for"), "{status:?}");
    drop(tx);
}

#[tokio::test]
async fn requests_are_checked_before_the_device_sees_them() {
    let h = Harness::start();
    let mut admin = h.client(&h.pki.admin).await;
    let bad = [
        admin
            .apply_config(proto::ApplyConfigRequest {
                config: String::new(),
                dry_run: true,
                try_timeout_s: 60,
            })
            .await
            .unwrap_err(),
        admin
            .service_restart(proto::ServiceRestartRequest {
                name: String::new(),
            })
            .await
            .unwrap_err(),
        admin
            .logs(proto::LogsRequest {
                source: None,
                tail: 1,
                follow: false,
            })
            .await
            .unwrap_err(),
    ];
    for status in bad {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    let fetch = proto::UpgradeRequest {
        message: Some(upgrade_request::Message::Start(proto::UpgradeStart {
            source: Some(upgrade_start::Source::Fetch(proto::Fetch {
                url: "http://example.invalid/b.cairn".into(),
            })),
            reboot: false,
        })),
    };
    let status = admin
        .upgrade(tokio_stream::iter([fetch]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("HTTPS only"), "{status:?}");
    assert!(h.device.take_calls().is_empty());
    // An oci:// reference is parsed before the device sees it.
    let oci = |url: &str| proto::UpgradeRequest {
        message: Some(upgrade_request::Message::Start(proto::UpgradeStart {
            source: Some(upgrade_start::Source::Fetch(proto::Fetch {
                url: url.into(),
            })),
            reboot: false,
        })),
    };
    let status = admin
        .upgrade(tokio_stream::iter([oci("oci://registry.example/b")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("names no tag (:1.2.0) or digest"),
        "{status:?}"
    );
    assert!(h.device.take_calls().is_empty());
    let mut answers = admin
        .upgrade(tokio_stream::iter([oci(
            "oci://registry.example:5000/cairn/b:1.5.0",
        )]))
        .await
        .unwrap()
        .into_inner();
    let status = loop {
        match answers.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the upgrade ended without the device's error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "this fake pulls nothing (asked for registry.example:5000/cairn/b:1.5.0)"
    );
    h.device.take_calls();

    // A device error keeps its code and its words.
    let status = admin
        .service_restart(proto::ServiceRestartRequest {
            name: "nginx".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        status.message(),
        "no service \"nginx\"; ServiceList shows them"
    );
}

#[tokio::test]
async fn streams_are_bounded_and_freed_when_the_client_goes() {
    let limits = Limits {
        max_streams: 2,
        ..Limits::default()
    };
    let h = Harness::with_limits(limits);
    let mut reader = h.client(&h.pki.reader).await;

    let mut tail = reader
        .logs(kernel_logs(3, false))
        .await
        .unwrap()
        .into_inner();
    let mut lines = Vec::new();
    while let Some(l) = tail.message().await.unwrap() {
        lines.push(l.line);
    }
    assert_eq!(lines, ["line 0", "line 1", "line 2"]);

    let mut a = reader
        .logs(kernel_logs(1, true))
        .await
        .unwrap()
        .into_inner();
    let b = reader
        .logs(kernel_logs(1, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.message().await.unwrap().unwrap().line, "line 0");
    let status = reader.logs(kernel_logs(1, true)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Cancelling one frees its place (the device notices within its poll interval).
    drop(a);
    drop(b);
    let mut reopened = None;
    for _ in 0..100 {
        match reader.logs(kernel_logs(1, true)).await {
            Ok(s) => {
                reopened = Some(s.into_inner());
                break;
            }
            Err(s) if s.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    let mut reopened = reopened.expect("the cancelled streams' places were never freed");
    assert_eq!(reopened.message().await.unwrap().unwrap().line, "line 0");
}

#[tokio::test]
async fn shutdown_ends_streams_that_follow() {
    let mut h = Harness::start();
    let mut reader = h.client(&h.pki.reader).await;
    let mut follow = reader
        .logs(kernel_logs(1, true))
        .await
        .unwrap()
        .into_inner();
    follow.message().await.unwrap().unwrap();
    let started = Instant::now();
    let server = h.server.take().unwrap();
    tokio::task::spawn_blocking(move || server.shutdown().unwrap())
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!matches!(follow.message().await, Ok(Some(_))));
}

/// The role table covers exactly the service's methods, and each method's comment in the .proto
/// names the role the table gives it.
#[test]
fn the_role_table_matches_the_proto() {
    let proto = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/cairn/v1/device.proto"),
    )
    .unwrap();
    let mut comment = String::new();
    let mut seen = BTreeSet::new();
    for line in proto.lines().map(str::trim) {
        if let Some(text) = line.strip_prefix("//") {
            comment.push_str(text);
            comment.push(' ');
            continue;
        }
        if let Some(rest) = line.strip_prefix("rpc ") {
            let name = rest.split('(').next().unwrap().trim();
            let rpc = Rpc::ALL
                .into_iter()
                .find(|r| r.name() == name)
                .unwrap_or_else(|| panic!("{name} is in the .proto but not in Rpc"));
            let role = format!("Role: {}.", rpc.required());
            assert!(
                comment.contains(&role),
                "{name}: comment lacks {role:?}: {comment}"
            );
            seen.insert(name.to_string());
        }
        comment.clear();
    }
    let all: BTreeSet<String> = Rpc::ALL.iter().map(|r| r.name().to_string()).collect();
    assert_eq!(seen, all);
}

#[tokio::test]
async fn only_an_admin_gets_the_recovery_key_or_unlocks() {
    let h = Harness::start();
    for pem in [&h.pki.reader, &h.pki.operator] {
        let mut client = h.client(pem).await;
        for rpc in [Rpc::RecoveryKey, Rpc::Unlock] {
            let status = call(&mut client, rpc).await.unwrap_err();
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            assert!(
                status
                    .message()
                    .contains(&format!("{rpc} needs the admin role")),
                "{status:?}"
            );
        }
    }
    assert!(h.device.take_calls().is_empty());
    h.wait_for_log("denied RecoveryKey to CN=test operator")
        .await;

    let mut admin = h.client(&h.pki.admin).await;
    call(&mut admin, Rpc::RecoveryKey).await.unwrap();
    call(&mut admin, Rpc::Unlock).await.unwrap();
    assert_eq!(h.device.take_calls(), [Rpc::RecoveryKey, Rpc::Unlock]);
    // Both are on the audit trail.
    h.wait_for_log("RecoveryKey by CN=test admin").await;
    h.wait_for_log("Unlock by CN=test admin").await;
}

#[tokio::test]
async fn the_recovery_key_is_answered_once_and_never_logged() {
    let h = Harness::start();
    let mut admin = h.client(&h.pki.admin).await;
    let answer = admin
        .recovery_key(proto::RecoveryKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.recovery_key, RECOVERY_KEY);
    let status = admin
        .recovery_key(proto::RecoveryKeyRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // A good key and a wrong one that the device quotes in its error.
    let done = unlock(&mut admin, RECOVERY_KEY).await.unwrap();
    assert_eq!(done.message, "unlocked STATE and DATA; sealed to PCR 7");
    let wrong = RECOVERY_KEY.replace('c', "d");
    let status = unlock(&mut admin, &wrong).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "(the recovery key) opens no keyslot of STATE"
    );
    assert_eq!(
        h.device.unlock_keys(),
        [RECOVERY_KEY.to_string(), wrong.clone()]
    );

    h.wait_for_log("unlocked: unlocked STATE and DATA").await;
    h.wait_for_log("unlock failed: (the recovery key) opens no keyslot")
        .await;
    for line in h.log_lines() {
        for group in RECOVERY_KEY.split('-').chain(wrong.split('-')) {
            assert!(!line.contains(group), "the key is in the log: {line}");
        }
    }
}

#[tokio::test]
async fn a_recovery_key_is_bounded_before_the_device_sees_it() {
    let max = Limits::default().max_recovery_key;
    let h = Harness::start();
    let mut admin = h.client(&h.pki.admin).await;
    for (key, says) in [
        (String::new(), "is empty".to_string()),
        ("c".repeat(max + 1), format!("{} bytes long", max + 1)),
    ] {
        let status = unlock(&mut admin, &key).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(&says), "{status:?}");
    }
    assert!(h.device.take_calls().is_empty());

    // At the limit it reaches the device (which finds it wrong), whitespace and all.
    let status = unlock(&mut admin, &"c".repeat(max)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    unlock(&mut admin, &format!(" {RECOVERY_KEY}\n"))
        .await
        .unwrap_err();
    assert_eq!(h.device.take_calls(), [Rpc::Unlock, Rpc::Unlock]);
    assert_eq!(h.device.unlock_keys()[1], format!(" {RECOVERY_KEY}\n"));
}

#[tokio::test]
async fn a_second_unlock_is_refused_while_the_first_runs() {
    let h = Harness::start();
    h.device.delay(Rpc::Unlock, Duration::from_millis(500));
    let mut first = h.client(&h.pki.admin).await;
    let running = tokio::spawn(async move { unlock(&mut first, RECOVERY_KEY).await });
    // Wait until the first has reached the device.
    for _ in 0..250 {
        if !h.device.unlock_keys().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut second = h.client(&h.pki.admin).await;
    let status = unlock(&mut second, RECOVERY_KEY).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("already running"), "{status:?}");
    running.await.unwrap().unwrap();
    assert_eq!(h.device.take_calls(), [Rpc::Unlock]);
    // Free again once it is over.
    unlock(&mut second, RECOVERY_KEY).await.unwrap();
}

#[tokio::test]
async fn a_device_without_encrypted_disks_answers_with_the_defaults() {
    let h = Harness::unencrypted();
    let mut admin = h.client(&h.pki.admin).await;
    let status = admin
        .recovery_key(proto::RecoveryKeyRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "this device keeps no recovery key (its disks are not encrypted)"
    );
    let status = unlock(&mut admin, RECOVERY_KEY).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "the device is not in maintenance mode: its disks are unlocked"
    );
    // The rest is the fake's.
    call(&mut admin, Rpc::Version).await.unwrap();
    assert_eq!(h.device.take_calls(), [Rpc::Version]);
}

#[tokio::test]
async fn only_an_admin_gets_the_kubeconfig_and_it_is_never_logged() {
    let h = Harness::start();
    for (pem, role) in [(&h.pki.reader, "reader"), (&h.pki.operator, "operator")] {
        let mut client = h.client(pem).await;
        let status = client
            .kubeconfig(proto::KubeconfigRequest {})
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(
            status.message(),
            format!(
                "Kubeconfig needs the admin role; this client certificate (CN=test {role}, O=cairn:{role}) has the {role} role"
            )
        );
        h.wait_for_log(&format!("denied Kubeconfig to CN=test {role}"))
            .await;
    }
    assert!(
        h.device.take_calls().is_empty(),
        "nothing reached the device"
    );

    let mut admin = h.client(&h.pki.admin).await;
    let answer = admin
        .kubeconfig(proto::KubeconfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.kubeconfig, cairn_api::testing::KUBECONFIG);
    assert_eq!(h.device.take_calls(), [Rpc::Kubeconfig]);
    h.wait_for_log("Kubeconfig by CN=test admin").await;
    assert!(
        !h.log_lines().iter().any(|l| l.contains("client-key-data")),
        "the answer is not logged"
    );
}
