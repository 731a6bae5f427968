//! Sealing a random secret to PCR values, and unsealing it while they still hold.
//!
//! Both directions start by recreating the storage primary key from a fixed template (the
//! same template yields the same key on the same TPM, so nothing is persisted in the TPM),
//! and every handle they load is flushed before they return.

use zeroize::Zeroizing;

use crate::floor;
use crate::marshal::{Reader, Writer};
use crate::pcrsig::{
    policy_authorize_digest, policy_pcr11, release_policy, PcrPublicKey, PcrSignature,
    RELEASE_POLICY_REF, UKI_PCR,
};
use crate::policy::{policy_pcr_digest, policy_pcr_digest_from, PcrBank, PcrSelection};
use crate::rc;
use crate::tpm::{template, Handle, Tpm, ALG_NULL};
use crate::{Error, Result};

/// Bytes of the sealed secret.
pub const SECRET_LEN: usize = 32;

/// `TPM_ALG_KEYEDHASH`, the type of a sealed data object.
const ALG_KEYEDHASH: u16 = 0x0008;
const ALG_SHA256: u16 = 0x000B;
const ALG_RSA: u16 = 0x0001;
const ALG_ECC: u16 = 0x0023;
const ALG_AES: u16 = 0x0006;
const ALG_CFB: u16 = 0x0043;
const ECC_NIST_P256: u16 = 0x0003;

/// TPMA_OBJECT bits.
const FIXED_TPM: u32 = 1 << 1;
const FIXED_PARENT: u32 = 1 << 4;
const NO_DA: u32 = 1 << 10;
const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
const USER_WITH_AUTH: u32 = 1 << 6;
const RESTRICTED: u32 = 1 << 16;
const DECRYPT: u32 = 1 << 17;

/// The algorithm of the storage primary key the sealed object lives under.
///
/// The templates are systemd's "legacy" SRK templates, the ones it recreates for a token that
/// carries no `tpm2_srk` field: a restricted decryption key, SHA-256 name, AES-128-CFB for
/// its children, no unique seed, and `noDA` clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrimaryAlg {
    /// NIST P-256; generated in milliseconds.
    #[default]
    Ecc,
    /// RSA 2048; for TPMs without ECC, and seconds slower to generate.
    Rsa,
}

impl PrimaryAlg {
    /// The name systemd uses in `tpm2-primary-alg`.
    pub fn name(self) -> &'static str {
        match self {
            PrimaryAlg::Ecc => "ecc",
            PrimaryAlg::Rsa => "rsa",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ecc" => Some(PrimaryAlg::Ecc),
            "rsa" => Some(PrimaryAlg::Rsa),
            _ => None,
        }
    }

    /// The `TPMT_PUBLIC` template.
    fn template(self) -> Vec<u8> {
        let attrs = FIXED_TPM
            | FIXED_PARENT
            | SENSITIVE_DATA_ORIGIN
            | USER_WITH_AUTH
            | RESTRICTED
            | DECRYPT;
        template(|w| {
            let alg = match self {
                PrimaryAlg::Ecc => ALG_ECC,
                PrimaryAlg::Rsa => ALG_RSA,
            };
            w.u16(alg).u16(ALG_SHA256).u32(attrs).tpm2b(&[]);
            // symmetric: AES-128-CFB; scheme: none
            w.u16(ALG_AES).u16(128).u16(ALG_CFB).u16(ALG_NULL);
            match self {
                // curve, kdf: none; unique: empty x and y
                PrimaryAlg::Ecc => w.u16(ECC_NIST_P256).u16(ALG_NULL).tpm2b(&[]).tpm2b(&[]),
                // keyBits, exponent: default; unique: empty modulus
                PrimaryAlg::Rsa => w.u16(2048).u32(0).tpm2b(&[]),
            };
        })
    }
}

