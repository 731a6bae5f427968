//! `EFI_SIGNATURE_LIST` (UEFI 2.10, 32.4.1), the format of `PK`, `KEK`, `db` and `dbx`:
//!
//! ```text
//! SignatureType (GUID) | SignatureListSize u32 | SignatureHeaderSize u32 | SignatureSize u32
//! SignatureHeader[SignatureHeaderSize] | Signatures: (SignatureOwner GUID | SignatureData)...
//! ```
//!
//! GUIDs are in their on-disk (mixed-endian) byte order.

/// `EFI_CERT_X509_GUID` (a5c059a1-94e4-4aa7-87b5-ab155c2bf072).
pub const CERT_X509_GUID: [u8; 16] = [
    0xa1, 0x59, 0xc0, 0xa5, 0xe4, 0x94, 0xa7, 0x4a, 0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72,
];

/// A signature list holding one X.509 certificate (DER), owned by `owner`.
pub fn x509(owner: [u8; 16], cert_der: &[u8]) -> Vec<u8> {
    let signature_size = 16 + cert_der.len();
    let list_size = 28 + signature_size;
    let mut out = Vec::with_capacity(list_size);
    out.extend_from_slice(&CERT_X509_GUID);
    out.extend_from_slice(&(list_size as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(signature_size as u32).to_le_bytes());
    out.extend_from_slice(&owner);
    out.extend_from_slice(cert_der);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_certificate_list_has_the_documented_sizes() {
        let list = super::x509([7; 16], &[1, 2, 3]);
        assert_eq!(list.len(), 28 + 16 + 3);
        assert_eq!(&list[16..20], &47u32.to_le_bytes());
        assert_eq!(&list[24..28], &19u32.to_le_bytes());
        assert_eq!(&list[28..44], &[7; 16]);
    }
}
