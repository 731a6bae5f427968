//! Interop with OpenSSL, the verifier most peers of the API will resemble: it must accept what
//! `gen secrets` and a device make, read the role and usages as we mean them, and refuse
//! certificates from another CA, including ones minted with a stolen device CA key. And the other
//! way round: certificates OpenSSL makes read back with our role parser.

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use cairn_pki::secrets::{Options, Secrets};
use cairn_pki::{check_issued_by, issue_server, pem_to_der, role_of, Ca, Role, San};

/// Runs `openssl` in `dir`; returns success and stdout+stderr.
fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI (Debian package openssl) runs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn secrets_in(dir: &Path) -> Secrets {
    let secrets = Secrets::generate(&Options {
        name: "Interop".into(),
        client_days: 30,
    })
    .unwrap();
    secrets.write_new(dir).unwrap();
    secrets
}

#[test]
fn openssl_verifies_client_certificates_and_reads_role_and_usage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    secrets_in(&dir);
    for role in Role::ALL {
        let crt = format!("{}.crt", role.name());
        let (ok, out) = openssl(
            &dir,
            &[
                "verify",
                "-purpose",
                "sslclient",
                "-CAfile",
                "client-ca.crt",
                &crt,
            ],
        );
        assert!(ok, "{out}");
        assert_eq!(out.trim(), format!("{crt}: OK"));
        let (ok, out) = openssl(&dir, &["x509", "-noout", "-subject", "-in", &crt]);
        assert!(ok, "{out}");
        assert_eq!(
            out.trim(),
            format!("subject=CN = {}, O = {}", role.name(), role.organization())
        );
        let (ok, out) = openssl(
            &dir,
            &[
                "x509",
                "-noout",
                "-ext",
                "extendedKeyUsage,basicConstraints",
                "-in",
                &crt,
            ],
        );
        assert!(ok, "{out}");
        assert!(out.contains("TLS Web Client Authentication"), "{out}");
        assert!(!out.contains("Server Authentication"), "{out}");
        assert!(out.contains("CA:FALSE"), "{out}");
        // The key is P-256 and belongs to the certificate.
        let key = format!("{}.key", role.name());
        let (ok, text) = openssl(&dir, &["pkey", "-in", &key, "-noout", "-text"]);
        assert!(ok && text.contains("prime256v1"), "{text}");
        let (_, from_key) = openssl(&dir, &["pkey", "-in", &key, "-pubout"]);
        let (_, from_cert) = openssl(&dir, &["x509", "-in", &crt, "-noout", "-pubkey"]);
        assert_eq!(from_key, from_cert);
    }
}

#[test]
fn openssl_sees_constrained_cas_whose_key_id_is_our_fingerprint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let secrets = secrets_in(&dir);
    for (ca, file, eku) in [
        (
            &secrets.client_ca,
            "client-ca.crt",
            "TLS Web Client Authentication",
        ),
        (
            &secrets.device_ca,
            "device-ca.crt",
            "TLS Web Server Authentication",
        ),
    ] {
        let (ok, out) = openssl(
            &dir,
            &[
                "x509",
                "-noout",
                "-ext",
                "basicConstraints,keyUsage,extendedKeyUsage,subjectKeyIdentifier",
                "-in",
                file,
            ],
        );
        assert!(ok, "{out}");
        assert!(out.contains("critical\n    CA:TRUE, pathlen:0"), "{out}");
        assert!(out.contains("Certificate Sign"), "{out}");
        assert!(out.contains(eku), "{out}");
        let ski = format!("{:#}", ca.fingerprint()).to_uppercase();
        let ski_colons: Vec<&str> = (0..ski.len()).step_by(2).map(|i| &ski[i..i + 2]).collect();
        assert!(out.contains(&ski_colons.join(":")), "SKI {ski} in {out}");
        let (ok, out) = openssl(&dir, &["verify", "-CAfile", file, file]);
        assert!(ok, "{out}");
    }
}

#[test]
fn openssl_refuses_a_client_certificate_from_another_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let (ours, theirs) = (tmp.path().join("ours"), tmp.path().join("theirs"));
    secrets_in(&ours);
    secrets_in(&theirs);
    let foreign = theirs.join("admin.crt");
    let (ok, out) = openssl(
        &ours,
        &[
            "verify",
            "-CAfile",
            "client-ca.crt",
            foreign.to_str().unwrap(),
        ],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("unable to get local issuer certificate"),
        "{out}"
    );
}

