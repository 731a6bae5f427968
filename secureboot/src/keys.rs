//! The Secure Boot key set `cairnctl keys gen-secureboot --out DIR` makes:
//!
//! | files | what it is |
//! |---|---|
//! | `PK.key`, `PK.crt` | platform key: who may change KEK |
//! | `KEK.key`, `KEK.crt` | key exchange key: who may change db and dbx |
//! | `db.key`, `db.crt` | signature database key: signs systemd-boot and the UKIs |
//! | `pcr-signing.key`, `pcr-signing.pem` | signs predicted PCR 11 values (`.pcrsig`) |
//!
//! Every key is RSA-2048 (what OVMF and AAVMF verify), PKCS#8 PEM, mode 0600; every certificate
//! is a self-signed X.509 v3 certificate (PEM), valid for 30 years, with CA and digital-signature
//! key usage, which is what `sbverify --cert` and the firmware want of a trust anchor. The
//! PCR-signing key's public half is a PEM SubjectPublicKeyInfo, as `systemd-measure sign
//! --public-key` takes it. Existing files are never overwritten.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use der::pem::LineEnding;
use der::referenced::OwnedToRef;
use der::EncodePem;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
use rsa::RsaPrivateKey;
use sha2::Sha256;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::Validity;

use crate::error::{Error, Result};

/// The key pairs with a certificate, by file stem.
pub const CERTIFIED: [&str; 3] = ["PK", "KEK", "db"];
/// The PCR-signing key's file stem.
pub const PCR_SIGNING: &str = "pcr-signing";

const VALID_FOR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

fn keygen_err(e: impl std::fmt::Display) -> Error {
    Error::KeyGen(e.to_string())
}

fn new_key() -> Result<RsaPrivateKey> {
    RsaPrivateKey::new(&mut rand_core::OsRng, 2048).map_err(keygen_err)
}

/// A self-signed certificate for `key` with common name `cn`, PEM.
pub fn self_signed_pem(key: &RsaPrivateKey, cn: &str) -> Result<String> {
    let spki = SubjectPublicKeyInfoOwned::from_key(key.to_public_key()).map_err(keygen_err)?;
    let name = Name::from_str(&format!("CN={cn},O=Cairn")).map_err(keygen_err)?;
    let mut serial = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut serial);
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    let signer = SigningKey::<Sha256>::new(key.clone());
    let mut builder = CertificateBuilder::new(
        Profile::Manual { issuer: None },
        SerialNumber::new(&serial).map_err(keygen_err)?,
        Validity::from_now(VALID_FOR).map_err(keygen_err)?,
        name,
        spki.clone(),
        &signer,
    )
    .map_err(keygen_err)?;
    builder
        .add_extension(&BasicConstraints {
            ca: true,
            path_len_constraint: None,
        })
        .map_err(keygen_err)?;
    builder
        .add_extension(&KeyUsage(
            KeyUsages::DigitalSignature | KeyUsages::KeyCertSign | KeyUsages::CRLSign,
        ))
        .map_err(keygen_err)?;
    builder
        .add_extension(&SubjectKeyIdentifier::try_from(spki.owned_to_ref()).map_err(keygen_err)?)
        .map_err(keygen_err)?;
    let cert = builder
        .build::<rsa::pkcs1v15::Signature>()
        .map_err(keygen_err)?;
    cert.to_pem(LineEnding::LF).map_err(keygen_err)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                Error::KeyExists {
                    path: path.to_path_buf(),
                }
            } else {
                Error::Io {
                    action: "creating",
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|source| Error::Io {
            action: "writing",
            path: path.to_path_buf(),
            source,
        })
}

/// The files [`generate`] writes into `dir`.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = CERTIFIED
        .iter()
        .flat_map(|n| [dir.join(format!("{n}.key")), dir.join(format!("{n}.crt"))])
        .collect();
    out.push(dir.join(format!("{PCR_SIGNING}.key")));
    out.push(dir.join(format!("{PCR_SIGNING}.pem")));
    out
}

/// Makes the key set in `dir` (created if missing). Refused, before any key is made, when any
/// of the files exists.
pub fn generate(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        action: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    let all = files(dir);
    if let Some(p) = all.iter().find(|p| p.exists()) {
        return Err(Error::KeyExists { path: p.clone() });
    }
    for name in CERTIFIED {
        let key = new_key()?;
        let cert = self_signed_pem(&key, &format!("Cairn Secure Boot {name}"))?;
        let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(keygen_err)?;
        write_new(&dir.join(format!("{name}.key")), pem.as_bytes(), 0o600)?;
        write_new(&dir.join(format!("{name}.crt")), cert.as_bytes(), 0o644)?;
    }
    let key = new_key()?;
    let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(keygen_err)?;
    let public = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(keygen_err)?;
    write_new(
        &dir.join(format!("{PCR_SIGNING}.key")),
        pem.as_bytes(),
        0o600,
    )?;
    write_new(
        &dir.join(format!("{PCR_SIGNING}.pem")),
        public.as_bytes(),
        0o644,
    )?;
    Ok(all)
}

/// A certificate file of the set, DER (`PK`, `KEK` or `db`).
pub fn cert_der(dir: &Path, name: &str) -> Result<Vec<u8>> {
    use der::{DecodePem, Encode};
    let path = dir.join(format!("{name}.crt"));
    let pem = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        action: "reading",
        path: path.clone(),
        source,
    })?;
    let cert = x509_cert::Certificate::from_pem(&pem).map_err(|e| Error::BadKey {
        what: path.display().to_string(),
        reason: format!("is not a PEM X.509 certificate: {e}"),
    })?;
    cert.to_der().map_err(|e| Error::BadKey {
        what: path.display().to_string(),
        reason: e.to_string(),
    })
}
