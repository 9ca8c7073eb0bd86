//! PKCS#11 key backend: CA keys generated and used inside an HSM (SoftHSM2 in dev and tests).
//!
//! Keys are created in the token with `CKA_SENSITIVE` true and `CKA_EXTRACTABLE` false, so the
//! private key cannot leave it; KeyGrid only ever holds object handles. ECDSA signs with the
//! token's raw `CKM_ECDSA` on a digest computed here, which every PKCS#11 token supports;
//! Ed25519 uses `CKM_EDDSA` (PKCS#11 3.0) and RSA `CKM_SHA256_RSA_PKCS`/`CKM_SHA384_RSA_PKCS`.
//!
//! Sessions are pooled: a PKCS#11 session is single-threaded, so concurrent signs each take
//! their own session instead of queueing on one.

use std::path::Path;
use std::sync::{Arc, Mutex};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};

use super::{ecdsa_der, rsa_public, CaSigner, KeyAlgorithm, KeyError, KeyFamily};

fn ck(operation: &'static str) -> impl FnOnce(CkError) -> KeyError {
    move |source| KeyError::Pkcs11 { operation, source }
}

/// An open, logged-in PKCS#11 token.
pub struct Pkcs11Token {
    ctx: Pkcs11,
    slot: Slot,
    label: String,
    pin: AuthPin,
    pool: Mutex<Vec<Session>>,
}

impl std::fmt::Debug for Pkcs11Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The PIN is deliberately left out.
        f.debug_struct("Pkcs11Token")
            .field("label", &self.label)
            .finish()
    }
}