#[test]
fn a_stolen_device_ca_key_cannot_mint_a_client_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    secrets_in(&dir);
    // The thief has device/ and uses OpenSSL to mint an admin client certificate from it.
    let ext = dir.join("client.ext");
    std::fs::write(
        &ext,
        "extendedKeyUsage=clientAuth\nauthorityKeyIdentifier=keyid\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let steps: &[&[&str]] = &[
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "forged.key",
        ],
        &[
            "req",
            "-new",
            "-key",
            "forged.key",
            "-subj",
            "/CN=thief/O=cairn:admin",
            "-out",
            "forged.csr",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "forged.csr",
            "-CA",
            "device/device-ca.crt",
            "-CAkey",
            "device/device-ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "client.ext",
            "-out",
            "forged.crt",
        ],
    ];
    for step in steps {
        let (ok, out) = openssl(&dir, step);
        assert!(ok, "{step:?}: {out}");
    }
    let forged = pem_to_der(&std::fs::read_to_string(dir.join("forged.crt")).unwrap()).unwrap();
    assert_eq!(
        role_of(&forged).unwrap(),
        Role::Admin,
        "it does claim admin"
    );
    // What devices trust for clients: only the client CA.
    let (ok, out) = openssl(
        &dir,
        &[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            "device/client-ca.crt",
            "forged.crt",
        ],
    );
    assert!(!ok, "{out}");
    // Even a verifier wrongly given the device CA as a client anchor refuses it: the CA's EKU says
    // serverAuth only.
    let (ok, out) = openssl(
        &dir,
        &[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            "device-ca.crt",
            "forged.crt",
        ],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("at 1 depth lookup: unsuitable certificate purpose"),
        "{out}"
    );
    let client_ca = std::fs::read_to_string(dir.join("client-ca.crt")).unwrap();
    let err = check_issued_by(&forged, &pem_to_der(&client_ca).unwrap(), SystemTime::now())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("it was issued by CA "), "{err}");
}

#[test]
fn openssl_verifies_a_device_server_certificate_by_name_and_address() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    secrets_in(&dir);
    // What the device does on first boot, from the files the image embeds.
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let ca = Ca::from_pem(&read("device/device-ca.crt"), &read("device/device-ca.key")).unwrap();
    let sans = ["10.0.2.15".parse::<San>().unwrap()];
    let issued = issue_server(&ca, "cairn-01", &sans, ca.validity()).unwrap();
    std::fs::write(dir.join("server.crt"), &issued.cert_pem).unwrap();
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            "device-ca.crt",
        ];
        args.extend_from_slice(extra);
        args.push("server.crt");
        openssl(&dir, &args)
    };
    for extra in [
        &[][..],
        &["-verify_hostname", "cairn-01"],
        &["-verify_hostname", "localhost"],
        &["-verify_ip", "127.0.0.1"],
        &["-verify_ip", "::1"],
        &["-verify_ip", "10.0.2.15"],
    ] {
        let (ok, out) = verify(extra);
        assert!(ok, "{extra:?}: {out}");
    }
    let (ok, out) = verify(&["-verify_hostname", "cairn-02"]);
    assert!(!ok && out.contains("hostname mismatch"), "{out}");
    // A server certificate is no client certificate.
    let (ok, out) = openssl(
        &dir,
        &[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            "device-ca.crt",
            "server.crt",
        ],
    );
    assert!(!ok, "{out}");
    let (ok, out) = openssl(&dir, &["verify", "-CAfile", "client-ca.crt", "server.crt"]);
    assert!(!ok, "{out}");
}

#[test]
fn roles_in_certificates_openssl_made_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    secrets_in(&dir);
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    let mint = |name: &str, subj: &str| {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        let steps: [Vec<&str>; 3] = [
            vec![
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &key,
            ],
            vec!["req", "-new", "-key", &key, "-subj", subj, "-out", &csr],
            vec![
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "client-ca.crt",
                "-CAkey",
                "client-ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "client.ext",
                "-out",
                &crt,
            ],
        ];
        for step in &steps {
            let (ok, out) = openssl(&dir, step);
            assert!(ok, "{step:?}: {out}");
        }
        pem_to_der(&std::fs::read_to_string(dir.join(&crt)).unwrap()).unwrap()
    };
    let operator = mint("op", "/CN=bob/O=cairn:operator");
    assert_eq!(role_of(&operator).unwrap(), Role::Operator);
    let two = mint("two", "/CN=eve/O=cairn:reader/O=cairn:admin");
    let err = role_of(&two).unwrap_err().to_string();
    assert!(
        err.contains("names 2 Organizations; a Cairn client certificate has exactly one"),
        "{err}"
    );
    let upper = mint("upper", "/CN=eve/O=CAIRN:ADMIN");
    assert!(role_of(&upper).is_err());
}