/// A sealed secret as stored outside the TPM: only the TPM that sealed it can load it, and
/// only while the PCRs match the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBlob {
    /// `TPM2B_PRIVATE` contents: the secret, encrypted to the primary key.
    pub private: Vec<u8>,
    /// `TPM2B_PUBLIC` contents: the object's public area, including its authPolicy.
    pub public: Vec<u8>,
    /// The PCRs (and bank) the policy covers with their values at sealing time; with a signed
    /// policy, the PCRs checked besides it (none when Secure Boot is off).
    pub pcrs: PcrSelection,
    /// A signed policy: the key whose signatures of PCR 11 (with the anti-rollback floor) the
    /// object accepts (systemd's `tpm2_pubkey`, `tpm2_pubkey_pcrs: [11]`).
    pub signed: Option<PcrPublicKey>,
    pub primary_alg: PrimaryAlg,
    /// The PolicyPCR digest, equal to the public area's authPolicy.
    pub policy_hash: [u8; 32],
    /// systemd's `tpm2_srk` (a serialised persistent SRK handle), kept so a token reads back
    /// unchanged; unsealing such a blob is not supported.
    pub srk: Option<String>,
}

impl SealedBlob {
    /// The authPolicy recorded in the public area.
    pub fn public_auth_policy(&self) -> Result<Vec<u8>> {
        let mut r = Reader::new("sealed object public area", &self.public);
        let _type = r.u16()?;
        let _name_alg = r.u16()?;
        let _attributes = r.u32()?;
        Ok(r.tpm2b()?.to_vec())
    }
}

/// The `TPMT_PUBLIC` of a sealed data object: fixed to this TPM and parent, no user auth (the
/// policy is the only way in), and `sensitiveDataOrigin` clear because the data is supplied.
/// `noDA` is set: with no authValue there is nothing to guess, and a DA-protected object would
/// be locked out after a few power cuts (each unclean TPM restart counts as a failure once a
/// DA-protected object was used), leaving a box that boots only with the recovery key.
fn sealed_template(policy: &[u8]) -> Vec<u8> {
    template(|w: &mut Writer| {
        w.u16(ALG_KEYEDHASH)
            .u16(ALG_SHA256)
            .u32(FIXED_TPM | FIXED_PARENT | NO_DA)
            .tpm2b(policy)
            .u16(ALG_NULL) // keyed-hash scheme: none
            .tpm2b(&[]); // unique
    })
}

/// Seals a fresh random secret to the current values of `pcrs` and returns it with its blob.
pub fn seal(
    tpm: &mut Tpm,
    pcrs: &PcrSelection,
    primary_alg: PrimaryAlg,
) -> Result<(Zeroizing<Vec<u8>>, SealedBlob)> {
    let mut secret = Zeroizing::new(vec![0u8; SECRET_LEN]);
    rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut secret)
        .map_err(Error::Random)?;
    let values = tpm.pcr_values(pcrs)?;
    let policy_hash = policy_pcr_digest(pcrs, &values);
    let blob = create_sealed(tpm, primary_alg, policy_hash, &secret, pcrs.clone(), None)?;
    Ok((secret, blob))
}

/// Seals a fresh random secret with a signed policy: the object opens while PCR 11 holds a
/// value whose release policy ([`crate::pcrsig::release_policy`]: PCR 11 and the
/// anti-rollback floor) `key` signed, and, when `fixed` names any, while those PCRs hold their
/// current values (PCR 7 with Secure Boot on). This is the policy
/// `systemd-cryptenroll --tpm2-public-key=… --tpm2-public-key-pcrs=11 --tpm2-pcrs=7` makes,
/// with Cairn's floor in the signed part. The secret reaches the TPM encrypted.
pub fn seal_signed(
    tpm: &mut Tpm,
    key: &PcrPublicKey,
    fixed: &PcrSelection,
) -> Result<(Zeroizing<Vec<u8>>, SealedBlob)> {
    let mut secret = Zeroizing::new(vec![0u8; SECRET_LEN]);
    rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut secret)
        .map_err(Error::Random)?;
    let mut policy_hash = policy_authorize_digest(&key.tpm_name(), RELEASE_POLICY_REF);
    if !fixed.is_empty() {
        let values = tpm.pcr_values(fixed)?;
        policy_hash = policy_pcr_digest_from(&policy_hash, fixed, &values);
    }
    let blob = create_sealed(
        tpm,
        PrimaryAlg::Ecc,
        policy_hash,
        &secret,
        fixed.clone(),
        Some(key.clone()),
    )?;
    Ok((secret, blob))
}

