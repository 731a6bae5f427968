//! Unit tests across the crate: what is issued, read back with x509-parser; what is refused, and
//! how the refusal reads.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, PKCS_ECDSA_P256_SHA256};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::*;

const DAY: Duration = Duration::from_secs(86_400);

fn client_ca() -> Ca {
    Ca::generate(CaKind::Client, "Test client CA").unwrap()
}

fn device_ca() -> Ca {
    Ca::generate(CaKind::Device, "Test device CA").unwrap()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).unwrap().1
}

/// A leaf signed by `ca` with whatever subject and EKU a test needs (what this crate never makes).
fn custom_leaf(ca: &Ca, org: Option<&str>, eku: Option<ExtendedKeyUsagePurpose>) -> Vec<u8> {
    let issuer = ca.issuer(ca.kind()).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "mallory");
    if let Some(org) = org {
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    params.extended_key_usages = eku.into_iter().collect();
    params.use_authority_key_identifier_extension = true;
    let v = Validity::days_from_now(1);
    params.not_before = v.not_before.into();
    params.not_after = v.not_after.into();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    params.signed_by(&key, &issuer).unwrap().der().to_vec()
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn ca_is_a_constrained_p256_ca_valid_ten_years() {
    for (ca, want_client) in [(client_ca(), true), (device_ca(), false)] {
        let cert = parse(ca.cert_der());
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && !ku.digital_signature());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert_eq!(
            (eku.client_auth, eku.server_auth),
            (want_client, !want_client)
        );
        assert_eq!(
            cert.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.10045.4.3.2", // ecdsa-with-SHA256
        );
        cert.verify_signature(None).expect("self-signed");
        let ski = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .unwrap();
        assert_eq!(ski, ca.fingerprint().0, "SKI is the fingerprint");
        let cn = cert.subject().iter_common_name().next().unwrap();
        let fp8 = ca.fingerprint().to_string()[..8].to_string();
        assert!(cn.as_str().unwrap().ends_with(&fp8), "{:?}", cn.as_str());
        let v = ca.validity();
        let days = (secs(v.not_after) - secs(v.not_before)) / 86_400;
        assert_eq!(
            days, 3653,
            "ten years plus the hour of backdating, rounded down"
        );
        assert!(v.contains(SystemTime::now()));
    }
}

#[test]
fn ca_round_trips_through_pem() {
    let ca = client_ca();
    let back = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(back.fingerprint(), ca.fingerprint());
    assert_eq!(back.kind(), CaKind::Client);
    assert_eq!(back.cert_der(), ca.cert_der());
    assert_eq!(back.validity(), ca.validity());
    let issued = issue_client(&back, "alice", Role::Reader, Validity::days_from_now(1)).unwrap();
    check_issued_by(&issued.cert_der, ca.cert_der(), SystemTime::now()).unwrap();
}

#[test]
fn ca_refuses_a_key_of_another_ca_and_a_leaf() {
    let (a, b) = (client_ca(), client_ca());
    let err = Ca::from_pem(a.cert_pem(), &b.key_pem())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "the key does not belong to CA {}; use the key file written with its certificate",
            a.fingerprint()
        )
    );
    let leaf = issue_client(&a, "alice", Role::Admin, Validity::days_from_now(1)).unwrap();
    let err = Ca::from_pem(&leaf.cert_pem, &leaf.key_pem)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a Cairn CA: it is not a CA"), "{err}");
}

#[test]
fn every_role_round_trips_through_a_client_certificate() {
    let ca = client_ca();
    for role in Role::ALL {
        let issued = issue_client(&ca, "alice", role, Validity::days_from_now(30)).unwrap();
        assert_eq!(role_of(&issued.cert_der).unwrap(), role);
        let der = pem_to_der(&issued.cert_pem).unwrap();
        assert_eq!(der, issued.cert_der, "PEM and DER agree");
        let cert = parse(&der);
        assert_eq!(
            cert.subject().to_string(),
            format!("CN=alice, O={}", role.organization())
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth && !eku.any);
        assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
        assert!(cert.key_usage().unwrap().unwrap().value.digital_signature());
        assert_eq!(issuer_fingerprint(&der).unwrap(), Some(ca.fingerprint()));
        cert.verify_signature(Some(parse(ca.cert_der()).public_key()))
            .unwrap();
    }
}

#[test]
fn an_organization_that_is_not_a_role_is_refused_by_name() {
    let ca = client_ca();
    let err = role_of(&custom_leaf(&ca, Some("acme"), None))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "certificate CN=mallory, O=acme has Organization \"acme\", which is not a Cairn role \
         (expected cairn:admin, cairn:operator or cairn:reader)"
    );
    let err = role_of(&custom_leaf(&ca, Some("Cairn:Admin"), None)).unwrap_err();
    assert!(matches!(err, Error::UnknownRole { .. }), "{err}");
    let err = role_of(&custom_leaf(&ca, None, None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("names 0 Organizations"), "{err}");
    // Two Organizations (rcgen keeps one per type): tests/openssl.rs makes one with OpenSSL.
}

