//! Sealing against a real TPM 2.0 implementation: Debian's swtpm (tests/common).

use std::sync::{Arc, Mutex};

use cairn_tpm::transport::{Tcp, Transport};
use cairn_tpm::{
    policy_pcr_digest, seal, trial_policy_digest, unseal, PcrSelection, PrimaryAlg, SealedBlob,
    Token, Tpm, HT_LOADED_SESSION, HT_TRANSIENT, SECRET_LEN,
};
use serde_json::Value;
use zeroize::Zeroizing;

mod common;
use common::{start_swtpm, Swtpm};

#[test]
fn seal_unseal_round_trip() {
    let (_swtpm, mut tpm) = start_swtpm();
    let pcrs = PcrSelection::default();
    let (secret, blob) = seal(&mut tpm, &pcrs, PrimaryAlg::Ecc).unwrap();
    assert_eq!(secret.len(), SECRET_LEN);
    assert_ne!(secret.as_slice(), [0u8; SECRET_LEN]);
    assert_eq!(*unseal(&mut tpm, &blob).unwrap(), *secret);
    // Every handle was flushed: a second unseal works just the same.
    assert_eq!(*unseal(&mut tpm, &blob).unwrap(), *secret);
}

#[test]
fn round_trip_under_rsa_primary() {
    let (_swtpm, mut tpm) = start_swtpm();
    let pcrs = PcrSelection::sha256(&[0, 7]).unwrap();
    let (secret, blob) = seal(&mut tpm, &pcrs, PrimaryAlg::Rsa).unwrap();
    assert_eq!(*unseal(&mut tpm, &blob).unwrap(), *secret);

    // The same private part under the other primary does not load.
    let wrong = SealedBlob {
        primary_alg: PrimaryAlg::Ecc,
        ..blob
    };
    let err = unseal(&mut tpm, &wrong).unwrap_err();
    assert_eq!(
        err.to_string(),
        "TPM2_Load: integrity check failed: wrong parent key or damaged blob \
         (TPM_RC_INTEGRITY, parameter 1)"
    );
}

#[test]
fn unseal_fails_after_pcr_extend() {
    let (_swtpm, mut tpm) = start_swtpm();
    let (_, blob) = seal(&mut tpm, &PcrSelection::default(), PrimaryAlg::Ecc).unwrap();
    tpm.pcr_extend(7, &[0x42; 32]).unwrap();
    let err = unseal(&mut tpm, &blob).unwrap_err();
    assert!(err.is_policy_failure(), "{err:?}");
    assert_eq!(
        err.to_string(),
        "TPM2_Unseal: policy check failed (TPM_RC_POLICY_FAIL)"
    );
    assert_nothing_loaded(&mut tpm);
}

/// Nothing stays loaded in the TPM: a leaked object or session per boot would fill its slots
/// (a TPM holds a handful) on a device without the kernel's resource manager.
fn assert_nothing_loaded(tpm: &mut Tpm) {
    assert_eq!(tpm.loaded_handles(HT_TRANSIENT).unwrap(), Vec::<u32>::new());
    assert_eq!(
        tpm.loaded_handles(HT_LOADED_SESSION).unwrap(),
        Vec::<u32>::new()
    );
}

#[test]
fn seal_and_unseal_leave_nothing_loaded() {
    let (_swtpm, mut tpm) = start_swtpm();
    // The check itself sees what is loaded.
    let session = tpm.start_policy_session(false).unwrap();
    assert_eq!(tpm.loaded_handles(HT_LOADED_SESSION).unwrap().len(), 1);
    tpm.flush(session).unwrap();
    assert_nothing_loaded(&mut tpm);

    let (secret, blob) = seal(&mut tpm, &PcrSelection::default(), PrimaryAlg::Ecc).unwrap();
    assert_nothing_loaded(&mut tpm);
    for _ in 0..5 {
        assert_eq!(unseal(&mut tpm, &blob).unwrap(), secret);
        assert_nothing_loaded(&mut tpm);
    }
    let mut bad = blob.clone();
    bad.private[20] ^= 1;
    assert!(unseal(&mut tpm, &bad).is_err());
    assert_nothing_loaded(&mut tpm);
}

