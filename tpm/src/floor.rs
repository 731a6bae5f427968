//! The device's anti-rollback floor in a TPM NV index, and the PolicyNV check against it.
//!
//! The floor is the lowest security version this box may run, an 8-byte big-endian number in
//! NV index [`FLOOR_NV_INDEX`]. A release's signed policy ends with PolicyNV "floor ≤ my
//! security version" ([`policy_nv_at_most`]), so once the floor is raised past a release, its
//! signature no longer satisfies the sealed object's PolicyAuthorize: the old release cannot
//! unseal although it is signed. The index is the same on every box (PolicyNV binds the
//! index's Name into the signed digest, so the builder must know it): owner-writable and
//! owner-readable with the owner hierarchy's (empty) password, written whole, exempt from
//! dictionary-attack lockout. [`raise`] never lowers it.

use sha2::{Digest, Sha256};

use crate::marshal::{self, Auth, Command, Reader, Writer};
use crate::rc;
use crate::tpm::{Tpm, RH_OWNER};
use crate::{Error, Result};

/// The NV index holding the floor (in the owner's range, 0x01000000..0x013FFFFF).
pub const FLOOR_NV_INDEX: u32 = 0x0100_CA17;
/// Bytes of the floor: a u64, big-endian (PolicyNV compares big-endian unsigned).
const FLOOR_LEN: u16 = 8;

/// TPMA_NV bits.
const OWNERWRITE: u32 = 1 << 1;
const WRITEALL: u32 = 1 << 12;
const OWNERREAD: u32 = 1 << 17;
const NO_DA: u32 = 1 << 25;
const WRITTEN: u32 = 1 << 29;
/// The index's attributes as defined (before its first write).
const ATTRIBUTES: u32 = OWNERWRITE | WRITEALL | OWNERREAD | NO_DA;

const ALG_SHA256: u16 = 0x000B;
/// `TPM_EO_UNSIGNED_LE`: the NV contents are at most operandB.
const EO_UNSIGNED_LE: u16 = 0x0009;
/// `TPM_RC_HANDLE` for an index that is not defined.
const RC_HANDLE: u32 = 0x08B;

/// The `TPMS_NV_PUBLIC` of the floor index, written or not.
fn nv_public(written: bool) -> Vec<u8> {
    let mut w = Writer::default();
    let attrs = if written {
        ATTRIBUTES | WRITTEN
    } else {
        ATTRIBUTES
    };
    w.u32(FLOOR_NV_INDEX)
        .u16(ALG_SHA256)
        .u32(attrs)
        .tpm2b(&[])
        .u16(FLOOR_LEN);
    w.as_slice().to_vec()
}

/// The written index's Name, as PolicyNV binds it.
pub fn floor_nv_name() -> Vec<u8> {
    let mut name = ALG_SHA256.to_be_bytes().to_vec();
    name.extend_from_slice(&Sha256::digest(nv_public(true)));
    name
}

/// `policy` extended by PolicyNV "floor ≤ `security_version`":
/// `SHA-256(policy || TPM_CC_PolicyNV || SHA-256(operandB || offset || operation) || nvName)`.
pub fn policy_nv_at_most(policy: &[u8; 32], security_version: u64) -> [u8; 32] {
    let args = Sha256::new()
        .chain_update(security_version.to_be_bytes())
        .chain_update(0u16.to_be_bytes())
        .chain_update(EO_UNSIGNED_LE.to_be_bytes())
        .finalize();
    Sha256::new()
        .chain_update(policy)
        .chain_update(marshal::POLICY_NV.code.to_be_bytes())
        .chain_update(args)
        .chain_update(floor_nv_name())
        .finalize()
        .into()
}