#[test]
fn each_ca_issues_only_its_kind() {
    let (client, device) = (client_ca(), device_ca());
    let v = Validity::days_from_now(1);
    let err = issue_client(&device, "alice", Role::Admin, v)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "CA {} is the device CA, and client certificates come from the client CA",
            device.fingerprint()
        )
    );
    let err = issue_server(&client, "box", &[], v)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server certificates come from the device CA"),
        "{err}"
    );
}

#[test]
fn server_certificate_names_the_device_and_loopback() {
    let ca = device_ca();
    let addr: IpAddr = "10.0.2.15".parse().unwrap();
    let sans = [
        San::Ip(addr),
        San::Dns("box.lan".into()),
        San::Dns("localhost".into()),
    ];
    let issued = issue_server(&ca, "cairn-01", &sans, ca.validity()).unwrap();
    let cert = parse(&issued.cert_der);
    assert_eq!(cert.subject().to_string(), "CN=cairn-01");
    let names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => d.to_string(),
            GeneralName::IPAddress(b) => match b.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string(),
                _ => IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string(),
            },
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        [
            "cairn-01",
            "localhost",
            "127.0.0.1",
            "::1",
            "10.0.2.15",
            "box.lan"
        ],
        "hostname and loopback first, duplicates dropped"
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    assert_eq!(
        crate::inspect::validity_of(&crate::der::Cert::parse(&issued.cert_der).unwrap()),
        ca.validity(),
        "a device without a clock issues with the CA's dates"
    );
    check_issued_by(&issued.cert_der, ca.cert_der(), SystemTime::now()).unwrap();
    assert!(
        role_of(&issued.cert_der).is_err(),
        "a server certificate carries no role"
    );
}

#[test]
fn server_certificate_refuses_bad_names_and_too_many() {
    let ca = device_ca();
    let err = issue_server(&ca, "bad host", &[], ca.validity())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("\"bad host\" is not a valid name"), "{err}");
    let bad_san = [San::Dns("-x".into())];
    assert!(issue_server(&ca, "box", &bad_san, ca.validity()).is_err());
    let many: Vec<San> = (0..=MAX_SANS as u32)
        .map(|i| San::Ip(IpAddr::from((0x0a00_0000 + i).to_be_bytes())))
        .collect();
    let err = issue_server(&ca, "box", &many, ca.validity())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a server certificate takes at most 64"),
        "{err}"
    );
}

#[test]
fn a_certificate_from_another_ca_names_both_cas() {
    let (ours, theirs) = (client_ca(), client_ca());
    let foreign = issue_client(&theirs, "eve", Role::Admin, Validity::days_from_now(1)).unwrap();
    let err = check_issued_by(&foreign.cert_der, ours.cert_der(), SystemTime::now()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "it was issued by CA {}, not by the trusted CA {}",
            theirs.fingerprint(),
            ours.fingerprint()
        )
    );
    assert_ne!(theirs.fingerprint(), ours.fingerprint());
}

#[test]
fn a_forged_signature_is_caught_even_with_the_right_names() {
    let ca = client_ca();
    let mut der = issue_client(&ca, "alice", Role::Admin, Validity::days_from_now(1))
        .unwrap()
        .cert_der;
    // The signature is the last thing in the certificate; flip a bit inside its integer r or s.
    let n = der.len();
    der[n - 5] ^= 1;
    let err = check_issued_by(&der, ca.cert_der(), SystemTime::now()).unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err}");
}

#[test]
fn dates_are_checked_with_a_clear_message() {
    let ca = client_ca();
    let now = SystemTime::now();
    let past = Validity {
        not_before: now - 10 * DAY,
        not_after: now - DAY,
    };
    let old = issue_client(&ca, "alice", Role::Admin, past).unwrap();
    let err = check_issued_by(&old.cert_der, ca.cert_der(), now)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("certificate CN=alice, O=cairn:admin expired on "),
        "{err}"
    );
    assert!(err.ends_with("; issue a new one"), "{err}");
    check_issued_by(&old.cert_der, ca.cert_der(), now - 5 * DAY).unwrap();
    let err = check_issued_by(&old.cert_der, ca.cert_der(), now - 20 * DAY).unwrap_err();
    assert!(matches!(err, Error::NotYetValid { .. }), "{err}");
}

#[test]
fn client_validity_is_as_asked_and_backdated_an_hour() {
    let ca = client_ca();
    let issued = issue_client(&ca, "alice", Role::Admin, Validity::days_from_now(365)).unwrap();
    let v = crate::inspect::validity_of(&crate::der::Cert::parse(&issued.cert_der).unwrap());
    assert_eq!(secs(v.not_after) - secs(v.not_before), 365 * 86_400 + 3600);
    assert!(v.contains(SystemTime::now()));
}

