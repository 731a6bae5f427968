//! What the API fuzz targets feed `cairn-api`, and the seed corpus they start from.
//!
//! The one idea: both readers run before anything about the peer is trusted (the fetcher reads
//! the server's bytes before any signature is checked; the subject walk runs on whatever a
//! certificate carries), so beyond not panicking each must keep its promises on every input:
//!
//! - `fetch_answer`: the input is `[piece] [first length: u16 BE] [cut: u16 BE]` followed by
//!   the first answer's bytes and then, if any remain, the resumed answer's. The reader must
//!   hand over no more than the limits and the announced length allow, a resumed download
//!   must keep the first answer's bytes before the cut, and every error is one short line.
//! - `oci_manifest`: the input is a registry's manifest or index (JSON), also read as an OCI
//!   reference. A manifest that parses writes back to JSON that parses to the same document;
//!   every refusal is one line.
//! - `cert_der`: the input is a whole certificate, read the ways the device reads its kept
//!   server certificate and its CA (`cairn_pki`'s own DER reader): every reader either answers
//!   or refuses with one line, and a certificate checked against itself as its CA is refused
//!   unless it parses.
//! - `cert_subject`: the input is a Name's contents. An accepted Name has at most
//!   `MAX_ATTRIBUTES` attributes, and its log line has no control characters and no line
//!   breaks, whatever the strings held.

use cairn_api::fetch::fuzzing::{answers, Outcome};
use cairn_api::fetch::FetchLimits;
use cairn_api::subject::{Subject, MAX_ATTRIBUTES};

/// Small limits, so that inputs a fuzzer finds reach them.
fn limits() -> FetchLimits {
    FetchLimits {
        max_header: 1024,
        max_len: 4096,
        ..FetchLimits::default()
    }
}

/// The resumed answer and the byte it was asked from.
type Resume<'a> = Option<(&'a [u8], u64)>;

/// Splits an input of `fetch_answer` into (piece size, first answer, resume).
fn split(data: &[u8]) -> Option<(usize, &[u8], Resume<'_>)> {
    let (&[piece, l0, l1, c0, c1], rest) = data.split_first_chunk::<5>()?;
    let first_len = usize::from(u16::from_be_bytes([l0, l1])).min(rest.len());
    let (first, second) = rest.split_at(first_len);
    let cut = u64::from(u16::from_be_bytes([c0, c1]));
    let resume = (!second.is_empty()).then_some((second, cut));
    Some((usize::from(piece) * 37 + 1, first, resume))
}

/// Runs the answer reader on one input and checks what it promises. Panics (a finding) on any
/// broken promise.
pub fn check_answers(data: &[u8]) {
    let Some((piece, first, resume)) = split(data) else {
        return;
    };
    let limits = limits();
    let out = answers(first, resume, piece, &limits);
    assert_eq!(
        answers(first, resume, piece, &limits),
        out,
        "not deterministic"
    );
    check_outcome(&out, &limits);
    // The piece size a reader asks for changes nothing but the error's byte count.
    let other = answers(first, resume, 4093, &limits);
    assert_eq!(other.body, out.body, "the body depends on the read size");
    assert_eq!(other.len, out.len);
    if let Some(from) = out.resumed_at {
        // Before the cut, a resumed download holds exactly what the first answer sent.
        let whole = answers(first, None, piece, &limits);
        let from = usize::try_from(from).expect("small");
        assert!(from <= whole.body.len());
        assert_eq!(out.body[..from], whole.body[..from]);
        assert!(from > 0);
    }
}

fn check_outcome(out: &Outcome, limits: &FetchLimits) {
    let body = out.body.len() as u64;
    assert!(body <= limits.max_len, "{body} bytes handed over");
    if let Some(len) = out.len {
        assert!(len <= limits.max_len);
        assert!(body <= len, "{body} bytes handed over, {len} announced");
    }
    if out.resumed_at.is_some() {
        assert!(out.len.is_some(), "only a known length resumes");
    }
    if let Some(error) = &out.error {
        assert!(
            !error.chars().any(char::is_control),
            "not one line: {error:?}"
        );
        assert!(error.len() < 400, "a long error: {error:?}");
    }
}

