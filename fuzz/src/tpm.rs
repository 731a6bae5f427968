//! What the TPM fuzz targets feed `cairn-tpm`, and the seed corpus they start from.
//!
//! The one idea: both the token in a LUKS2 header and the TPM's answers come from outside the
//! program (a disk moved from another machine, a TPM or an interposer on its bus), so reading
//! them must never panic or allocate without bound, and what is accepted must keep the
//! promises the unlock path relies on. Two targets:
//!
//! - `tpm_token`: the input is the token JSON. An accepted token names at most 32 keyslots,
//!   each below 32, and reads back unchanged from the JSON this crate writes for it.
//! - `tpm_response`: the input is a series of TPM responses, each as long as its header says
//!   (at most `MAX_RESPONSE`), served in order to the commands that starting the TPM, reading
//!   PCRs, listing handles, a trial policy, sealing and unsealing send. Every PCR value taken
//!   has the bank's digest length, and every error is one line. A response asking for the
//!   command again (`TPM_RC_RETRY` and the like) ends the input instead, since the crate
//!   pauses before retrying and a fuzzer would only measure the pause.

use std::io;

use cairn_tpm::transport::{Transport, MAX_RESPONSE};
use cairn_tpm::{
    seal, seal_signed, trial_policy_digest, unseal, unseal_signed, PcrBank, PcrPublicKey,
    PcrSelection, PcrSignature, PrimaryAlg, ResponseCode, SealedBlob, Token, Tpm, HT_TRANSIENT,
};
use zeroize::Zeroizing;

/// Reads a token JSON and checks what an accepted token promises; the same bytes are also
/// read as a PCR signature JSON (`.pcrsig`) and a PEM public key (`.pcrpkey`), which come from
/// the booted image and the token.
pub fn check_token(data: &[u8]) {
    match PcrSignature::from_json(data) {
        Ok(sig) => {
            let back = PcrSignature::from_json(sig.to_json().as_bytes())
                .unwrap_or_else(|e| panic!("the signature's own JSON is refused ({e})"));
            assert_eq!(
                back, sig,
                "the signature changed on the way through its JSON"
            );
        }
        Err(e) => check_error(&e),
    }
    match PcrPublicKey::from_pem(data) {
        Ok(key) => assert_eq!(
            PcrPublicKey::from_pem(key.to_pem().as_bytes()).unwrap(),
            key
        ),
        Err(e) => check_error(&e),
    }
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    let token = match Token::from_json(json) {
        Ok(token) => token,
        Err(e) => return check_error(&e),
    };
    assert!(token.keyslots.len() <= 32);
    assert!(token.keyslots.iter().all(|&k| k < 32));
    assert!(token.sealed.pcrs.pcrs().iter().all(|&p| p < 24));
    let written = token.to_json();
    let back = Token::from_json(&written)
        .unwrap_or_else(|e| panic!("the token's own JSON is refused ({e}): {written}"));
    assert_eq!(back, token, "the token changed on the way through its JSON");
}

fn check_error(e: &dyn std::error::Error) {
    let text = e.to_string();
    assert!(!text.contains(['\n', '\r']), "not one line: {text:?}");
}

/// Serves the input as TPM responses, one per command, until it runs out.
struct Replay {
    data: Vec<u8>,
    at: usize,
}

impl Transport for Replay {
    fn transact(&mut self, _command: &[u8]) -> io::Result<Zeroizing<Vec<u8>>> {
        let rest = &self.data[self.at..];
        let ended = || io::Error::new(io::ErrorKind::UnexpectedEof, "no more responses");
        if rest.len() < 10 {
            return Err(ended());
        }
        let size = u32::from_be_bytes([rest[2], rest[3], rest[4], rest[5]]) as usize;
        let rc = u32::from_be_bytes([rest[6], rest[7], rest[8], rest[9]]);
        if ResponseCode(rc).is_transient() {
            return Err(ended());
        }
        // A device read returns at most MAX_RESPONSE bytes, whatever the header claims.
        let n = size.clamp(10, MAX_RESPONSE).min(rest.len());
        self.at += n;
        Ok(Zeroizing::new(rest[..n].to_vec()))
    }
}

/// A sealed object's public area whose authPolicy is `policy`, as the crate writes one.
fn sealed_public(policy: &[u8; 32]) -> Vec<u8> {
    let mut public = vec![0x00, 0x08, 0x00, 0x0B, 0x00, 0x00, 0x04, 0x12, 0x00, 0x20];
    public.extend_from_slice(policy);
    public.extend_from_slice(&[0x00, 0x10, 0x00, 0x00]);
    public
}

fn blob(primary_alg: PrimaryAlg) -> SealedBlob {
    let policy = [0x5c; 32];
    SealedBlob {
        private: vec![0xaa; 48],
        public: sealed_public(&policy),
        pcrs: PcrSelection::sha256(&[7, 11]).expect("a valid selection"),
        primary_alg,
        policy_hash: policy,
        srk: None,
        signed: None,
    }
}

/// A 2048-bit RSA public key (a made-up modulus: only its shape matters here).
fn test_key() -> PcrPublicKey {
    let mut der = vec![0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01, 0x00];
    der.extend_from_slice(&[0xc3; 256]);
    der.extend_from_slice(&[0x02, 0x03, 0x01, 0x00, 0x01]);
    PcrPublicKey::from_pkcs1_der(&der).expect("a well-formed key")
}

