//! Signed PCR policies against swtpm: a secret sealed under PolicyAuthorize of a release key
//! opens for a PCR 11 the key signed (with the anti-rollback floor), and for nothing else.

use cairn_tpm::floor;
use cairn_tpm::pcrsig::{PcrSignature, PcrSigningKey};
use cairn_tpm::uki::{predict_pcr11, UkiParts};
use cairn_tpm::{
    seal_signed, unseal, unseal_signed, Error, PcrBank, PcrSelection, SealedBlob, Token, Tpm,
    HT_LOADED_SESSION, HT_TRANSIENT,
};
use sha2::{Digest, Sha256};

mod common;

/// A fresh 2048-bit RSA key from openssl, as `cairnctl keys gen-secureboot` leaves one.
fn rsa_key() -> PcrSigningKey {
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "2048"])
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{out:?}");
    PcrSigningKey::from_pem(&out.stdout).unwrap()
}

/// A UKI's parts, with a command line of the test's choosing and a `.pcrpkey` (measured too).
fn parts(cmdline: &'static [u8]) -> UkiParts<'static> {
    UkiParts {
        linux: b"MZ a kernel",
        osrel: Some(b"ID=cairn\n"),
        cmdline: Some(cmdline),
        initrd: Some(b"070701 an initramfs"),
        pcrpkey: Some(b"-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n"),
        ..Default::default()
    }
}

/// Measures a UKI into PCR 11 as systemd's stub does, from a fresh TPM (PCR 11 zero).
fn boot(tpm: &mut Tpm, uki: &UkiParts<'_>) {
    for (name, data) in uki.sections() {
        let mut named = name.as_bytes().to_vec();
        named.push(0);
        tpm.pcr_extend(11, &Sha256::digest(&named).into()).unwrap();
        tpm.pcr_extend(11, &Sha256::digest(data).into()).unwrap();
    }
}

fn pcr11(tpm: &mut Tpm) -> [u8; 32] {
    tpm.pcr_read(PcrBank::Sha256, 11)
        .unwrap()
        .try_into()
        .unwrap()
}

fn signature(key: &PcrSigningKey, uki: &UkiParts<'_>, version: u64) -> PcrSignature {
    key.sign_uki(uki, version)
}

fn nothing_loaded(tpm: &mut Tpm) {
    assert_eq!(tpm.loaded_handles(HT_TRANSIENT).unwrap(), Vec::<u32>::new());
    assert_eq!(
        tpm.loaded_handles(HT_LOADED_SESSION).unwrap(),
        Vec::<u32>::new()
    );
}

#[test]
fn a_signed_release_unseals_and_the_booted_pcr11_is_the_prediction() {
    let (_swtpm, mut tpm) = common::start_swtpm();
    let key = rsa_key();
    let uki = parts(b"console=ttyS0 cairn.slot=a");
    boot(&mut tpm, &uki);
    assert_eq!(pcr11(&mut tpm), predict_pcr11(&uki));
    assert_eq!(floor::raise(&mut tpm, 1).unwrap(), 1);

    let fixed = PcrSelection::sha256(&[7]).unwrap();
    let (secret, blob) = seal_signed(&mut tpm, key.public_key(), &fixed).unwrap();
    nothing_loaded(&mut tpm);
    let sig = signature(&key, &uki, 1);
    assert_eq!(*unseal_signed(&mut tpm, &blob, &sig).unwrap(), *secret);
    nothing_loaded(&mut tpm);

    // The token carries systemd's fields, and reads back to a blob that unseals.
    let json = blob.to_token_json(&[0]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["tpm2_pubkey_pcrs"], serde_json::json!([11]));
    assert_eq!(v["tpm2-pcrs"], serde_json::json!([7]));
    assert_eq!(v["cairn_floor_nv"], "0x0100ca17");
    let pem = base64_decode(v["tpm2_pubkey"].as_str().unwrap());
    assert!(pem.starts_with(b"-----BEGIN PUBLIC KEY-----\n"));
    let back = Token::from_json(&json).unwrap();
    assert_eq!(back.sealed, blob);
    assert_eq!(
        *unseal_signed(&mut tpm, &back.sealed, &sig).unwrap(),
        *secret
    );

    // An update: another kernel command line, signed for the same floor, unseals with no
    // re-seal (a fresh TPM stands for the reboot into it; the floor is raised there too).
    let (_swtpm2, mut tpm2) = common::start_swtpm();
    let update = parts(b"console=ttyS0 cairn.slot=b");
    boot(&mut tpm2, &update);
    floor::raise(&mut tpm2, 1).unwrap();
    // (The blob is bound to the first TPM; on the second one, seal again to play the box.)
    let (secret2, blob2) = seal_signed(&mut tpm2, key.public_key(), &fixed).unwrap();
    let new_release = signature(&key, &update, 2);
    assert_eq!(
        *unseal_signed(&mut tpm2, &blob2, &new_release).unwrap(),
        *secret2
    );
    // The plain PCR unseal refuses a signed blob instead of ignoring the signature.
    let e = unseal(&mut tpm2, &blob2).unwrap_err();
    assert!(e.to_string().contains("no PCR signature was given"), "{e}");
}

#[test]
fn another_key_an_unsigned_boot_and_a_forged_token_are_refused() {
    let (_swtpm, mut tpm) = common::start_swtpm();
    let (key, other) = (rsa_key(), rsa_key());
    let uki = parts(b"console=ttyS0");
    boot(&mut tpm, &uki);
    floor::raise(&mut tpm, 0).unwrap();
    let (_, blob) = seal_signed(
        &mut tpm,
        key.public_key(),
        &PcrSelection::none(PcrBank::Sha256),
    )
    .unwrap();

    // Signed by another key: no entry by the sealing key.
    let e = unseal_signed(&mut tpm, &blob, &signature(&other, &uki, 0)).unwrap_err();
    assert!(matches!(e, Error::Unsigned(_)), "{e}");
    assert!(e.is_policy_failure());

    // Another key's signature passed off as the sealing key's (its fingerprint written in):
    // the TPM's VerifySignature refuses it.
    let mut forged = signature(&other, &uki, 0);
    forged.sha256[0].pkfp = key.public_key().fingerprint();
    let e = unseal_signed(&mut tpm, &blob, &forged)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not verify with key"), "{e}");
    nothing_loaded(&mut tpm);

    // The token's key swapped for the other one, with the other key's signature: the TPM
    // verifies the signature, but the sealed object's policy names the first key.
    let swapped = SealedBlob {
        signed: Some(other.public_key().clone()),
        ..blob.clone()
    };
    let e = unseal_signed(&mut tpm, &swapped, &signature(&other, &uki, 0)).unwrap_err();
    assert!(e.is_policy_failure(), "{e}");
    assert_eq!(
        e.to_string(),
        "TPM2_Unseal: policy check failed (TPM_RC_POLICY_FAIL)"
    );
    nothing_loaded(&mut tpm);

    // A bare systemd-measure signature (PolicyPCR(11) alone) by the right key does not stand
    // in for a release's: it lacks the floor check.
    let bare = PcrSignature {
        sha256: vec![key.sign_pcr11(&predict_pcr11(&uki))],
    };
    let e = unseal_signed(&mut tpm, &blob, &bare)
        .unwrap_err()
        .to_string();
    assert!(e.contains("only without the anti-rollback check"), "{e}");

    // An edited command line (not re-signed): PCR 11 is not what the key signed.
    let (_swtpm2, mut tpm2) = common::start_swtpm();
    floor::raise(&mut tpm2, 0).unwrap();
    let (_, blob2) = seal_signed(
        &mut tpm2,
        key.public_key(),
        &PcrSelection::none(PcrBank::Sha256),
    )
    .unwrap();
    boot(&mut tpm2, &parts(b"console=ttyS0 init=/bin/sh"));
    let e = unseal_signed(&mut tpm2, &blob2, &signature(&key, &uki, 0)).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("not a signed release: no signature of this boot's PCR 11"),
        "{e}"
    );
}

