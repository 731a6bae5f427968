//! Big-endian TPM 2.0 marshalling: a command builder and a bounds-checked response reader.
//!
//! A command is `tag | size | code | handles | [authorization area] | parameters`; a response is
//! `tag | size | rc | handles | [parameter size] | parameters | [authorization area]`. Buffers
//! are zeroized on drop because sealing commands and unseal responses carry the secret.

use zeroize::Zeroizing;

use crate::{Error, Result};

/// `TPM_ST_NO_SESSIONS`.
pub const ST_NO_SESSIONS: u16 = 0x8001;
/// `TPM_ST_SESSIONS`.
pub const ST_SESSIONS: u16 = 0x8002;
/// `TPM_RS_PW`: the password session (an empty owner or object password here).
pub const RS_PW: u32 = 0x4000_0009;
/// Header bytes of commands and responses.
pub const HEADER_LEN: usize = 10;

/// A TPM command code and the name errors use for it.
#[derive(Debug, Clone, Copy)]
pub struct CommandCode {
    pub code: u32,
    pub name: &'static str,
}

macro_rules! commands {
    ($($id:ident = $code:literal, $name:literal;)*) => {
        $(pub const $id: CommandCode = CommandCode { code: $code, name: $name };)*
    };
}

commands! {
    STARTUP = 0x144, "TPM2_Startup";
    CREATE_PRIMARY = 0x131, "TPM2_CreatePrimary";
    CREATE = 0x153, "TPM2_Create";
    LOAD = 0x157, "TPM2_Load";
    UNSEAL = 0x15E, "TPM2_Unseal";
    FLUSH_CONTEXT = 0x165, "TPM2_FlushContext";
    START_AUTH_SESSION = 0x176, "TPM2_StartAuthSession";
    GET_CAPABILITY = 0x17A, "TPM2_GetCapability";
    GET_RANDOM = 0x17B, "TPM2_GetRandom";
    PCR_READ = 0x17E, "TPM2_PCR_Read";
    POLICY_PCR = 0x17F, "TPM2_PolicyPCR";
    PCR_EXTEND = 0x182, "TPM2_PCR_Extend";
    POLICY_GET_DIGEST = 0x189, "TPM2_PolicyGetDigest";
    NV_DEFINE_SPACE = 0x12A, "TPM2_NV_DefineSpace";
    NV_WRITE = 0x137, "TPM2_NV_Write";
    POLICY_NV = 0x149, "TPM2_PolicyNV";
    NV_READ = 0x14E, "TPM2_NV_Read";
    LOAD_EXTERNAL = 0x167, "TPM2_LoadExternal";
    NV_READ_PUBLIC = 0x169, "TPM2_NV_ReadPublic";
    POLICY_AUTHORIZE = 0x16A, "TPM2_PolicyAuthorize";
    VERIFY_SIGNATURE = 0x177, "TPM2_VerifySignature";
}

/// How a handle in the command is authorised.
#[derive(Debug, Clone)]
pub enum Auth {
    /// The password session with an empty password.
    EmptyPassword,
    /// A policy session used once: `continueSession` is clear, so the TPM ends the session
    /// when the command succeeds (a failed command leaves it open, for the caller to flush).
    PolicyOnce(u32),
    /// A session whose caller nonce, attributes and HMAC the caller computed.
    Session {
        handle: u32,
        nonce: Vec<u8>,
        attributes: u8,
        hmac: Vec<u8>,
    },
}

/// A growable big-endian buffer.
#[derive(Default)]
pub struct Writer(Zeroizing<Vec<u8>>);

