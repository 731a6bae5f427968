//! The TPM commands sealing needs, each one call: marshal, send, check the response code, parse.

use std::path::Path;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::marshal::{self, Auth, Command, CommandCode, Reader, Writer, HEADER_LEN, ST_SESSIONS};
use crate::policy::{marshal_one, PcrBank, PcrSelection};
use crate::rc::{self, ResponseCode};
use crate::salted;
use crate::transport::{Device, Tcp, Transport};
use crate::{Error, Result};

/// `TPM_RH_OWNER`: the storage hierarchy.
pub(crate) const RH_OWNER: u32 = 0x4000_0001;
/// `TPM_RH_NULL`: no salt key, no bind object.
const RH_NULL: u32 = 0x4000_0007;
/// `TPM_ALG_NULL`.
pub(crate) const ALG_NULL: u16 = 0x0010;
/// `TPM_SE_POLICY` and `TPM_SE_TRIAL`.
const SE_POLICY: u8 = 0x01;
const SE_HMAC: u8 = 0x00;
const SE_TRIAL: u8 = 0x03;
/// `TPM_ALG_SHA256`, the sessions' hash.
const ALG_SHA256: u16 = 0x000B;
/// How often a command is resent while the TPM answers with a transient code.
const RETRIES: usize = 20;

/// `TPM_HT_TRANSIENT`: the handle type of loaded objects.
pub const HT_TRANSIENT: u8 = 0x80;
/// `TPM_HT_LOADED_SESSION`: the handle type under which GetCapability lists loaded sessions.
pub const HT_LOADED_SESSION: u8 = 0x02;
/// Caller nonce size for StartAuthSession (16 is the minimum, the digest size the maximum).
const NONCE_LEN: usize = 32;

/// `TPM_ALG_AES` and `TPM_ALG_CFB`: the sessions' parameter encryption.
const ALG_AES: u16 = 0x0006;
const ALG_CFB: u16 = 0x0043;
/// `TPMA_SESSION.encrypt`: the TPM encrypts the response's first parameter.
const SESSION_ENCRYPT: u8 = 0x40;
/// `TPMA_SESSION.decrypt`: the caller encrypted the command's first parameter.
const SESSION_DECRYPT: u8 = 0x20;
/// `TPM_ALG_RSASSA`: RSASSA-PKCS1-v1_5.
const ALG_RSASSA: u16 = 0x0014;

/// A salted session's key and the TPM's newest nonce.
pub(crate) struct SaltedSession {
    session_key: Zeroizing<Vec<u8>>,
    nonce_tpm: Vec<u8>,
}

/// A fresh caller nonce.
fn random_nonce() -> Result<[u8; NONCE_LEN]> {
    let mut nonce = [0u8; NONCE_LEN];
    rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut nonce).map_err(Error::Random)?;
    Ok(nonce)
}

/// A loaded object or session, valid until flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle(pub u32);

/// The public and private parts of an object created under a parent: `TPM2B_PUBLIC` and
/// `TPM2B_PRIVATE` contents, without their size prefixes.
pub(crate) struct Created {
    pub private: Vec<u8>,
    pub public: Vec<u8>,
}

/// A connection to a TPM.
pub struct Tpm {
    transport: Box<dyn Transport>,
}

impl Tpm {
    pub fn new(transport: Box<dyn Transport>) -> Self {
        Tpm { transport }
    }