/// Walks `der` as a Name's contents and checks what an accepted one promises.
pub fn check_subject(der: &[u8]) {
    let Ok(subject) = Subject::parse(der) else {
        return;
    };
    assert_eq!(
        Subject::parse(der),
        Ok(subject.clone()),
        "not deterministic"
    );
    let line = subject.to_string();
    assert!(
        !line.chars().any(char::is_control),
        "control characters in {line:?}"
    );
    let organizations: Vec<&str> = subject.organizations().collect();
    assert!(organizations.len() <= MAX_ATTRIBUTES);
    for o in organizations {
        assert!(
            line.contains("O="),
            "organization {o:?} missing from {line:?}"
        );
    }
}

/// A fetch_answer input from its parts.
fn answer_input(piece: u8, first: &[u8], cut: u16, second: &[u8]) -> Vec<u8> {
    let mut out = vec![piece];
    out.extend_from_slice(&u16::try_from(first.len()).expect("short").to_be_bytes());
    out.extend_from_slice(&cut.to_be_bytes());
    out.extend_from_slice(first);
    out.extend_from_slice(second);
    out
}

/// DER tag, length and value.
fn der(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match value.len() {
        n @ 0..=0x7f => out.push(n as u8),
        n @ 0x80..=0xff => out.extend_from_slice(&[0x81, n as u8]),
        n => {
            out.push(0x82);
            out.extend_from_slice(&u16::try_from(n).expect("short").to_be_bytes());
        }
    }
    out.extend_from_slice(value);
    out
}

/// An attribute: its OID's bytes, the string's DER tag, the string.
type Attribute<'a> = (&'a [u8], u8, &'a [u8]);