#[test]
fn a_release_below_the_floor_cannot_unseal_although_signed() {
    let (_swtpm, mut tpm) = common::start_swtpm();
    let key = rsa_key();
    let uki = parts(b"console=ttyS0");
    boot(&mut tpm, &uki);
    assert_eq!(floor::read(&mut tpm).unwrap(), None);
    assert_eq!(floor::raise(&mut tpm, 3).unwrap(), 3);
    let (secret, blob) = seal_signed(
        &mut tpm,
        key.public_key(),
        &PcrSelection::sha256(&[7]).unwrap(),
    )
    .unwrap();

    let v3 = signature(&key, &uki, 3);
    assert_eq!(*unseal_signed(&mut tpm, &blob, &v3).unwrap(), *secret);
    // An older release, same kernel and all, signed by the same key.
    let e = unseal_signed(&mut tpm, &blob, &signature(&key, &uki, 2)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "release refused by the anti-rollback floor: this release's security version is 2, \
         the device's floor is 3"
    );
    nothing_loaded(&mut tpm);

    // The floor never goes down; raised, it shuts out the release that opened before.
    assert_eq!(floor::raise(&mut tpm, 1).unwrap(), 3);
    assert_eq!(floor::raise(&mut tpm, 4).unwrap(), 4);
    assert_eq!(floor::read(&mut tpm).unwrap(), Some(4));
    let e = unseal_signed(&mut tpm, &blob, &v3).unwrap_err();
    assert!(matches!(e, Error::BelowFloor(_)), "{e}");
    let v4 = signature(&key, &uki, 4);
    assert_eq!(*unseal_signed(&mut tpm, &blob, &v4).unwrap(), *secret);
}