/// The floor, or `None` when the index is not defined or not written yet.
pub fn read(tpm: &mut Tpm) -> Result<Option<u64>> {
    let Some(public) = read_public(tpm)? else {
        return Ok(None);
    };
    check_public(&public)?;
    if public != nv_public(true) {
        return Ok(None);
    }
    let cmd = Command::new(marshal::NV_READ)
        .authorized_handle(RH_OWNER, Auth::EmptyPassword)
        .handle(FLOOR_NV_INDEX)
        .params(|w| {
            w.u16(FLOOR_LEN).u16(0);
        });
    let data = tpm.run(&cmd, 0, |_, r| Ok(r.tpm2b()?.to_vec()))?;
    let bytes: [u8; 8] = data.as_slice().try_into().map_err(|_| Error::Malformed {
        command: marshal::NV_READ.name,
        what: format!("{} bytes of floor", data.len()),
    })?;
    Ok(Some(u64::from_be_bytes(bytes)))
}

/// Raises the floor to `security_version` (defining the index first if needed) and returns
/// the floor now in force; a floor already higher stays as it is.
pub fn raise(tpm: &mut Tpm, security_version: u64) -> Result<u64> {
    match read_public(tpm)? {
        None => {
            let cmd = Command::new(marshal::NV_DEFINE_SPACE)
                .authorized_handle(RH_OWNER, Auth::EmptyPassword)
                .params(|w| {
                    w.tpm2b(&[]); // the index's authValue: unused
                    w.tpm2b(&nv_public(false));
                });
            tpm.run(&cmd, 0, |_, _| Ok(()))?;
        }
        Some(public) => check_public(&public)?,
    }
    if let Some(current) = read(tpm)? {
        if current >= security_version {
            return Ok(current);
        }
    }
    let cmd = Command::new(marshal::NV_WRITE)
        .authorized_handle(RH_OWNER, Auth::EmptyPassword)
        .handle(FLOOR_NV_INDEX)
        .params(|w| {
            w.tpm2b(&security_version.to_be_bytes()).u16(0);
        });
    tpm.run(&cmd, 0, |_, _| Ok(()))?;
    Ok(security_version)
}

/// TPM2_NV_ReadPublic of the floor index: its `TPMS_NV_PUBLIC`, or `None` if undefined.
fn read_public(tpm: &mut Tpm) -> Result<Option<Vec<u8>>> {
    let cmd = Command::new(marshal::NV_READ_PUBLIC).handle(FLOOR_NV_INDEX);
    match tpm.run(&cmd, 0, |_, r| Ok(r.tpm2b()?.to_vec())) {
        Ok(public) => Ok(Some(public)),
        Err(Error::Tpm { rc, .. }) if rc.base() == RC_HANDLE => Ok(None),
        Err(e) => Err(e),
    }
}

/// An index at the floor's handle that is not the floor (other attributes, size or policy)
/// is left alone and named.
fn check_public(public: &[u8]) -> Result<()> {
    if public == nv_public(true) || public == nv_public(false) {
        return Ok(());
    }
    let mut r = Reader::new(marshal::NV_READ_PUBLIC.name, public);
    let detail = (|| {
        let _index = r.u32()?;
        let _alg = r.u16()?;
        let attrs = r.u32()?;
        let policy = r.tpm2b()?.len();
        let size = r.u16()?;
        Ok::<_, Error>(format!(
            "attributes {attrs:#010x}, a {policy}-byte policy, {size} bytes"
        ))
    })()
    .unwrap_or_else(|e| e.to_string());
    Err(Error::Floor(format!(
        "NV index {FLOOR_NV_INDEX:#010x} is not an anti-rollback floor Cairn defined ({detail})"
    )))
}

/// Whether a response code means the floor index is missing or unwritten (a PolicyNV on it
/// fails this way).
pub(crate) fn is_missing(rc: crate::ResponseCode) -> bool {
    rc.base() == RC_HANDLE || rc.base() == rc::NV_UNINITIALIZED
}

/// TPM2_PolicyNV "floor ≤ `security_version`" in `session`.
pub(crate) fn policy_nv(tpm: &mut Tpm, session: u32, security_version: u64) -> Result<()> {
    let cmd = Command::new(marshal::POLICY_NV)
        .authorized_handle(RH_OWNER, Auth::EmptyPassword)
        .handle(FLOOR_NV_INDEX)
        .handle(session)
        .params(|w| {
            w.tpm2b(&security_version.to_be_bytes())
                .u16(0)
                .u16(EO_UNSIGNED_LE);
        });
    tpm.run(&cmd, 0, |_, _| Ok(()))
}