#[test]
fn a_leaf_without_the_usage_its_ca_issues_for_is_refused() {
    let ca = device_ca();
    let leaf = custom_leaf(&ca, None, Some(ExtendedKeyUsagePurpose::ClientAuth));
    let err = check_issued_by(&leaf, ca.cert_der(), SystemTime::now())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "certificate CN=mallory lacks extendedKeyUsage serverAuth, which its CA issues for"
    );
}

#[test]
fn fingerprints_name_keys() {
    let ca = client_ca();
    assert_eq!(fingerprint(ca.cert_der()).unwrap(), ca.fingerprint());
    assert_eq!(
        issuer_fingerprint(ca.cert_der()).unwrap(),
        None,
        "self-signed: no AKI"
    );
    let a = issue_client(&ca, "a", Role::Admin, Validity::days_from_now(1)).unwrap();
    let b = issue_client(&ca, "a", Role::Admin, Validity::days_from_now(1)).unwrap();
    assert_ne!(
        a.fingerprint(),
        b.fingerprint(),
        "every leaf has its own key"
    );
    assert_ne!(a.fingerprint(), ca.fingerprint());
    let short = ca.fingerprint().to_string();
    assert_eq!(short.chars().count(), 9, "{short}");
    assert!(short.ends_with('…'));
}

#[test]
fn hostile_input_is_refused_without_panicking() {
    assert!(pem_to_der("").is_err());
    assert!(pem_to_der("not pem").is_err());
    let big = "A".repeat(MAX_PEM_BYTES + 1);
    assert!(matches!(pem_to_der(&big), Err(Error::TooLarge { .. })));
    let ca = client_ca();
    let err = pem_to_der(&ca.key_pem()).unwrap_err().to_string();
    assert!(
        err.contains("its first block is PRIVATE KEY, expected CERTIFICATE"),
        "{err}"
    );
    let mut der = ca.cert_der().to_vec();
    der.push(0);
    assert!(fingerprint(&der)
        .unwrap_err()
        .to_string()
        .contains("1 bytes follow"));
    for n in [0, 1, 10, der.len() / 2] {
        assert!(role_of(&der[..n]).is_err());
        assert!(check_issued_by(&der[..n], ca.cert_der(), SystemTime::now()).is_err());
    }
    assert!(Ca::from_pem(ca.cert_pem(), "garbage").is_err());
}

#[test]
fn maintenance_mode_identity_is_self_signed_and_named_by_its_fingerprint() {
    let (chain, key, fp) = ephemeral_server_identity("cairn-01").unwrap();
    let der = pem_to_der(&chain).unwrap();
    let cert = parse(&der);
    assert_eq!(
        cert.subject().to_string(),
        "CN=cairn-01, OU=maintenance mode"
    );
    assert_eq!(cert.issuer(), cert.subject(), "self-signed");
    cert.verify_signature(None).expect("signed by its own key");
    assert!(!cert.is_ca());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    assert!(
        cert.validity().is_valid(),
        "valid now, whatever the clock says"
    );
    assert_eq!(cert.validity().not_before.to_datetime().year(), 2000);
    assert_eq!(cert.validity().not_after.to_datetime().year(), 9999);

    // The fingerprint is the certificate key's, in full, as `{:#}` prints it.
    assert_eq!(fp, format!("{:#}", fingerprint(&der).unwrap()));
    assert_eq!(fp.len(), 40);
    assert!(fp
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    // The key is the certificate's.
    let key = KeyPair::from_pem(&key).unwrap();
    assert_eq!(
        Fingerprint::of_spki(&rcgen::PublicKeyData::subject_public_key_info(&key)).to_string(),
        fingerprint(&der).unwrap().to_string()
    );
    let names = cert.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(
        names.general_names.len(),
        4,
        "hostname, localhost, 127.0.0.1, ::1"
    );

    // A new key every time.
    let (_, _, again) = ephemeral_server_identity("cairn-01").unwrap();
    assert_ne!(fp, again);
    let err = ephemeral_server_identity("bad host")
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a valid name"), "{err}");
}

#[test]
fn a_subject_with_line_breaks_is_quoted_on_one_line() {
    // Found by the cert_der fuzz target: a certificate whose name holds a line break and a NUL
    // put them into the message as they were.
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "admin");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "cair\n\0min");
    let cert = params.self_signed(&key).unwrap();
    let e = role_of(cert.der()).unwrap_err().to_string();
    assert!(!e.contains('\n') && !e.contains('\0'), "{e:?}");
    assert!(e.contains("CN=admin, O=cair\\x0a\\x00min"), "{e}");
}
