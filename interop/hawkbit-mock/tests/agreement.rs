//! The same scenario through `hawkbit_mock` (crates.io, written by the authors of the `hawkbit`
//! client crate) and through Cairn's DDI double: what each serves must read the same through
//! `cairn_api::ddi` and have the same fields, and the feedback and configData JSON that cairnd
//! sends must be what `hawkbit_mock` expects, byte for byte as JSON values. Whatever
//! `hawkbit_mock` expects a client to send, the double must take.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;

use cairn_api::ddi::{self, Execution as Ex, Feedback, Finished as Fin};
use cairn_api::testing_ddi::{check_feedback, Ddi, DdiAuth};
use hawkbit::ddi::{Execution, Finished, MaintenanceWindow, Type};
use hawkbit_mock::ddi::{ChunkProtocol, DeploymentBuilder, ServerBuilder};
use serde_json::{json, Value};
use sha2::Digest as _;

/// One plain HTTP/1.1 request to the mock (it serves http only): (status, body).
fn http(method: &str, url: &str, token: &str, body: Option<&Value>) -> (u16, Vec<u8>) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = TcpStream::connect(host).unwrap();
    let body = body
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text[9..12].parse().unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut payload = out[split..].to_vec();
    if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload);
    }
    (status, payload)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + n]);
        b = &b[end + 4 + n..];
    }
}