    /// Opens a TPM character device, normally [`crate::transport::DEFAULT_DEVICE`].
    pub fn open_device(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::new(Box::new(Device::open(path.as_ref())?)))
    }

    /// Connects to swtpm's TCP command port (`127.0.0.1:PORT`).
    pub fn connect_tcp(addr: &str) -> Result<Self> {
        Ok(Self::new(Box::new(Tcp::connect(addr)?)))
    }

    /// Sends `cmd` and returns the response after its header, or the TPM's error. A TPM that
    /// answers "retry", "yielded" or "testing" gets the same command again after a pause.
    fn execute(&mut self, cmd: &Command) -> Result<Response> {
        let bytes = cmd.finish();
        let mut pause = Duration::from_millis(10);
        for _ in 0..RETRIES {
            match self.execute_once(cmd.code(), &bytes) {
                Err(Error::Tpm { rc, .. }) if rc.is_transient() => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
        self.execute_once(cmd.code(), &bytes)
    }

    fn execute_once(&mut self, code: CommandCode, bytes: &[u8]) -> Result<Response> {
        let buf = self.transport.transact(bytes).map_err(|source| Error::Io {
            command: code.name,
            source,
        })?;
        let mut r = Reader::new(code.name, &buf);
        let tag = r.u16()?;
        let size = r.u32()?;
        let rc = r.u32()?;
        if size as usize != buf.len() {
            return Err(r.malformed(format!("header says {size} bytes, {} received", buf.len())));
        }
        if rc != rc::SUCCESS {
            return Err(Error::Tpm {
                command: code.name,
                rc: ResponseCode(rc),
            });
        }
        Ok(Response {
            code,
            sessions: tag == ST_SESSIONS,
            buf,
        })
    }

    /// TPM2_Startup(CLEAR). A TPM that is already started is not an error.
    pub fn startup_clear(&mut self) -> Result<()> {
        let cmd = Command::new(marshal::STARTUP).params(|w| {
            w.u16(0);
        });
        match self.execute(&cmd) {
            Err(Error::Tpm { rc, .. }) if rc.base() == rc::INITIALIZE => Ok(()),
            other => other.map(drop),
        }
    }

    /// The handles of one type the TPM holds loaded (TPM2_GetCapability, `TPM_CAP_HANDLES`),
    /// e.g. [`HT_TRANSIENT`] objects or [`HT_LOADED_SESSION`]s. Behind the kernel's resource
    /// manager these are only this client's.
    pub fn loaded_handles(&mut self, handle_type: u8) -> Result<Vec<u32>> {
        const CAP_HANDLES: u32 = 1;
        let first = u32::from(handle_type) << 24;
        let mut handles = Vec::new();
        let mut next = first;
        loop {
            let cmd = Command::new(marshal::GET_CAPABILITY).params(|w| {
                w.u32(CAP_HANDLES).u32(next).u32(64);
            });
            let resp = self.execute(&cmd)?;
            let (more, page) = resp.parse(0, |_, r| {
                let more = r.u8()? != 0;
                let _capability = r.u32()?;
                let count = r.u32()?;
                let page = (0..count).map(|_| r.u32()).collect::<Result<Vec<_>>>()?;
                Ok((more, page))
            })?;
            // Loaded sessions are listed with their own types (0x02 HMAC, 0x03 policy); the
            // list ends where the next type's handles begin.
            let wanted = |h: &u32| match handle_type {
                HT_LOADED_SESSION => matches!(h >> 24, 0x02 | 0x03),
                t => h >> 24 == u32::from(t),
            };
            let page: Vec<u32> = page.into_iter().filter(wanted).collect();
            match page.last() {
                // Each page must start where it was asked to, or a TPM that repeats a page
                // would keep this loop going for ever.
                Some(&last) if more && last < next => {
                    return Err(Error::Malformed {
                        command: marshal::GET_CAPABILITY.name,
                        what: format!("handle {last:#x} listed when asked from {next:#x}"),
                    });
                }
                Some(&last) if more => {
                    next = last + 1;
                    handles.extend(page);
                }
                _ => {
                    handles.extend(page);
                    return Ok(handles);
                }
            }
        }
    }

    /// TPM2_GetRandom: up to 32 bytes from the TPM's generator.
    pub fn get_random(&mut self, len: u16) -> Result<Zeroizing<Vec<u8>>> {
        let cmd = Command::new(marshal::GET_RANDOM).params(|w| {
            w.u16(len);
        });
        let resp = self.execute(&cmd)?;
        resp.parse(0, |_, r| Ok(Zeroizing::new(r.tpm2b()?.to_vec())))
    }

    /// TPM2_PCR_Read of one PCR.
    pub fn pcr_read(&mut self, bank: PcrBank, pcr: u8) -> Result<Vec<u8>> {
        let cmd = Command::new(marshal::PCR_READ).params(|w| {
            w.u32(1);
            marshal_one(w, bank, &[pcr]);
        });
        let resp = self.execute(&cmd)?;
        resp.parse(0, |_, r| {
            let _update_counter = r.u32()?;
            let banks = r.u32()?;
            for _ in 0..banks {
                r.u16()?;
                let n = r.u8()?;
                r.bytes(usize::from(n))?;
            }
            let count = r.u32()?;
            if count != 1 {
                return Err(r.malformed(format!(
                    "{count} digests for PCR {pcr} (is the {} bank allocated?)",
                    bank.name()
                )));
            }
            let value = r.tpm2b()?;
            if value.len() != bank.digest_len() {
                return Err(r.malformed(format!("PCR {pcr} value is {} bytes", value.len())));
            }
            Ok(value.to_vec())
        })
    }

    /// The values of the selected PCRs, in the selection's order.
    pub fn pcr_values(&mut self, selection: &PcrSelection) -> Result<Vec<Vec<u8>>> {
        selection
            .pcrs()
            .iter()
            .map(|&p| self.pcr_read(selection.bank(), p))
            .collect()
    }

    /// TPM2_PCR_Extend of one PCR in the sha256 bank: `PCR = SHA-256(PCR || digest)`.
    pub fn pcr_extend(&mut self, pcr: u8, digest: &[u8; 32]) -> Result<()> {
        let cmd = Command::new(marshal::PCR_EXTEND)
            .authorized_handle(u32::from(pcr), Auth::EmptyPassword)
            .params(|w| {
                w.u32(1).u16(ALG_SHA256).bytes(digest);
            });
        self.execute(&cmd).map(drop)
    }

    /// TPM2_CreatePrimary under the owner hierarchy (empty owner password) from a
    /// `TPMT_PUBLIC` template. The same template always yields the same key; its public area
    /// (`TPMT_PUBLIC`) comes back with the handle.
    pub(crate) fn create_primary(&mut self, template: &[u8]) -> Result<(Handle, Vec<u8>)> {
        let cmd = Command::new(marshal::CREATE_PRIMARY)
            .authorized_handle(RH_OWNER, Auth::EmptyPassword)
            .params(|w| {
                // TPM2B_SENSITIVE_CREATE { userAuth: empty, data: empty }
                w.sized(|s| {
                    s.tpm2b(&[]).tpm2b(&[]);
                })
                .tpm2b(template)
                .tpm2b(&[]) // outsideInfo
                .u32(0); // creationPCR: none
            });
        let resp = self.execute(&cmd)?;
        resp.parse(1, |handles, r| {
            Ok((Handle(handles[0]), r.tpm2b()?.to_vec()))
        })
    }

    /// TPM2_Create of an object under `parent` from a `TPMT_PUBLIC` template, with `data` as
    /// its sensitive data and an empty auth value.
    pub(crate) fn create(
        &mut self,
        parent: Handle,
        template: &[u8],
        data: &[u8],
    ) -> Result<Created> {
        let cmd = Command::new(marshal::CREATE)
            .authorized_handle(parent.0, Auth::EmptyPassword)
            .params(|w| {
                w.sized(|s| {
                    s.tpm2b(&[]).tpm2b(data);
                })
                .tpm2b(template)
                .tpm2b(&[])
                .u32(0);
            });
        let resp = self.execute(&cmd)?;
        resp.parse(0, |_, r| {
            let private = r.tpm2b()?.to_vec();
            let public = r.tpm2b()?.to_vec();
            // creationData, creationHash and creationTicket follow; sealing does not use them.
            Ok(Created { private, public })
        })
    }

    /// TPM2_Load of a sealed object's parts under `parent`.
    pub(crate) fn load(&mut self, parent: Handle, private: &[u8], public: &[u8]) -> Result<Handle> {
        let cmd = Command::new(marshal::LOAD)
            .authorized_handle(parent.0, Auth::EmptyPassword)
            .params(|w| {
                w.tpm2b(private).tpm2b(public);
            });
        let resp = self.execute(&cmd)?;
        resp.parse(1, |handles, _| Ok(Handle(handles[0])))
    }

    /// TPM2_StartAuthSession: an unsalted, unbound SHA-256 policy session, or a trial session
    /// that only computes a digest.
    pub fn start_policy_session(&mut self, trial: bool) -> Result<Handle> {
        let nonce = random_nonce()?;
        let cmd = Command::new(marshal::START_AUTH_SESSION)
            .handle(RH_NULL) // tpmKey
            .handle(RH_NULL) // bind
            .params(|w| {
                w.tpm2b(&nonce)
                    .tpm2b(&[]) // encryptedSalt
                    .u8(if trial { SE_TRIAL } else { SE_POLICY })
                    .u16(ALG_NULL) // symmetric: no parameter encryption
                    .u16(ALG_SHA256);
            });
        let resp = self.execute(&cmd)?;
        resp.parse(1, |handles, _| Ok(Handle(handles[0])))
    }

    /// TPM2_StartAuthSession: a policy session salted to `tpm_key` (an ECC storage key whose
    /// public area is `key_public`), with AES-128-CFB for parameter encryption. Returns the
    /// session and its key and nonces.
    pub(crate) fn start_salted_policy_session(
        &mut self,
        tpm_key: Handle,
        key_public: &[u8],
    ) -> Result<(Handle, SaltedSession)> {
        self.start_salted_session(tpm_key, key_public, SE_POLICY)
    }

    /// A salted session of type `kind` (policy or HMAC) on `tpm_key`.
    fn start_salted_session(
        &mut self,
        tpm_key: Handle,
        key_public: &[u8],
        kind: u8,
    ) -> Result<(Handle, SaltedSession)> {
        let key = salted::ecc_public_key(key_public)?;
        let (salt, point) = salted::ecdh_salt(&key)?;
        let nonce_caller = random_nonce()?;
        let cmd = Command::new(marshal::START_AUTH_SESSION)
            .handle(tpm_key.0)
            .handle(RH_NULL) // bind
            .params(|w| {
                w.tpm2b(&nonce_caller)
                    .tpm2b(&point)
                    .u8(kind)
                    .u16(ALG_AES)
                    .u16(128)
                    .u16(ALG_CFB)
                    .u16(ALG_SHA256);
            });
        let resp = self.execute(&cmd)?;
        let (handle, nonce_tpm) = resp.parse(1, |handles, r| {
            Ok((Handle(handles[0]), r.tpm2b()?.to_vec()))
        })?;
        // Unbound: the session key comes from the salt alone.
        let session_key = salted::kdfa(
            &salt,
            "ATH",
            &nonce_tpm,
            &nonce_caller,
            8 * salted::DIGEST_LEN as u32,
        );
        Ok((
            handle,
            SaltedSession {
                session_key,
                nonce_tpm,
            },
        ))
    }

    /// TPM2_Unseal authorised by a salted policy session ([`Tpm::start_salted_policy_session`])
    /// that also encrypts the response, so the secret is sent over the bus encrypted. The
    /// command carries the session's HMAC, and the response's HMAC is checked before the
    /// secret is decrypted. Like [`Tpm::unseal_object`], a success ends the session.
    pub(crate) fn unseal_encrypted(
        &mut self,
        item: Handle,
        item_public: &[u8],
        session: Handle,
        keys: &SaltedSession,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let code = marshal::UNSEAL.code.to_be_bytes();
        let cp_hash = salted::sha256(&[&code, &salted::name(item_public)?]);
        let nonce_caller = random_nonce()?;
        let attributes = [SESSION_ENCRYPT];
        // The policy needs no authValue, so the HMAC key is the session key alone.
        let hmac = salted::hmac(
            &keys.session_key,
            &[&cp_hash, &nonce_caller, &keys.nonce_tpm, &attributes],
        );
        let cmd = Command::new(marshal::UNSEAL).authorized_handle(
            item.0,
            Auth::Session {
                handle: session.0,
                nonce: nonce_caller.to_vec(),
                attributes: attributes[0],
                hmac: hmac.to_vec(),
            },
        );
        let resp = self.execute(&cmd)?;
        let (params, nonce_tpm) = resp.session_params(keys, &nonce_caller)?;
        let mut r = Reader::new(marshal::UNSEAL.name, params);
        let mut secret = Zeroizing::new(r.tpm2b()?.to_vec());
        let cfb = salted::kdfa(&keys.session_key, "CFB", nonce_tpm, &nonce_caller, 256);
        let key: [u8; 16] = cfb[..16].try_into().expect("16 bytes");
        let iv: [u8; 16] = cfb[16..32].try_into().expect("16 bytes");
        salted::cfb_decrypt(&key, &iv, &mut secret);
        Ok(secret)
    }

    /// TPM2_PolicyPCR with an empty expected digest: the TPM extends the session's digest with
    /// the live values of the selected PCRs.
    pub fn policy_pcr(&mut self, session: Handle, selection: &PcrSelection) -> Result<()> {
        let cmd = Command::new(marshal::POLICY_PCR)
            .handle(session.0)
            .params(|w| {
                w.tpm2b(&[]);
                selection.marshal(w);
            });
        self.execute(&cmd).map(drop)
    }

    /// TPM2_Create under `parent` (an ECC storage key with public area `parent_public`) in a
    /// salted HMAC session that encrypts the sensitive data on its way to the TPM, so a sealed
    /// secret never crosses the bus in the clear. The response's HMAC is checked.
    pub(crate) fn create_encrypted(
        &mut self,
        parent: Handle,
        parent_public: &[u8],
        template: &[u8],
        data: &[u8],
    ) -> Result<Created> {
        let (session, keys) = self.start_salted_session(parent, parent_public, SE_HMAC)?;
        let result = self.create_in_session(parent, parent_public, template, data, session, &keys);
        if result.is_err() {
            // A failed command leaves the session loaded; the first error is the one reported.
            let _ = self.flush(session);
        }
        result
    }

    fn create_in_session(
        &mut self,
        parent: Handle,
        parent_public: &[u8],
        template: &[u8],
        data: &[u8],
        session: Handle,
        keys: &SaltedSession,
    ) -> Result<Created> {
        let nonce_caller = random_nonce()?;
        // TPMS_SENSITIVE_CREATE { userAuth: empty, data }, encrypted with AES-128-CFB under
        // KDFa(sessionKey, "CFB", nonceCaller, nonceTPM) (the parent's authValue is empty).
        let mut sensitive = Writer::default();
        sensitive.tpm2b(&[]).tpm2b(data);
        let mut hidden = Zeroizing::new(sensitive.as_slice().to_vec());
        let cfb = salted::kdfa(
            &keys.session_key,
            "CFB",
            &nonce_caller,
            &keys.nonce_tpm,
            256,
        );
        let key: [u8; 16] = cfb[..16].try_into().expect("16 bytes");
        let iv: [u8; 16] = cfb[16..32].try_into().expect("16 bytes");
        salted::cfb_encrypt(&key, &iv, &mut hidden);
        let mut params = Writer::default();
        params
            .tpm2b(&hidden)
            .tpm2b(template)
            .tpm2b(&[]) // outsideInfo
            .u32(0); // creationPCR: none
        let code = marshal::CREATE.code.to_be_bytes();
        let cp_hash = salted::sha256(&[&code, &salted::name(parent_public)?, params.as_slice()]);
        let attributes = [SESSION_DECRYPT];
        let hmac = salted::hmac(
            &keys.session_key,
            &[&cp_hash, &nonce_caller, &keys.nonce_tpm, &attributes],
        );
        let cmd = Command::new(marshal::CREATE)
            .authorized_handle(
                parent.0,
                Auth::Session {
                    handle: session.0,
                    nonce: nonce_caller.to_vec(),
                    attributes: attributes[0],
                    hmac: hmac.to_vec(),
                },
            )
            .params(|w| {
                w.bytes(params.as_slice());
            });
        let resp = self.execute(&cmd)?;
        let (params, _) = resp.session_params(keys, &nonce_caller)?;
        let mut r = Reader::new(marshal::CREATE.name, params);
        let private = r.tpm2b()?.to_vec();
        let public = r.tpm2b()?.to_vec();
        Ok(Created { private, public })
    }

    /// TPM2_LoadExternal of a public key (no private part) into the owner hierarchy, so that
    /// its signature checks yield tickets PolicyAuthorize accepts.
    pub(crate) fn load_external(&mut self, public: &[u8]) -> Result<Handle> {
        let cmd = Command::new(marshal::LOAD_EXTERNAL).params(|w| {
            w.u16(0) // inPrivate: none
                .tpm2b(public)
                .u32(RH_OWNER);
        });
        let resp = self.execute(&cmd)?;
        resp.parse(1, |handles, _| Ok(Handle(handles[0])))
    }

    /// TPM2_VerifySignature of an RSASSA-SHA256 signature over `digest`: the ticket
    /// (`TPMT_TK_VERIFIED`, marshalled) that proves it to PolicyAuthorize.
    pub(crate) fn verify_signature(
        &mut self,
        key: Handle,
        digest: &[u8],
        signature: &[u8],
    ) -> Result<Vec<u8>> {
        let cmd = Command::new(marshal::VERIFY_SIGNATURE)
            .handle(key.0)
            .params(|w| {
                w.tpm2b(digest)
                    .u16(ALG_RSASSA)
                    .u16(ALG_SHA256)
                    .tpm2b(signature);
            });
        let resp = self.execute(&cmd)?;
        resp.parse(0, |_, r| {
            let tag = r.u16()?;
            let hierarchy = r.u32()?;
            let digest = r.tpm2b()?;
            let mut w = Writer::default();
            w.u16(tag).u32(hierarchy).tpm2b(digest);
            Ok(w.as_slice().to_vec())
        })
    }

    /// TPM2_PolicyAuthorize: replaces the session's digest, which must equal `approved`, by
    /// one that names the key, given the key's ticket over `approved || policy_ref`.
    pub(crate) fn policy_authorize(
        &mut self,
        session: Handle,
        approved: &[u8],
        policy_ref: &[u8],
        key_name: &[u8],
        ticket: &[u8],
    ) -> Result<()> {
        let cmd = Command::new(marshal::POLICY_AUTHORIZE)
            .handle(session.0)
            .params(|w| {
                w.tpm2b(approved)
                    .tpm2b(policy_ref)
                    .tpm2b(key_name)
                    .bytes(ticket);
            });
        self.execute(&cmd).map(drop)
    }

    /// Sends a command built elsewhere in the crate and parses its response.
    pub(crate) fn run<R>(
        &mut self,
        cmd: &Command,
        handles: usize,
        f: impl FnOnce(&[u32], &mut Reader<'_>) -> Result<R>,
    ) -> Result<R> {
        self.execute(cmd)?.parse(handles, f)
    }

    /// TPM2_PolicyGetDigest: the session's current policy digest.
    pub fn policy_get_digest(&mut self, session: Handle) -> Result<Vec<u8>> {
        let cmd = Command::new(marshal::POLICY_GET_DIGEST).handle(session.0);
        let resp = self.execute(&cmd)?;
        resp.parse(0, |_, r| Ok(r.tpm2b()?.to_vec()))
    }

    /// TPM2_Unseal of a loaded sealed object, authorised by a policy session that the TPM ends
    /// when the unseal succeeds; after a failure the session is still loaded.
    pub fn unseal_object(&mut self, item: Handle, session: Handle) -> Result<Zeroizing<Vec<u8>>> {
        let cmd =
            Command::new(marshal::UNSEAL).authorized_handle(item.0, Auth::PolicyOnce(session.0));
        let resp = self.execute(&cmd)?;
        resp.parse(0, |_, r| Ok(Zeroizing::new(r.tpm2b()?.to_vec())))
    }

    /// TPM2_FlushContext: unloads an object or ends a session.
    pub fn flush(&mut self, handle: Handle) -> Result<()> {
        let cmd = Command::new(marshal::FLUSH_CONTEXT).params(|w| {
            w.u32(handle.0);
        });
        self.execute(&cmd).map(drop)
    }

    /// Runs `f` with `handle` loaded and flushes it afterwards, whatever `f` returned. The
    /// first error wins: a failed flush is reported only when `f` succeeded.
    pub(crate) fn with_flush<R>(
        &mut self,
        handle: Handle,
        f: impl FnOnce(&mut Tpm) -> Result<R>,
    ) -> Result<R> {
        let result = f(self);
        let flushed = self.flush(handle);
        let value = result?;
        flushed?;
        Ok(value)
    }
}

/// A successful response, still to be parsed.
struct Response {
    code: CommandCode,
    sessions: bool,
    buf: Zeroizing<Vec<u8>>,
}

impl Response {
    /// The parameter area of a response to a command authorised by the salted session `keys`
    /// (one session, no handles), once the response's HMAC shows it comes from that session,
    /// and the TPM's new nonce.
    fn session_params(&self, keys: &SaltedSession, nonce_caller: &[u8]) -> Result<(&[u8], &[u8])> {
        let (params, auth) = self.areas()?;
        let mut r = Reader::new(self.code.name, auth);
        let nonce_tpm = r.tpm2b()?;
        let returned = r.u8()?;
        let their_hmac = r.tpm2b()?;
        let rp_hash = salted::sha256(&[&0u32.to_be_bytes(), &self.code.code.to_be_bytes(), params]);
        let expected = salted::hmac(
            &keys.session_key,
            &[&rp_hash, nonce_tpm, nonce_caller, &[returned]],
        );
        if their_hmac != expected {
            return Err(r.malformed("the response's HMAC does not match: not from this session"));
        }
        Ok((params, nonce_tpm))
    }

    /// The parameter and authorisation areas of a response with sessions and no handles.
    fn areas(&self) -> Result<(&[u8], &[u8])> {
        let mut r = Reader::new(self.code.name, &self.buf[HEADER_LEN..]);
        if !self.sessions {
            return Err(r.malformed("no authorisation area in the response"));
        }
        let n = r.u32()?;
        let params = r.bytes(n as usize)?;
        let auth = r.bytes(self.buf.len() - HEADER_LEN - 4 - n as usize)?;
        Ok((params, auth))
    }

    /// Reads `handles` handles, then hands the parameter area to `f`; with sessions the
    /// parameter area is bounded by its size field and the authorisation area is skipped.
    fn parse<R>(
        &self,
        handles: usize,
        f: impl FnOnce(&[u32], &mut Reader<'_>) -> Result<R>,
    ) -> Result<R> {
        let mut r = Reader::new(self.code.name, &self.buf[HEADER_LEN..]);
        let hs = (0..handles).map(|_| r.u32()).collect::<Result<Vec<_>>>()?;
        let params = if self.sessions {
            let n = r.u32()?;
            r.bytes(n as usize)?
        } else {
            r.bytes(self.buf.len() - HEADER_LEN - 4 * handles)?
        };
        let mut p = Reader::new(self.code.name, params);
        f(&hs, &mut p)
    }
}

/// Writes a TPMT_PUBLIC with `f`; a helper for templates.
pub(crate) fn template(f: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let mut w = Writer::default();
    f(&mut w);
    w.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TPM that answers every command with the same response.
    struct Repeating(Vec<u8>);

    impl Transport for Repeating {
        fn transact(&mut self, _command: &[u8]) -> std::io::Result<Zeroizing<Vec<u8>>> {
            Ok(Zeroizing::new(self.0.clone()))
        }
    }

    #[test]
    fn a_tpm_that_repeats_a_page_of_handles_is_refused() {
        // GetCapability: more data, TPM_CAP_HANDLES, one handle: 0x80000000, every time.
        let mut response = vec![0x80, 0x01, 0, 0, 0, 23, 0, 0, 0, 0];
        response.extend_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0, 1, 0x80, 0, 0, 0]);
        let mut tpm = Tpm::new(Box::new(Repeating(response)));
        let e = tpm.loaded_handles(HT_TRANSIENT).unwrap_err();
        assert!(
            e.to_string()
                .contains("handle 0x80000000 listed when asked from 0x80000001"),
            "{e}"
        );
    }
}