#[test]
fn other_pcr_selection_is_refused() {
    let (_swtpm, mut tpm) = start_swtpm();
    let (secret, blob) = seal(
        &mut tpm,
        &PcrSelection::sha256(&[8]).unwrap(),
        PrimaryAlg::Ecc,
    )
    .unwrap();
    assert_eq!(*unseal(&mut tpm, &blob).unwrap(), *secret);

    // PCRs 7 and 8 hold the same (zero) value, so only the selection differs.
    let pcr7 = SealedBlob {
        pcrs: PcrSelection::default(),
        ..blob.clone()
    };
    let err = unseal(&mut tpm, &pcr7).unwrap_err();
    assert!(err.is_policy_failure(), "{err:?}");

    // The same through the token: its tpm2-pcrs changed to [7].
    let mut token: Value = serde_json::from_str(&blob.to_token_json(&[1])).unwrap();
    token["tpm2-pcrs"] = serde_json::json!([7]);
    let edited = Token::from_json(&token.to_string()).unwrap();
    let err = unseal(&mut tpm, &edited.sealed).unwrap_err();
    assert_eq!(
        err.to_string(),
        "TPM2_Unseal: policy check failed (TPM_RC_POLICY_FAIL)"
    );

    // A policy hash that no longer matches the object is caught before the TPM is asked.
    token["tpm2-pcrs"] = serde_json::json!([8]);
    token["tpm2-policy-hash"] = "00".repeat(32).into();
    let edited = Token::from_json(&token.to_string()).unwrap();
    let err = unseal(&mut tpm, &edited.sealed).unwrap_err();
    assert!(
        err.to_string().contains("tpm2-policy-hash does not match"),
        "{err}"
    );
}

#[test]
fn software_policy_digest_matches_trial_session() {
    let (_swtpm, mut tpm) = start_swtpm();
    // Non-zero values in some of the PCRs, so ordering and concatenation matter.
    tpm.pcr_extend(7, &[1; 32]).unwrap();
    tpm.pcr_extend(16, &[2; 32]).unwrap();
    for pcrs in [vec![7], vec![8], vec![0, 7, 16], vec![16, 7, 1, 23]] {
        let sel = PcrSelection::sha256(&pcrs).unwrap();
        let values = tpm.pcr_values(&sel).unwrap();
        let software = policy_pcr_digest(&sel, &values);
        let trial = trial_policy_digest(&mut tpm, &sel).unwrap();
        assert_eq!(hex::encode(software), hex::encode(trial), "PCRs {pcrs:?}");
    }
    let (_, blob) = seal(&mut tpm, &PcrSelection::default(), PrimaryAlg::Ecc).unwrap();
    assert_eq!(blob.public_auth_policy().unwrap(), blob.policy_hash);
    assert_eq!(
        trial_policy_digest(&mut tpm, &PcrSelection::default()).unwrap(),
        blob.policy_hash
    );
}

#[test]
fn token_json_round_trip_unseals() {
    let (_swtpm, mut tpm) = start_swtpm();
    let (secret, blob) = seal(
        &mut tpm,
        &PcrSelection::sha256(&[7, 11]).unwrap(),
        PrimaryAlg::Ecc,
    )
    .unwrap();
    let json = blob.to_token_json(&[1]);
    let token = SealedBlob::from_token_json(&json).unwrap();
    assert_eq!(token.keyslots, [1]);
    assert_eq!(token.sealed, blob);
    assert_eq!(token.to_json(), json);
    assert_eq!(*unseal(&mut tpm, &token.sealed).unwrap(), *secret);
}

/// A token in the shape systemd-cryptenroll 254 writes (no `tpm2_srk`: the primary key is
/// recreated from the legacy template), with a blob sealed here, is read and unsealed.
#[test]
fn systemd_token_sample() {
    let (_swtpm, mut tpm) = start_swtpm();
    let (secret, blob) = seal(&mut tpm, &PcrSelection::default(), PrimaryAlg::Ecc).unwrap();
    let ours: Value = serde_json::from_str(&blob.to_token_json(&[0])).unwrap();
    let sample = format!(
        r#"{{"type":"systemd-tpm2","keyslots":["2"],"tpm2-blob":"{}","tpm2-pcrs":[7],"tpm2-pcr-bank":"sha256","tpm2-primary-alg":"ecc","tpm2-policy-hash":"{}","tpm2-pin":false,"tpm2_pcrlock":false}}"#,
        ours["tpm2-blob"].as_str().unwrap(),
        ours["tpm2-policy-hash"].as_str().unwrap(),
    );
    let token = Token::from_json(&sample).unwrap();
    assert_eq!(token.keyslots, [2]);
    assert_eq!(token.sealed.pcrs.pcrs(), [7]);
    assert_eq!(*unseal(&mut tpm, &token.sealed).unwrap(), *secret);

    // systemd 255 and later record the persistent SRK they sealed under; such a token reads,
    // keeps the field, and is refused at unseal time with a clear reason.
    let mut newer: Value = serde_json::from_str(&sample).unwrap();
    newer["tpm2_srk"] = "gAAAAQ==".into();
    let token = Token::from_json(&newer.to_string()).unwrap();
    assert_eq!(token.sealed.srk.as_deref(), Some("gAAAAQ=="));
    let back: Value = serde_json::from_str(&token.to_json()).unwrap();
    assert_eq!(back["tpm2_srk"], "gAAAAQ==");
    let err = unseal(&mut tpm, &token.sealed).unwrap_err();
    assert!(err.to_string().contains("tpm2_srk"), "{err}");
}

