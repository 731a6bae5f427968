//! PCR selections and the PolicyPCR digest computed in software.
//!
//! A PolicyPCR policy over a fresh session is
//! `SHA-256(zeros(32) || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || SHA-256(PCR values))`, with
//! the PCR values concatenated in ascending PCR order. The sealed object's authPolicy is this
//! digest over the values at sealing time; the TPM recomputes it from the live values at
//! unsealing time and refuses the secret when the two differ.

use sha2::{Digest, Sha256};

use crate::marshal::{Writer, POLICY_PCR};
use crate::{Error, Result};

/// PCRs 0..24, the number every PC-client TPM implements.
pub const PCR_COUNT: u8 = 24;
const SELECT_BYTES: u8 = PCR_COUNT / 8;

/// A PCR bank, named by its hash algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcrBank {
    Sha256,
}

impl PcrBank {
    /// The `TPM_ALG_ID`.
    pub fn alg_id(self) -> u16 {
        match self {
            PcrBank::Sha256 => 0x000B,
        }
    }

    /// The name systemd uses in `tpm2-pcr-bank`.
    pub fn name(self) -> &'static str {
        match self {
            PcrBank::Sha256 => "sha256",
        }
    }

    pub fn digest_len(self) -> usize {
        match self {
            PcrBank::Sha256 => 32,
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "sha256" => Ok(PcrBank::Sha256),
            other => Err(Error::PcrSelection(format!(
                "PCR bank {other:?} is not supported (only sha256)"
            ))),
        }
    }
}

/// A set of PCRs in one bank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    bank: PcrBank,
    /// Ascending, no duplicates, each below [`PCR_COUNT`]; empty only from [`PcrSelection::none`].
    pcrs: Vec<u8>,
}

impl Default for PcrSelection {
    /// PCR 7 (Secure Boot state) in the sha256 bank, systemd-cryptenroll's default.
    fn default() -> Self {
        PcrSelection {
            bank: PcrBank::Sha256,
            pcrs: vec![7],
        }
    }
}

impl PcrSelection {
    pub fn new(bank: PcrBank, pcrs: &[u8]) -> Result<Self> {
        if pcrs.is_empty() {
            return Err(Error::PcrSelection("no PCR selected".into()));
        }
        if let Some(bad) = pcrs.iter().find(|&&p| p >= PCR_COUNT) {
            return Err(Error::PcrSelection(format!(
                "PCR {bad} does not exist (PCRs are 0..{})",
                PCR_COUNT - 1
            )));
        }
        let mut pcrs = pcrs.to_vec();
        pcrs.sort_unstable();
        pcrs.dedup();
        Ok(PcrSelection { bank, pcrs })
    }

    /// No PCR: a signed policy without fixed PCRs (Secure Boot off) records this.
    pub fn none(bank: PcrBank) -> Self {
        PcrSelection {
            bank,
            pcrs: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pcrs.is_empty()
    }

    /// PCRs in the sha256 bank.
    pub fn sha256(pcrs: &[u8]) -> Result<Self> {
        Self::new(PcrBank::Sha256, pcrs)
    }

    pub fn bank(&self) -> PcrBank {
        self.bank
    }

    /// The selected PCRs, ascending.
    pub fn pcrs(&self) -> &[u8] {
        &self.pcrs
    }

    /// Marshals a `TPML_PCR_SELECTION` with one bank.
    pub(crate) fn marshal(&self, w: &mut Writer) {
        w.u32(1);
        marshal_one(w, self.bank, &self.pcrs);
    }
}

/// One `TPMS_PCR_SELECTION`: the bank and a 24-bit bitmap, PCR n at bit n % 8 of byte n / 8.
pub(crate) fn marshal_one(w: &mut Writer, bank: PcrBank, pcrs: &[u8]) {
    let mut bitmap = [0u8; SELECT_BYTES as usize];
    for &p in pcrs {
        bitmap[usize::from(p / 8)] |= 1 << (p % 8);
    }
    w.u16(bank.alg_id()).u8(SELECT_BYTES).bytes(&bitmap);
}

/// The PolicyPCR digest over `selection` for the given PCR values (one per selected PCR,
/// ascending), as a trial session started from an all-zero digest would compute it.
pub fn policy_pcr_digest(selection: &PcrSelection, values: &[Vec<u8>]) -> [u8; 32] {
    policy_pcr_digest_from(&[0u8; 32], selection, values)
}

/// `policy` extended by PolicyPCR over `selection` holding `values`.
pub fn policy_pcr_digest_from(
    policy: &[u8; 32],
    selection: &PcrSelection,
    values: &[Vec<u8>],
) -> [u8; 32] {
    assert_eq!(
        values.len(),
        selection.pcrs().len(),
        "one value per selected PCR"
    );
    let mut pcr_digest = Sha256::new();
    for v in values {
        pcr_digest.update(v);
    }
    let mut sel = Writer::default();
    selection.marshal(&mut sel);
    Sha256::new()
        .chain_update(policy)
        .chain_update(POLICY_PCR.code.to_be_bytes())
        .chain_update(sel.as_slice())
        .chain_update(pcr_digest.finalize())
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_bitmap() {
        let mut w = Writer::default();
        PcrSelection::sha256(&[16, 0, 7, 7])
            .unwrap()
            .marshal(&mut w);
        assert_eq!(w.as_slice(), [0, 0, 0, 1, 0, 0x0B, 3, 0x81, 0x00, 0x01]);
    }

    #[test]
    fn selection_limits() {
        assert!(PcrSelection::sha256(&[]).is_err());
        let err = PcrSelection::sha256(&[24]).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid PCR selection: PCR 24 does not exist (PCRs are 0..23)"
        );
        assert!(PcrBank::from_name("sha1").is_err());
    }

    /// PolicyPCR over sha256:7 with PCR 7 all zeros, spelled out byte by byte.
    #[test]
    fn known_digest() {
        let sel = PcrSelection::default();
        let digest = policy_pcr_digest(&sel, &[vec![0; 32]]);
        let mut pre = vec![0u8; 32];
        pre.extend_from_slice(&[0, 0, 1, 0x7F, 0, 0, 0, 1, 0, 0x0B, 3, 0x80, 0, 0]);
        pre.extend_from_slice(&Sha256::digest([0u8; 32]));
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&pre)));
    }
}