/// Creates the sealed object under a recreated primary: in a salted session that encrypts the
/// secret on the bus for an ECC primary; in the clear for an RSA one.
fn create_sealed(
    tpm: &mut Tpm,
    primary_alg: PrimaryAlg,
    policy_hash: [u8; 32],
    secret: &[u8],
    pcrs: PcrSelection,
    signed: Option<PcrPublicKey>,
) -> Result<SealedBlob> {
    let (primary, primary_public) = tpm.create_primary(&primary_alg.template())?;
    let created = tpm.with_flush(primary, |tpm| match primary_alg {
        PrimaryAlg::Ecc => tpm.create_encrypted(
            primary,
            &primary_public,
            &sealed_template(&policy_hash),
            secret,
        ),
        PrimaryAlg::Rsa => tpm.create(primary, &sealed_template(&policy_hash), secret),
    })?;
    Ok(SealedBlob {
        private: created.private,
        public: created.public,
        pcrs,
        signed,
        primary_alg,
        policy_hash,
        srk: None,
    })
}

/// Unseals a blob's secret; fails with a policy error ([`Error::is_policy_failure`]) when the
/// PCRs no longer hold the values it was sealed to.
pub fn unseal(tpm: &mut Tpm, blob: &SealedBlob) -> Result<Zeroizing<Vec<u8>>> {
    if blob.signed.is_some() {
        return Err(Error::Unsigned(
            "the token's policy is signed and no PCR signature was given".into(),
        ));
    }
    unseal_with(tpm, blob, |tpm, session| {
        tpm.policy_pcr(session, &blob.pcrs)
    })
}

/// Unseals a blob sealed with [`seal_signed`], given the booted UKI's PCR signature (`.pcrsig`,
/// which the stub leaves in `/.extra/tpm2-pcr-signature.json`). Fails with
/// [`Error::Unsigned`] when no entry signs this boot's PCR 11 with the sealing key (or the TPM
/// finds the signature false), [`Error::BelowFloor`] when the release is below the device's
/// anti-rollback floor, and a policy error when a fixed PCR (7) moved.
pub fn unseal_signed(
    tpm: &mut Tpm,
    blob: &SealedBlob,
    signature: &PcrSignature,
) -> Result<Zeroizing<Vec<u8>>> {
    let Some(key) = &blob.signed else {
        return unseal(tpm, blob);
    };
    let pcr11: [u8; 32] = tpm
        .pcr_read(PcrBank::Sha256, UKI_PCR)?
        .try_into()
        .expect("pcr_read checks the length");
    let fp = key.fingerprint();
    let entry = signature.sha256.iter().find(|e| {
        e.pkfp == fp
            && e.pcrs == [UKI_PCR]
            && e.security_version
                .is_some_and(|v| e.pol == release_policy(&pcr11, v))
    });
    let Some(entry) = entry else {
        let bare = signature.find(key, &policy_pcr11(&pcr11)).is_some();
        return Err(Error::Unsigned(if bare {
            format!(
                "PCR 11 {} is signed by key {} only without the anti-rollback check",
                hex::encode(pcr11),
                hex::encode(&fp[..8])
            )
        } else {
            format!(
                "no signature of this boot's PCR 11 ({}) by key {}",
                hex::encode(pcr11),
                hex::encode(&fp[..8])
            )
        }));
    };
    let version = entry.security_version.expect("chosen for its version");
    let pcr11_only = PcrSelection::sha256(&[UKI_PCR]).expect("PCR 11 exists");
    let aux = tpm.load_external(&key.tpm_public())?;
    let unsealed = tpm.with_flush(aux, |tpm| {
        let digest = crate::salted::sha256(&[&entry.pol, RELEASE_POLICY_REF]);
        let ticket = tpm
            .verify_signature(aux, &digest, &entry.sig)
            .map_err(|e| match e.response_code() {
                Some(rc) if rc.base() == rc::SIGNATURE => Error::Unsigned(format!(
                    "the signature of PCR 11 {} does not verify with key {}",
                    hex::encode(pcr11),
                    hex::encode(&fp[..8])
                )),
                _ => e,
            })?;
        Ok(ticket)
    });
    let ticket = unsealed?;
    unseal_with(tpm, blob, |tpm, session| {
        tpm.policy_pcr(session, &pcr11_only)?;
        floor::policy_nv(tpm, session.0, version).map_err(|e| match e.response_code() {
            Some(rc) if rc.base() == rc::POLICY => {
                let floor = floor::read(tpm).ok().flatten();
                Error::BelowFloor(format!(
                    "this release's security version is {version}, the device's floor is {}",
                    floor.map_or("higher".into(), |f| f.to_string())
                ))
            }
            Some(rc) if floor::is_missing(rc) => Error::BelowFloor(format!(
                "NV index {:#010x} holds no floor ({rc}); the seal cannot be checked",
                floor::FLOOR_NV_INDEX
            )),
            _ => e,
        })?;
        tpm.policy_authorize(
            session,
            &entry.pol,
            RELEASE_POLICY_REF,
            &key.tpm_name(),
            &ticket,
        )?;
        if !blob.pcrs.is_empty() {
            tpm.policy_pcr(session, &blob.pcrs)?;
        }
        Ok(())
    })
}