/// A Name's contents from RDNs of attributes.
fn name(rdns: &[&[Attribute<'_>]]) -> Vec<u8> {
    let mut out = Vec::new();
    for rdn in rdns {
        let mut set = Vec::new();
        for (oid, tag, value) in rdn.iter() {
            let pair = [der(0x06, oid), der(*tag, value)].concat();
            set.extend(der(0x30, &pair));
        }
        out.extend(der(0x31, &set));
    }
    out
}

const CN: &[u8] = &[0x55, 0x04, 0x03];
const O: &[u8] = &[0x55, 0x04, 0x0a];
const EMAIL: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01];

/// Reads a manifest (and a reference) as the registry client does; panics on a broken promise.
pub fn check_manifest(data: &[u8]) {
    use cairn_api::registry::{ManifestDoc, Reference};
    match ManifestDoc::parse(data) {
        Ok(doc) => {
            let again = ManifestDoc::parse(&doc.to_json()).expect("written JSON parses");
            assert_eq!(again, doc, "the document changed through its JSON");
        }
        Err(e) => assert!(!e.contains('\n'), "a refusal of two lines: {e}"),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        match Reference::parse(text) {
            Ok(r) => {
                let again = Reference::parse(&r.to_string()).expect("a written reference parses");
                assert_eq!(again, r);
            }
            Err(e) => assert!(!e.to_string().contains('\n'), "a refusal of two lines: {e}"),
        }
    }
}

/// The seed corpus, as (target, file name, bytes). Panics if a seed is not accepted, since the
/// fuzzer would then start from the error paths only.
pub fn seeds() -> Vec<crate::Seed> {
    let file: Vec<u8> = (0..3000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    let whole = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\nETag: \"v1\"\r\n\
          Last-Modified: Tue, 01 Dec 2026 10:00:00 GMT\r\nConnection: close\r\n\r\n"
            .as_slice(),
        &file,
    ]
    .concat();
    let mut chunked =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for (i, chunk) in file.chunks(1100).enumerate() {
        let extension = if i == 1 { ";name=value" } else { "" };
        chunked.extend(format!("{:x}{extension}\r\n", chunk.len()).bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
    let cut = 1000;
    let resumed = [
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 1000-2999/3000\r\n\
          Content-Length: 2000\r\nETag: \"v1\"\r\n\r\n"
            .as_slice(),
        &file[1000..],
    ]
    .concat();
    let resumed_chunked = [
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 1000-1999/3000\r\n\
          Transfer-Encoding: chunked\r\n\r\n3e8\r\n"
            .as_slice(),
        &file[1000..2000],
        b"\r\n0\r\n\r\n",
    ]
    .concat();
    let first_part = &whole[..whole.len() - 2000];
    let mut out = vec![
        (
            "fetch_answer",
            "whole".into(),
            answer_input(3, &whole, 0, b""),
        ),
        (
            "fetch_answer",
            "chunked".into(),
            answer_input(50, &chunked, 0, b""),
        ),
        (
            "fetch_answer",
            "resumed".into(),
            answer_input(20, first_part, cut, &resumed),
        ),
        (
            "fetch_answer",
            "resumed-chunked".into(),
            answer_input(20, &whole, cut, &resumed_chunked),
        ),
        (
            "fetch_answer",
            "not-found".into(),
            answer_input(
                0,
                b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                0,
                b"",
            ),
        ),
    ];
    for (_, name, input) in &out {
        let (piece, first, resume) = split(input).expect("a seed splits");
        let answer = answers(first, resume, piece, &limits());
        let good = name == "not-found" || answer.error.is_none();
        assert!(good, "seed {name}: {:?}", answer.error);
    }
    let subjects = [
        (
            "operator",
            name(&[&[(CN, 0x0c, b"alice")], &[(O, 0x0c, b"cairn:operator")]]),
        ),
        (
            "multi-valued",
            name(&[
                &[(CN, 0x13, b"bob"), (EMAIL, 0x16, b"bob@example.com")],
                &[(O, 0x1e, &[0, b'c', 0, b':', 0, b'r'])],
                &[(&[0x55, 0x04, 0x0b], 0x14, b"\x01teletex")],
            ]),
        ),
    ];
    for (label, der) in subjects {
        assert!(Subject::parse(&der).is_ok(), "seed {label} does not parse");
        out.push(("cert_subject", label.into(), der));
    }
    let layer = cairn_api::registry::digest_of(b"bundle");
    let bundle = cairn_api::registry::bundle_manifest(&layer, 6, "b.cairn", Default::default());
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{layer}","size":500,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#
    );
    for (label, bytes) in [
        ("bundle", bundle),
        ("index", index.into_bytes()),
        (
            "reference",
            format!("oci://registry.example:5000/a/b:1.2@{layer}").into_bytes(),
        ),
    ] {
        out.push(("oci_manifest", label.into(), bytes));
    }
    // Certificates as Cairn makes them: a CA, a server certificate from it, a client one.
    let device = cairn_pki::Ca::generate(cairn_pki::CaKind::Device, "fuzz device CA").unwrap();
    let client = cairn_pki::Ca::generate(cairn_pki::CaKind::Client, "fuzz client CA").unwrap();
    let server = cairn_pki::issue_server(
        &device,
        "edge",
        &[cairn_pki::San::Ip([10, 0, 2, 15].into())],
        device.validity(),
    )
    .unwrap();
    let admin = cairn_pki::issue_client(
        &client,
        "admin",
        cairn_pki::Role::Admin,
        cairn_pki::Validity::days_from_now(30),
    )
    .unwrap();
    for (label, der) in [
        ("device-ca", device.cert_der().to_vec()),
        ("server", server.cert_der),
        ("admin", admin.cert_der),
    ] {
        out.push(("cert_der", label.into(), der));
    }
    out
}

/// The `cert_der` target.
pub fn check_cert(der: &[u8]) {
    let one_line = |e: cairn_pki::Error| {
        let text = e.to_string();
        assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");
    };
    let parsed = cairn_pki::fingerprint(der);
    for r in [
        cairn_pki::fingerprint(der).map(|_| ()),
        cairn_pki::issuer_fingerprint(der).map(|_| ()),
        cairn_pki::common_name(der).map(|_| ()),
        cairn_pki::san_ips(der).map(|_| ()),
        cairn_pki::role_of(der).map(|_| ()),
    ] {
        if let Err(e) = r {
            one_line(e);
        }
    }
    let checked = cairn_pki::check_issued_by(der, der, std::time::SystemTime::now());
    if parsed.is_err() {
        assert!(checked.is_err(), "an unparsable certificate passed");
    }
    if let Err(e) = checked {
        one_line(e);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_pass_the_oracles() {
        for (target, _, bytes) in super::seeds() {
            match target {
                "fetch_answer" => super::check_answers(&bytes),
                "oci_manifest" => super::check_manifest(&bytes),
                "cert_der" => super::check_cert(&bytes),
                _ => super::check_subject(&bytes),
            }
        }
    }
}