/// A transport that keeps a copy of every command and response.
struct Recording {
    inner: Tcp,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Transport for Recording {
    fn transact(&mut self, command: &[u8]) -> std::io::Result<Zeroizing<Vec<u8>>> {
        let response = self.inner.transact(command)?;
        let mut seen = self.seen.lock().unwrap();
        seen.extend_from_slice(command);
        seen.extend_from_slice(&response);
        Ok(response)
    }
}

/// Unseals `blob` over a recording connection; returns the secret and every byte exchanged.
fn unseal_recorded(swtpm: &Swtpm, blob: &SealedBlob) -> (Vec<u8>, Vec<u8>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let inner = Tcp::connect(format!("127.0.0.1:{}", swtpm.port)).unwrap();
    let mut tpm = Tpm::new(Box::new(Recording {
        inner,
        seen: seen.clone(),
    }));
    let secret = unseal(&mut tpm, blob).unwrap().to_vec();
    drop(tpm);
    let bytes = seen.lock().unwrap().clone();
    (secret, bytes)
}

/// Under an ECC primary the unseal runs in a salted session that encrypts the response: the
/// secret is not in the bytes on the wire. Under an RSA primary (unsalted) it is, which shows
/// the check can see it.
#[test]
fn the_unsealed_secret_crosses_the_wire_encrypted() {
    let (swtpm, mut tpm) = start_swtpm();
    let (secret, ecc) = seal(&mut tpm, &PcrSelection::default(), PrimaryAlg::Ecc).unwrap();
    let (rsa_secret, rsa) = seal(&mut tpm, &PcrSelection::default(), PrimaryAlg::Rsa).unwrap();
    drop(tpm);

    let (unsealed, wire) = unseal_recorded(&swtpm, &ecc);
    assert_eq!(unsealed, secret.to_vec());
    assert!(
        !wire.windows(SECRET_LEN).any(|w| w == secret.as_slice()),
        "the secret crossed the wire in the clear"
    );

    let (unsealed, wire) = unseal_recorded(&swtpm, &rsa);
    assert_eq!(unsealed, rsa_secret.to_vec());
    assert!(wire.windows(SECRET_LEN).any(|w| w == rsa_secret.as_slice()));
}

/// Sealing under an ECC primary sends the new secret in a salted session that encrypts it:
/// the secret is not in the bytes of the seal (nor of a signed seal); sealing under an RSA
/// primary (no salted session) sends it in the clear, which shows the check can see it.
#[test]
fn the_sealed_secret_crosses_the_wire_encrypted() {
    let (swtpm, tpm) = start_swtpm();
    drop(tpm);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tpm = Tpm::new(Box::new(Recording {
        inner: Tcp::connect(format!("127.0.0.1:{}", swtpm.port)).unwrap(),
        seen: seen.clone(),
    }));
    let wire = |seen: &Arc<Mutex<Vec<u8>>>| std::mem::take(&mut *seen.lock().unwrap());

    let (secret, _) = seal(&mut tpm, &PcrSelection::default(), PrimaryAlg::Ecc).unwrap();
    assert!(!wire(&seen)
        .windows(SECRET_LEN)
        .any(|w| w == secret.as_slice()));

    let key = cairn_tpm::PcrPublicKey::from_pem(RSA_PUBLIC_PEM.as_bytes()).unwrap();
    let (secret, _) = cairn_tpm::seal_signed(&mut tpm, &key, &PcrSelection::default()).unwrap();
    assert!(!wire(&seen)
        .windows(SECRET_LEN)
        .any(|w| w == secret.as_slice()));

    let (secret, _) = seal(&mut tpm, &PcrSelection::default(), PrimaryAlg::Rsa).unwrap();
    assert!(wire(&seen)
        .windows(SECRET_LEN)
        .any(|w| w == secret.as_slice()));
}

/// A 2048-bit RSA public key (openssl genrsa 2048 | openssl rsa -pubout).
const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEArb7zHFvbgMzwhbD7abNh
qz34w9b8CGh97DTw3AENVyMor9XkwLjcn/ub3wf555ZVTvzEASQLWjfBkIAkHrlR
9ujJqonzjCxNRYgyU+PCDlc5xjcHnxoPZbWc+aqtDYr7Exy0+n/HhmOVrxbmvqCa
aunHwdQ5zCJY/tHNae3zYcEgX5il8zqvtnDrTHHBXlkT6KdxvfayjlogbJ//9Uvf
TijcqbivqdmK8ZxXPlZxA2cb6dg8lxbpvB6bljPIrKyy5Yuf5QHer7VpACXeBi2Y
Ys6fC+sWLAQUUyJkC6Z/DHvQCTFTc497TW8U17dwcDfJfgut+ZnbNQaI6byfOBP3
aQIDAQAB
-----END PUBLIC KEY-----
";