impl Writer {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }

    /// A `TPM2B_*`: a 16-bit size, then the bytes.
    pub fn tpm2b(&mut self, v: &[u8]) -> &mut Self {
        let len = u16::try_from(v.len()).expect("TPM2B contents fit in 64 KiB");
        self.u16(len).bytes(v)
    }

    /// A `TPM2B_*` wrapping a structure that `f` writes.
    pub fn sized(&mut self, f: impl FnOnce(&mut Writer)) -> &mut Self {
        let mut inner = Writer::default();
        f(&mut inner);
        self.tpm2b(&inner.0)
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

/// A command being built: handles, their authorisations, then parameters.
pub struct Command {
    code: CommandCode,
    handles: Writer,
    auths: Writer,
    params: Writer,
}

impl Command {
    pub fn new(code: CommandCode) -> Self {
        Command {
            code,
            handles: Writer::default(),
            auths: Writer::default(),
            params: Writer::default(),
        }
    }

    pub fn code(&self) -> CommandCode {
        self.code
    }

    /// A handle that needs no authorisation.
    pub fn handle(mut self, handle: u32) -> Self {
        self.handles.u32(handle);
        self
    }

    /// A handle and the session that authorises it.
    pub fn authorized_handle(mut self, handle: u32, auth: Auth) -> Self {
        self.handles.u32(handle);
        match auth {
            Auth::EmptyPassword => {
                self.auths.u32(RS_PW).tpm2b(&[]).u8(0).tpm2b(&[]);
            }
            // A policy session without PolicyAuthValue or PolicyPassword needs no HMAC and no
            // caller nonce.
            Auth::PolicyOnce(session) => {
                self.auths.u32(session).tpm2b(&[]).u8(0).tpm2b(&[]);
            }
            Auth::Session {
                handle,
                nonce,
                attributes,
                hmac,
            } => {
                self.auths
                    .u32(handle)
                    .tpm2b(&nonce)
                    .u8(attributes)
                    .tpm2b(&hmac);
            }
        }
        self
    }

    pub fn params(mut self, f: impl FnOnce(&mut Writer)) -> Self {
        f(&mut self.params);
        self
    }

    /// The command's bytes.
    pub fn finish(&self) -> Zeroizing<Vec<u8>> {
        let sessions = !self.auths.0.is_empty();
        let auth_len = if sessions { 4 + self.auths.0.len() } else { 0 };
        let size = HEADER_LEN + self.handles.0.len() + auth_len + self.params.0.len();
        let mut w = Writer::default();
        w.u16(if sessions {
            ST_SESSIONS
        } else {
            ST_NO_SESSIONS
        })
        .u32(u32::try_from(size).expect("command fits in 4 GiB"))
        .u32(self.code.code)
        .bytes(&self.handles.0);
        if sessions {
            w.u32(u32::try_from(self.auths.0.len()).expect("auth area fits"))
                .bytes(&self.auths.0);
        }
        w.bytes(&self.params.0);
        w.0
    }
}

/// A bounds-checked reader over a response; every error names the command.
pub struct Reader<'a> {
    command: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(command: &'static str, buf: &'a [u8]) -> Self {
        Reader {
            command,
            buf,
            pos: 0,
        }
    }

    pub fn malformed(&self, what: impl Into<String>) -> Error {
        Error::Malformed {
            command: self.command,
            what: what.into(),
        }
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                self.malformed(format!(
                    "{n} bytes wanted at offset {}, {} left",
                    self.pos,
                    self.buf.len().saturating_sub(self.pos)
                ))
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `TPM2B_*`'s contents.
    pub fn tpm2b(&mut self) -> Result<&'a [u8]> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }

    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.malformed(format!("{} trailing bytes", self.buf.len() - self.pos)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_without_sessions() {
        let cmd = Command::new(FLUSH_CONTEXT)
            .params(|w| {
                w.u32(0x8000_0000);
            })
            .finish();
        assert_eq!(
            cmd.as_slice(),
            [0x80, 0x01, 0, 0, 0, 14, 0, 0, 0x01, 0x65, 0x80, 0, 0, 0]
        );
    }

    #[test]
    fn command_with_password_session() {
        let cmd = Command::new(PCR_EXTEND)
            .authorized_handle(7, Auth::EmptyPassword)
            .finish();
        // header, handle, auth size 9, TPM_RS_PW, empty nonce, attributes, empty hmac
        assert_eq!(
            cmd.as_slice(),
            [
                0x80, 0x02, 0, 0, 0, 27, 0, 0, 0x01, 0x82, 0, 0, 0, 7, 0, 0, 0, 9, 0x40, 0, 0,
                0x09, 0, 0, 0, 0, 0
            ]
        );
    }

    #[test]
    fn reader_refuses_short_input() {
        let mut r = Reader::new("TPM2_Test", &[0, 5, 1, 2]);
        let err = r.tpm2b().unwrap_err().to_string();
        assert!(
            err.starts_with("TPM2_Test: malformed TPM response"),
            "{err}"
        );
    }
}