/// Every key path of a JSON value, array elements folded into `[]`.
fn paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                let p = format!("{prefix}/{k}");
                out.insert(p.clone());
                paths(v, &p, out);
            }
        }
        Value::Array(a) => {
            for v in a {
                paths(v, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn the_double_serves_what_hawkbit_mock_serves_and_cairnd_reads_both_alike() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("update.cairn");
    let bytes = b"a bundle, for the shapes only".to_vec();
    std::fs::write(&file, &bytes).unwrap();
    let sha256 = hex(&sha2::Sha256::digest(&bytes));

    // hawkbit_mock: deployment 1, download forced, update attempt, window available.
    let server = ServerBuilder::default().build();
    let target = server.add_target("edge-01");
    let token = "TargetToken Keyedge-01";
    target.push_deployment(
        DeploymentBuilder::new("1", Type::Forced, Type::Attempt)
            .maintenance_window(MaintenanceWindow::Available)
            .chunk(
                ChunkProtocol::HTTPS,
                "os",
                "1",
                "cairn",
                vec![(file.clone(), "md5-not-checked", "sha1-not-checked", &sha256)],
            )
            .build(),
    );
    let poll_url = format!("{}/DEFAULT/controller/v1/edge-01", server.base_url());
    let (status, body) = http("GET", &poll_url, token, None);
    assert_eq!(status, 200);
    let mock_poll: Value = serde_json::from_slice(&body).unwrap();
    let mock_p = ddi::parse_poll(&mock_poll).unwrap();
    let href = mock_p.deployment.clone().expect("a deploymentBase link");
    let (status, body) = http("GET", &href, token, None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let mock_deployment: Value = serde_json::from_slice(&body).unwrap();

    // The double, the same scenario.
    let double = Ddi::start(DdiAuth::Target);
    double.add_artifact("update.cairn", bytes.clone());
    let id = double.assign("edge-01", "update.cairn", "forced", "attempt");
    double.edit(id, |a| a.window = Some("available".into()));
    let tls = cairn_api::fetch::client_config(double.roots(), None).unwrap();
    let client = ddi::Client::new(
        &double.url(),
        "DEFAULT",
        "edge-01",
        ddi::Auth::Target(Ddi::token("edge-01")),
        tls,
    );
    let ours_p = client.poll().unwrap();
    let ours = client
        .deployment(ours_p.deployment.as_ref().unwrap())
        .unwrap();

    // cairnd reads both alike.
    let mock = ddi::parse_deployment(&mock_deployment).unwrap();
    assert_eq!(mock.id, ours.id);
    assert_eq!((mock.download, mock.update), (ours.download, ours.update));
    assert_eq!(
        (mock.download, mock.update),
        (ddi::Handling::Forced, ddi::Handling::Attempt)
    );
    assert_eq!(mock.window, ours.window);
    assert_eq!(mock.artifacts.len(), 1);
    let (m, o) = (&mock.artifacts[0], &ours.artifacts[0]);
    assert_eq!(
        (&m.filename, m.size, &m.sha256),
        (&o.filename, o.size, &o.sha256)
    );
    assert_eq!(mock_p.sleep, std::time::Duration::from_secs(60));

    // The same fields, but for what the double leaves out on purpose or adds as hawkBit does.
    let mut mock_paths = BTreeSet::new();
    paths(&mock_deployment, "", &mut mock_paths);
    let mut our_paths = BTreeSet::new();
    let raw = {
        // The double's raw JSON, read as the client reads it.
        let tls = cairn_api::fetch::client_config(double.roots(), None).unwrap();
        let headers = vec![(
            "Authorization".to_string(),
            format!("TargetToken {}", Ddi::token("edge-01")),
        )];
        cairn_api::fetch::request(
            "GET",
            ours_p.deployment.as_ref().unwrap(),
            &headers,
            None,
            false,
            &tls,
            &Default::default(),
        )
        .unwrap()
        .body
    };
    paths(&serde_json::from_slice(&raw).unwrap(), "", &mut our_paths);
    let only_mock: Vec<_> = mock_paths.difference(&our_paths).collect();
    let only_ours: Vec<_> = our_paths.difference(&mock_paths).collect();
    // hawkbit_mock links an md5sum file it does not serve; the double links none.
    assert_eq!(
        only_mock,
        [
            "/deployment/chunks[]/artifacts[]/_links/md5sum",
            "/deployment/chunks[]/artifacts[]/_links/md5sum/href"
        ],
        "fields only hawkbit_mock serves"
    );
    // hawkBit sends actionHistory (the double always, hawkbit_mock never).
    assert_eq!(
        only_ours,
        [
            "/actionHistory",
            "/actionHistory/messages",
            "/actionHistory/status"
        ],
        "fields only the double serves"
    );
}

#[test]
fn cairnds_feedback_and_config_data_are_what_hawkbit_mock_expects() {
    let server = ServerBuilder::default().build();
    let target = server.add_target("edge-01");
    let token = "TargetToken Keyedge-01";
    let base = format!("{}/DEFAULT/controller/v1/edge-01", server.base_url());
    let cases = [
        (
            Feedback {
                execution: Ex::Proceeding,
                finished: Fin::None,
                progress: Some((25, 100)),
                details: vec!["written 1 of 4 bytes".into()],
            },
            Execution::Proceeding,
            Finished::None,
            Some(json!({"cnt": 25, "of": 100})),
        ),
        (
            Feedback::new(
                Ex::Closed,
                Fin::Success,
                "version 0.2.0 committed in slot b",
            ),
            Execution::Closed,
            Finished::Success,
            None,
        ),
        (
            Feedback::new(Ex::Closed, Fin::Failure, "rolled back"),
            Execution::Closed,
            Finished::Failure,
            None,
        ),
    ];
    for (ours, execution, finished, progress) in cases {
        let detail = ours.details[0].clone();
        let mock =
            target.expect_deployment_feedback("7", execution, finished, progress, vec![&detail]);
        let body = ours.json("7");
        let (status, _) = http(
            "POST",
            &format!("{base}/deploymentBase/7/feedback"),
            token,
            Some(&body),
        );
        assert_eq!(
            (status, mock.calls()),
            (200, 1),
            "hawkbit_mock did not take {body}"
        );
        // And the double takes the same body.
        check_feedback(&body).unwrap();
    }
    // Cancel: accepted, as cairnd answers a cancel before the install.
    target.cancel_action("9");
    let ours = Feedback::new(
        Ex::Closed,
        Fin::Success,
        "canceled before the install started",
    );
    let mock = target.expect_cancel_feedback(
        "9",
        Execution::Closed,
        Finished::Success,
        vec![&ours.details[0]],
    );
    let (status, _) = http(
        "POST",
        &format!("{base}/cancelAction/9/feedback"),
        token,
        Some(&ours.json("9")),
    );
    assert_eq!((status, mock.calls()), (200, 1));
    let (_, body) = http("GET", &format!("{base}/cancelAction/9"), token, None);
    let cancel = ddi::parse_cancel(&serde_json::from_slice(&body).unwrap()).unwrap();
    assert_eq!((cancel.id.as_str(), cancel.stop_id.as_str()), ("9", "9"));
    // configData: merge, strings.
    let data = vec![
        ("board".to_string(), "qemu-x86_64".to_string()),
        ("version".to_string(), "0.1.0".to_string()),
    ];
    target.request_config(ddi::config_data_json(&data));
    let (_, body) = http("GET", &base, token, None);
    let poll = ddi::parse_poll(&serde_json::from_slice(&body).unwrap()).unwrap();
    assert!(poll.config_data.is_some());
    let (status, _) = http(
        "PUT",
        &format!("{base}/configData"),
        token,
        Some(&ddi::config_data_json(&data)),
    );
    assert_eq!((status, target.config_data_hits()), (200, 1));
}