/// Loads a PKCS#11 module and initialises it for use from several threads.
fn load_module(module: &Path) -> Result<Pkcs11, KeyError> {
    let ctx = Pkcs11::new(module).map_err(|e| {
        KeyError::Token(format!(
            "cannot load PKCS#11 module {}: {e}",
            module.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(ctx),
        Err(e) => Err(ck("C_Initialize")(e)),
    }
}

/// Finds the slot holding the initialised token with this label.
fn find_slot(ctx: &Pkcs11, label: &str) -> Result<Option<Slot>, KeyError> {
    for slot in ctx
        .get_slots_with_initialized_token()
        .map_err(ck("C_GetSlotList"))?
    {
        let info = ctx.get_token_info(slot).map_err(ck("C_GetTokenInfo"))?;
        if info.label().trim_end() == label {
            return Ok(Some(slot));
        }
    }
    Ok(None)
}

/// Tokens this process has opened. PKCS#11 login state is per process, so a second open
/// of the same token would be "already logged in" whatever PIN it gave; refusing it keeps
/// `open` an honest PIN check.
static OPENED: Mutex<Vec<(std::path::PathBuf, String)>> = Mutex::new(Vec::new());

impl Pkcs11Token {
    /// Opens the token with `label` in `module` and logs in as the user. A token can be
    /// opened once per process; share the returned handle.
    pub fn open(module: &Path, label: &str, pin: AuthPin) -> Result<Arc<Self>, KeyError> {
        let key = (module.to_path_buf(), label.to_string());
        if OPENED.lock().map_err(|_| poisoned())?.contains(&key) {
            return Err(KeyError::Token(format!(
                "token {label:?} is already open in this process; share the existing handle"
            )));
        }
        let ctx = load_module(module)?;
        let slot = find_slot(&ctx, label)?.ok_or_else(|| {
            KeyError::Token(format!(
                "no initialised token labelled {label:?} in {}",
                module.display()
            ))
        })?;
        let token = Arc::new(Pkcs11Token {
            ctx,
            slot,
            label: label.to_string(),
            pin,
            pool: Mutex::new(Vec::new()),
        });
        // Log in now so a wrong PIN is reported at start, not at first signature. This first
        // login must really check the PIN, so "already logged in" is an error here.
        let session = token
            .ctx
            .open_rw_session(token.slot)
            .map_err(ck("C_OpenSession"))?;
        match session.login(UserType::User, Some(&token.pin)) {
            Ok(()) => {}
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                return Err(KeyError::Token(format!(
                    "token {label:?} already has a logged-in session in this process"
                )))
            }
            Err(e) => return Err(ck("C_Login")(e)),
        }
        token.put_back(session);
        OPENED.lock().map_err(|_| poisoned())?.push(key);
        Ok(token)
    }

    /// Creates a token with `label` in the first free slot unless one already exists.
    ///
    /// Used by `keygrid dev`, which owns a private SoftHSM2 token directory. Production
    /// tokens are created by the HSM's own tooling.
    pub fn init_if_missing(
        module: &Path,
        label: &str,
        so_pin: &AuthPin,
        user_pin: &AuthPin,
    ) -> Result<bool, KeyError> {
        let ctx = load_module(module)?;
        if find_slot(&ctx, label)?.is_some() {
            return Ok(false);
        }
        let mut free = None;
        for slot in ctx.get_slots_with_token().map_err(ck("C_GetSlotList"))? {
            let info = ctx.get_token_info(slot).map_err(ck("C_GetTokenInfo"))?;
            if !info.token_initialized() {
                free = Some(slot);
                break;
            }
        }
        let slot = free.ok_or_else(|| KeyError::Token("no free slot to create a token".into()))?;
        ctx.init_token(slot, so_pin, label)
            .map_err(ck("C_InitToken"))?;
        // Slot numbers may change once a token is initialised; look it up again.
        let slot = find_slot(&ctx, label)?
            .ok_or_else(|| KeyError::Token(format!("token {label:?} vanished after creation")))?;
        let session = ctx.open_rw_session(slot).map_err(ck("C_OpenSession"))?;
        session
            .login(UserType::So, Some(so_pin))
            .map_err(ck("C_Login(SO)"))?;
        session.init_pin(user_pin).map_err(ck("C_InitPIN"))?;
        session.logout().map_err(ck("C_Logout"))?;
        Ok(true)
    }

    /// The token's label, for messages and `keygrid ca show`.
    pub fn label(&self) -> &str {
        &self.label
    }

    fn new_session(&self) -> Result<Session, KeyError> {
        let session = self
            .ctx
            .open_rw_session(self.slot)
            .map_err(ck("C_OpenSession"))?;
        match session.login(UserType::User, Some(&self.pin)) {
            // Login state is per application: later sessions are already logged in.
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(e) => Err(ck("C_Login")(e)),
        }
    }

    fn take(&self) -> Result<Session, KeyError> {
        let pooled = self.pool.lock().map_err(|_| poisoned())?.pop();
        match pooled {
            Some(session) => Ok(session),
            None => self.new_session(),
        }
    }

    fn put_back(&self, session: Session) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(session);
        }
    }

    /// Runs `f` with a pooled session. A session that failed is dropped rather than reused.
    fn with_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        let session = self.take()?;
        let result = f(&session);
        if result.is_ok() {
            self.put_back(session);
        }
        result
    }

    /// Generates a key pair inside the token: private half sensitive and non-extractable.
    pub fn generate_key(
        self: &Arc<Self>,
        label: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<Pkcs11Key, KeyError> {
        let id = label.as_bytes().to_vec();
        let mut public_template = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ];
        let mechanism = match (algorithm.family(), algorithm.ec_params_der()) {
            (KeyFamily::Ecdsa, Some(params)) => {
                public_template.push(Attribute::EcParams(params.to_vec()));
                Mechanism::EccKeyPairGen
            }
            (KeyFamily::Ed25519, Some(params)) => {
                public_template.push(Attribute::EcParams(params.to_vec()));
                Mechanism::EccEdwardsKeyPairGen
            }
            _ => {
                let bits = algorithm.rsa_bits().ok_or_else(|| {
                    KeyError::Other(format!("no PKCS#11 key generation for {algorithm}"))
                })?;
                public_template.push(Attribute::ModulusBits((bits as u64).into()));
                public_template.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
                Mechanism::RsaPkcsKeyPairGen
            }
        };
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id),
        ];
        let (public, private) = self.with_session(|s| {
            s.generate_key_pair(&mechanism, &public_template, &private_template)
                .map_err(ck("C_GenerateKeyPair"))
        })?;
        self.key_from_handles(label, algorithm, public, private)
    }

    /// Finds a key pair KeyGrid generated earlier, by label.
    pub fn find_key(
        self: &Arc<Self>,
        label: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<Pkcs11Key, KeyError> {
        let find = |class: ObjectClass| {
            self.with_session(|s| {
                s.find_objects(&[
                    Attribute::Class(class),
                    Attribute::Label(label.as_bytes().to_vec()),
                ])
                .map_err(ck("C_FindObjects"))
            })
        };
        let not_found = || KeyError::NotFound {
            label: label.to_string(),
            token: self.label.clone(),
        };
        let private = *find(ObjectClass::PRIVATE_KEY)?
            .first()
            .ok_or_else(not_found)?;
        let public = *find(ObjectClass::PUBLIC_KEY)?
            .first()
            .ok_or_else(not_found)?;
        self.key_from_handles(label, algorithm, public, private)
    }

    fn key_from_handles(
        self: &Arc<Self>,
        label: &str,
        algorithm: KeyAlgorithm,
        public: ObjectHandle,
        private: ObjectHandle,
    ) -> Result<Pkcs11Key, KeyError> {
        let public_raw = match algorithm.family() {
            KeyFamily::Ecdsa | KeyFamily::Ed25519 => self.ec_point(label, algorithm, public)?,
            KeyFamily::Rsa => self.rsa_public_key(label, algorithm, public)?,
        };
        Ok(Pkcs11Key {
            token: Arc::clone(self),
            private,
            label: label.to_string(),
            algorithm,
            public_raw,
        })
    }

    /// The public point of an EC or Edwards key, checked against the expected algorithm.
    fn ec_point(
        &self,
        label: &str,
        algorithm: KeyAlgorithm,
        public: ObjectHandle,
    ) -> Result<Vec<u8>, KeyError> {
        let attrs = self.with_session(|s| {
            s.get_attributes(public, &[AttributeType::EcPoint])
                .map_err(ck("C_GetAttributeValue(CKA_EC_POINT)"))
        })?;
        let point = attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or_else(|| KeyError::Other(format!("key {label:?} has no CKA_EC_POINT")))?;
        let raw = unwrap_octet_string(&point).ok_or_else(|| {
            KeyError::Other(format!("key {label:?} has a malformed CKA_EC_POINT"))
        })?;
        let expected = match algorithm.ecdsa_scalar_len() {
            Some(n) => 1 + 2 * n,
            None => 32,
        };
        if raw.len() != expected {
            return Err(KeyError::Other(format!(
                "key {label:?} is not a {algorithm} key"
            )));
        }
        Ok(raw)
    }

    /// The DER `RSAPublicKey` of an RSA key, checked against the expected modulus size.
    fn rsa_public_key(
        &self,
        label: &str,
        algorithm: KeyAlgorithm,
        public: ObjectHandle,
    ) -> Result<Vec<u8>, KeyError> {
        let attrs = self.with_session(|s| {
            s.get_attributes(
                public,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            )
            .map_err(ck("C_GetAttributeValue(CKA_MODULUS)"))
        })?;
        let (mut modulus, mut exponent) = (None, None);
        for a in attrs {
            match a {
                Attribute::Modulus(m) => modulus = Some(m),
                Attribute::PublicExponent(e) => exponent = Some(e),
                _ => {}
            }
        }
        let (Some(modulus), Some(exponent)) = (modulus, exponent) else {
            return Err(KeyError::Other(format!(
                "key {label:?} has no RSA modulus or exponent"
            )));
        };
        let significant = modulus.iter().skip_while(|b| **b == 0).count();
        if Some(significant * 8) != algorithm.rsa_bits() {
            return Err(KeyError::Other(format!(
                "key {label:?} is not a {algorithm} key"
            )));
        }
        rsa_public::encode(&modulus, &exponent)
    }
}