/// Runs the crate's TPM conversations against the responses in `data`.
pub fn check_responses(data: &[u8]) {
    let mut tpm = Tpm::new(Box::new(Replay {
        data: data.to_vec(),
        at: 0,
    }));
    let pcrs = PcrSelection::sha256(&[7, 11]).expect("a valid selection");
    let mut errors = Vec::new();
    errors.extend(tpm.startup_clear().err());
    errors.extend(tpm.get_random(32).err());
    match tpm.pcr_values(&pcrs) {
        Ok(values) => {
            assert_eq!(values.len(), 2);
            for value in values {
                assert_eq!(value.len(), PcrBank::Sha256.digest_len());
            }
        }
        Err(e) => errors.push(e),
    }
    errors.extend(tpm.loaded_handles(HT_TRANSIENT).err());
    errors.extend(trial_policy_digest(&mut tpm, &pcrs).err());
    errors.extend(unseal(&mut tpm, &blob(PrimaryAlg::Rsa)).err());
    errors.extend(unseal(&mut tpm, &blob(PrimaryAlg::Ecc)).err());
    errors.extend(seal(&mut tpm, &pcrs, PrimaryAlg::Ecc).err());
    let signed = SealedBlob {
        signed: Some(test_key()),
        ..blob(PrimaryAlg::Ecc)
    };
    let sig = PcrSignature::default();
    errors.extend(unseal_signed(&mut tpm, &signed, &sig).err());
    errors.extend(seal_signed(&mut tpm, &test_key(), &pcrs).err());
    for e in &errors {
        check_error(e);
    }
}

/// One successful response without sessions: `handles`, then `params`.
fn response(handles: &[u32], params: &[u8]) -> Vec<u8> {
    let size = 10 + 4 * handles.len() + params.len();
    let mut out = vec![0x80, 0x01];
    out.extend_from_slice(&u32::try_from(size).expect("small").to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    for h in handles {
        out.extend_from_slice(&h.to_be_bytes());
    }
    out.extend_from_slice(params);
    out
}

fn tpm2b(bytes: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(bytes.len())
        .expect("short")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A PCR_Read answer for one sha256 PCR.
fn pcr_read(pcr: u8, value: u8) -> Vec<u8> {
    let mut select = [0u8; 3];
    select[usize::from(pcr / 8)] = 1 << (pcr % 8);
    let mut params = vec![0, 0, 0, 9, 0, 0, 0, 1, 0x00, 0x0B, 3];
    params.extend_from_slice(&select);
    params.extend_from_slice(&[0, 0, 0, 1]);
    params.extend(tpm2b(&[value; 32]));
    response(&[], &params)
}

/// The seed corpus, as (target, file name, bytes).
pub fn seeds() -> Vec<crate::Seed> {
    let mut out = Vec::new();
    for (name, alg, keyslots) in [
        ("ecc", PrimaryAlg::Ecc, &[1][..]),
        ("rsa", PrimaryAlg::Rsa, &[0, 5]),
    ] {
        let mut sealed = blob(alg);
        if name == "rsa" {
            sealed.pcrs = PcrSelection::new(PcrBank::Sha256, &[0, 2, 4, 7]).expect("a selection");
            sealed.srk = Some("AAAAAQ==".into());
        }
        let token = Token {
            keyslots: keyslots.to_vec(),
            sealed,
        };
        out.push((
            "tpm_token",
            format!("{name}.json"),
            token.to_json().into_bytes(),
        ));
    }
    // What systemd-cryptenroll writes, with fields this crate ignores.
    let systemd = r#"{"type":"systemd-tpm2","keyslots":["1"],"tpm2-blob":"AAIBAgADAQID",
        "tpm2-pcrs":[7],"tpm2-pcr-bank":"sha256","tpm2-primary-alg":"ecc",
        "tpm2-policy-hash":"5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c",
        "tpm2-pin":false,"tpm2_pcrlock":false,"tpm2_salt":[],"tpm2_srk":null}"#;
    out.push((
        "tpm_token",
        "systemd.json".into(),
        systemd.as_bytes().to_vec(),
    ));

    let mut conversation = Vec::new();
    conversation.extend(response(&[], &[])); // Startup
    conversation.extend(response(&[], &tpm2b(&[0x42; 32]))); // GetRandom
    conversation.extend(pcr_read(7, 1));
    conversation.extend(pcr_read(11, 2));
    // GetCapability: no more, TPM_CAP_HANDLES, two transient objects.
    let mut handles = vec![0, 0, 0, 0, 1, 0, 0, 0, 2];
    handles.extend_from_slice(&0x8000_0000u32.to_be_bytes());
    handles.extend_from_slice(&0x8000_0001u32.to_be_bytes());
    conversation.extend(response(&[], &handles));
    // A trial session: StartAuthSession, PolicyPCR, PolicyGetDigest, FlushContext.
    conversation.extend(response(&[0x0300_0000], &tpm2b(&[0x11; 32])));
    conversation.extend(response(&[], &[]));
    conversation.extend(response(&[], &tpm2b(&[0x5c; 32])));
    conversation.extend(response(&[], &[]));
    out.push(("tpm_response", "conversation".into(), conversation.clone()));
    // A TPM that fails a command with a format-1 code naming a parameter.
    let mut failing = conversation[..10].to_vec();
    failing.extend([0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0xc4]);
    out.push(("tpm_response", "parameter-error".into(), failing));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_pass_the_oracles() {
        for (target, name, bytes) in super::seeds() {
            match target {
                "tpm_token" => {
                    let json = std::str::from_utf8(&bytes).unwrap();
                    cairn_tpm::Token::from_json(json).unwrap_or_else(|e| panic!("{name}: {e}"));
                    super::check_token(&bytes);
                }
                _ => super::check_responses(&bytes),
            }
        }
    }
}