#[test]
fn a_pcr7_change_refuses_until_a_new_seal_then_opens_silently() {
    let (_swtpm, mut tpm) = common::start_swtpm();
    let key = rsa_key();
    let uki = parts(b"console=ttyS0");
    boot(&mut tpm, &uki);
    floor::raise(&mut tpm, 0).unwrap();
    let pcr7 = PcrSelection::sha256(&[7]).unwrap();
    let (_, blob) = seal_signed(&mut tpm, key.public_key(), &pcr7).unwrap();
    let sig = signature(&key, &uki, 0);
    unseal_signed(&mut tpm, &blob, &sig).unwrap();

    // A firmware update (a new db, say) moves PCR 7.
    tpm.pcr_extend(7, &[0x5B; 32]).unwrap();
    let e = unseal_signed(&mut tpm, &blob, &sig).unwrap_err();
    assert!(e.is_policy_failure(), "{e}");
    // (The recovery key opens the volumes here.) A new seal to the PCR 7 now, verified by
    // unsealing it once, replaces the old; from then on the same boot unseals silently.
    let (secret, resealed) = seal_signed(&mut tpm, key.public_key(), &pcr7).unwrap();
    assert_eq!(*unseal_signed(&mut tpm, &resealed, &sig).unwrap(), *secret);
    assert_eq!(*unseal_signed(&mut tpm, &resealed, &sig).unwrap(), *secret);
    nothing_loaded(&mut tpm);
}

#[test]
fn malformed_signed_tokens_are_named() {
    let (_swtpm, mut tpm) = common::start_swtpm();
    let key = rsa_key();
    floor::raise(&mut tpm, 0).unwrap();
    let (_, blob) = seal_signed(
        &mut tpm,
        key.public_key(),
        &PcrSelection::none(PcrBank::Sha256),
    )
    .unwrap();
    let json = blob.to_token_json(&[0]);
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        f(&mut v);
        Token::from_json(&v.to_string()).unwrap_err().to_string()
    };
    assert_eq!(
        edit(&|v| v["tpm2_pubkey"] = "bm90IGEga2V5".into()),
        "systemd-tpm2 token rejected: tpm2_pubkey: PCR public key rejected: not PEM (no -----BEGIN line)"
    );
    assert_eq!(
        edit(&|v| v["tpm2_pubkey_pcrs"] = serde_json::json!([7, 11])),
        "systemd-tpm2 token rejected: tpm2_pubkey_pcrs is [7, 11]; only [11] (the UKI's PCR) is supported"
    );
    assert!(edit(&|v| {
        v.as_object_mut().unwrap().remove("cairn_floor_nv");
    })
    .contains("a signed policy without Cairn's anti-rollback floor is not supported"));
    // A signed token with no fixed PCRs (Secure Boot off) is valid; an unsigned one is not.
    assert_eq!(Token::from_json(&json).unwrap().sealed, blob);
    assert_eq!(
        edit(&|v| {
            v.as_object_mut().unwrap().remove("tpm2_pubkey");
            v.as_object_mut().unwrap().remove("tpm2_pubkey_pcrs");
        }),
        "systemd-tpm2 token rejected: tpm2-pcrs is empty and there is no tpm2_pubkey: no policy"
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}