/// Loads the blob, starts a (salted, for an ECC primary) policy session, satisfies the policy
/// with `policy` and unseals; every handle is flushed.
fn unseal_with(
    tpm: &mut Tpm,
    blob: &SealedBlob,
    policy: impl FnOnce(&mut Tpm, Handle) -> Result<()>,
) -> Result<Zeroizing<Vec<u8>>> {
    if blob.srk.is_some() {
        return Err(Error::Token(
            "sealed under a persistent SRK (tpm2_srk); only the recreated primary key is supported"
                .into(),
        ));
    }
    if blob.public_auth_policy()? != blob.policy_hash {
        return Err(Error::Token(
            "tpm2-policy-hash does not match the sealed object's authPolicy".into(),
        ));
    }
    // Behind the kernel's resource manager every command costs a context load of each handle
    // this client holds, and a save after it: so the primary goes as soon as the sealed object
    // is loaded and the session is started, and the unseal itself ends the session.
    let (primary, primary_public) = tpm.create_primary(&blob.primary_alg.template())?;
    let (item, session) = tpm.with_flush(primary, |tpm| {
        let item = tpm.load(primary, &blob.private, &blob.public)?;
        // An ECC primary salts the session, and the secret comes back encrypted; for an RSA
        // primary the session is unsalted and the secret crosses the bus in the clear.
        let session = match blob.primary_alg {
            PrimaryAlg::Ecc => tpm
                .start_salted_policy_session(primary, &primary_public)
                .map(|(h, keys)| (h, Some(keys))),
            PrimaryAlg::Rsa => tpm.start_policy_session(false).map(|h| (h, None)),
        };
        match session {
            Ok(session) => Ok((item, session)),
            Err(e) => {
                let _ = tpm.flush(item);
                Err(e)
            }
        }
    })?;
    tpm.with_flush(item, |tpm| {
        let (session, keys) = session;
        let unsealed = policy(tpm, session).and_then(|()| match &keys {
            Some(keys) => tpm.unseal_encrypted(item, &blob.public, session, keys),
            None => tpm.unseal_object(item, session),
        });
        if unsealed.is_err() {
            // The first error is the one to report; a failed flush here changes nothing.
            let _ = tpm.flush(session);
        }
        unsealed
    })
}

/// The PolicyPCR digest the TPM computes in a trial session over the live values of `pcrs`.
pub fn trial_policy_digest(tpm: &mut Tpm, pcrs: &PcrSelection) -> Result<Vec<u8>> {
    let session: Handle = tpm.start_policy_session(true)?;
    tpm.with_flush(session, |tpm| {
        tpm.policy_pcr(session, pcrs)?;
        tpm.policy_get_digest(session)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sealed object is fixed to the TPM and its parent, has no user auth, and is exempt
    /// from dictionary-attack lockout (unclean restarts must not lock a box out of its disks).
    #[test]
    fn the_sealed_template_is_no_da_and_policy_only() {
        let t = sealed_template(&[0xAB; 32]);
        assert_eq!(&t[..2], &ALG_KEYEDHASH.to_be_bytes());
        let attrs = u32::from_be_bytes(t[4..8].try_into().unwrap());
        assert_eq!(attrs, FIXED_TPM | FIXED_PARENT | NO_DA);
        assert_eq!(attrs & USER_WITH_AUTH, 0);
        assert_eq!(&t[8..10], &32u16.to_be_bytes());
        assert_eq!(&t[10..42], &[0xAB; 32]);
    }
}