fn poisoned() -> KeyError {
    KeyError::Other("PKCS#11 session pool lock poisoned".into())
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the point; some tokens return the bare point.
fn unwrap_octet_string(value: &[u8]) -> Option<Vec<u8>> {
    match value {
        [0x04, len, rest @ ..] if (*len as usize) == rest.len() && *len < 0x80 => {
            Some(rest.to_vec())
        }
        [0x04, 0x81, len, rest @ ..] if (*len as usize) == rest.len() => Some(rest.to_vec()),
        // A bare uncompressed point also starts with 0x04; accept it when the length fits.
        [0x04, ..] if value.len() == 65 || value.len() == 97 => Some(value.to_vec()),
        _ => None,
    }
}

impl Drop for Pkcs11Token {
    fn drop(&mut self) {
        if let Ok(mut opened) = OPENED.lock() {
            opened.retain(|(_, label)| label != &self.label);
        }
    }
}

/// A private key inside a PKCS#11 token.
pub struct Pkcs11Key {
    token: Arc<Pkcs11Token>,
    private: ObjectHandle,
    label: String,
    algorithm: KeyAlgorithm,
    public_raw: Vec<u8>,
}

impl CaSigner for Pkcs11Key {
    fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    fn public_key_raw(&self) -> &[u8] {
        &self.public_raw
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self.algorithm.family() {
            KeyFamily::Ecdsa => {
                let scalar_len = self.algorithm.ecdsa_scalar_len().unwrap_or_default();
                let digest = self.algorithm.digest(msg).unwrap_or_default();
                let fixed = self.token.with_session(|s| {
                    s.sign(&Mechanism::Ecdsa, self.private, &digest)
                        .map_err(ck("C_Sign"))
                })?;
                ecdsa_der::fixed_to_der(&fixed, scalar_len)
            }
            KeyFamily::Ed25519 => {
                let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
                self.token.with_session(|s| {
                    s.sign(&mechanism, self.private, msg)
                        .map_err(ck("C_Sign(CKM_EDDSA)"))
                })
            }
            KeyFamily::Rsa => {
                let mechanism = match self.algorithm {
                    KeyAlgorithm::Rsa4096 => Mechanism::Sha384RsaPkcs,
                    _ => Mechanism::Sha256RsaPkcs,
                };
                self.token.with_session(|s| {
                    s.sign(&mechanism, self.private, msg)
                        .map_err(ck("C_Sign(RSA PKCS#1)"))
                })
            }
        }
    }

    fn location(&self) -> String {
        format!("pkcs11:{}/{}", self.token.label(), self.label)
    }
}

#[cfg(test)]
mod tests {
    use super::unwrap_octet_string;

    #[test]
    fn ec_point_octet_string_is_unwrapped() {
        let mut der = vec![0x04, 65, 0x04];
        der.extend_from_slice(&[7u8; 64]);
        assert_eq!(unwrap_octet_string(&der).unwrap().len(), 65);
        let mut der384 = vec![0x04, 97, 0x04];
        der384.extend_from_slice(&[7u8; 96]);
        assert_eq!(unwrap_octet_string(&der384).unwrap().len(), 97);
        assert!(unwrap_octet_string(&[0x30, 1, 0]).is_none());
    }
}
