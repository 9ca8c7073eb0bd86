//! Sealed software keys: issuer keys kept on disk encrypted under a key-encryption key (KEK).
//!
//! For short-lived issuers an operator chooses to keep out of the HSM (for signing speed or
//! because the HSM is far away). The private key exists in clear only in this process's
//! memory; on disk each key is one file, `<label>.sealed`, holding AES-256-GCM ciphertext of
//! its PKCS#8 DER. The additional authenticated data binds the file to its label and algorithm,
//! so a file renamed to another label, or swapped for another algorithm's, fails to open
//! rather than silently signing with the wrong key. The KEK comes from a file or an environment
//! variable (never from the configuration file itself) and never appears in logs or errors.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use zeroize::Zeroizing;

use super::software::SoftwareKey;
use super::{CaSigner, KeyAlgorithm, KeyBackend, KeyError};

/// First bytes of every sealed key file: names the format so a future one can be told apart.
const MAGIC: &[u8; 8] = b"KGSEAL01";

/// A 256-bit key-encryption key.
pub struct Kek(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

impl Kek {
    /// Parses a KEK given as 64 hex digits or standard base64 of 32 bytes (surrounding
    /// whitespace ignored). `source` names where it came from, for the error message only.
    pub fn parse(text: &str, source: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).ok()
        } else {
            base64::engine::general_purpose::STANDARD.decode(text).ok()
        };
        let bytes = Zeroizing::new(bytes.unwrap_or_default());
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != key.len() {
            return Err(KeyError::Token(format!(
                "key-encryption key from {source} must be 32 bytes as 64 hex digits or base64"
            )));
        }
        key.copy_from_slice(&bytes);
        Ok(Kek(key))
    }

    /// Reads the KEK from a file, refusing one other users can read.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|e| {
            KeyError::Token(format!("cannot read KEK file {}: {e}", path.display()))
        })?;
        if meta.mode() & 0o077 != 0 {
            return Err(KeyError::Token(format!(
                "KEK file {} is readable by group or others; chmod 600 it",
                path.display()
            )));
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            KeyError::Token(format!("cannot read KEK file {}: {e}", path.display()))
        })?);
        Self::parse(&text, &path.display().to_string())
    }

    /// A fresh random KEK, for `keygrid dev` and tests.
    pub fn generate() -> Result<Self, KeyError> {
        let mut key = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(key.as_mut())
            .map_err(|_| KeyError::Other("cannot draw a random KEK".into()))?;
        Ok(Kek(key))
    }

    /// The KEK as hex, to write a new KEK file.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.as_ref()))
    }
}

/// Key backend whose keys are [`SoftwareKey`]s sealed in a directory.
pub struct SealedFileBackend {
    dir: PathBuf,
    kek: LessSafeKey,
    loaded: Mutex<HashMap<String, Arc<SoftwareKey>>>,
}

impl std::fmt::Debug for SealedFileBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedFileBackend")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Labels become file names, so only a safe alphabet is allowed (no separators, no `..`).
fn check_label(label: &str) -> Result<(), KeyError> {
    let ok = !label.is_empty()
        && label.len() <= 128
        && !label.starts_with('.')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::Other(format!(
            "key label {label:?} is not usable as a sealed key file name"
        )))
    }
}

fn aad(label: &str, algorithm: KeyAlgorithm) -> Vec<u8> {
    format!("keygrid-sealed-key\0{label}\0{}", algorithm.name()).into_bytes()
}

impl SealedFileBackend {
    /// Opens (creating with mode 0700 if missing) the directory of sealed keys.
    pub fn open(dir: &Path, kek: Kek) -> Result<Self, KeyError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                KeyError::Token(format!(
                    "cannot create sealed key directory {}: {e}",
                    dir.display()
                ))
            })?;
        let unbound = UnboundKey::new(&AES_256_GCM, kek.0.as_ref())
            .map_err(|_| KeyError::Other("KEK rejected by AES-256-GCM".into()))?;
        Ok(SealedFileBackend {
            dir: dir.to_path_buf(),
            kek: LessSafeKey::new(unbound),
            loaded: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, label: &str) -> PathBuf {
        self.dir.join(format!("{label}.sealed"))
    }

    fn seal(&self, label: &str, key: &SoftwareKey) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyError::Other("cannot draw a nonce".into()))?;
        let pkcs8 = key.to_pkcs8()?;
        let mut buf = Zeroizing::new(pkcs8.to_vec());
        self.kek
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(label, key.algorithm())),
                &mut *buf,
            )
            .map_err(|_| KeyError::Other(format!("cannot seal key {label:?}")))?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + buf.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    fn unseal(
        &self,
        label: &str,
        algorithm: KeyAlgorithm,
        file: &[u8],
    ) -> Result<SoftwareKey, KeyError> {
        let bad = |why: &str| {
            KeyError::Other(format!(
                "sealed key {label:?} cannot be opened: {why} (wrong KEK, or the file was altered, renamed or is for another algorithm)"
            ))
        };
        let rest = file
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| bad("not a KeyGrid sealed key file"))?;
        if rest.len() < NONCE_LEN {
            return Err(bad("truncated"));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad("truncated"))?;
        let mut buf = Zeroizing::new(sealed.to_vec());
        let plain = self
            .kek
            .open_in_place(nonce, Aad::from(aad(label, algorithm)), &mut buf)
            .map_err(|_| bad("authentication failed"))?;
        SoftwareKey::from_pkcs8(algorithm, plain)
    }

    /// Writes the file atomically (temp file, fsync, rename) with mode 0600 so a crash never
    /// leaves a half-written key under its final name.
    fn write_new(&self, label: &str, contents: &[u8]) -> Result<(), KeyError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(label);
        if path.exists() {
            return Err(KeyError::Other(format!(
                "sealed key {label:?} already exists; refusing to overwrite it"
            )));
        }
        let tmp = self.dir.join(format!(".{label}.tmp"));
        let io = |e: std::io::Error| {
            KeyError::Other(format!("cannot write sealed key {}: {e}", path.display()))
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(contents).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

impl KeyBackend for SealedFileBackend {
    fn kind(&self) -> &'static str {
        "software"
    }

    fn generate(
        &self,
        label: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<Arc<dyn CaSigner>, KeyError> {
        check_label(label)?;
        let key = SoftwareKey::generate(algorithm)?;
        let sealed = self.seal(label, &key)?;
        self.write_new(label, &sealed)?;
        let key = Arc::new(key);
        self.loaded
            .lock()
            .map_err(|_| KeyError::Other("sealed key cache lock poisoned".into()))?
            .insert(label.to_string(), key.clone());
        Ok(key)
    }

    fn find(&self, label: &str, algorithm: KeyAlgorithm) -> Result<Arc<dyn CaSigner>, KeyError> {
        check_label(label)?;
        let mut loaded = self
            .loaded
            .lock()
            .map_err(|_| KeyError::Other("sealed key cache lock poisoned".into()))?;
        if let Some(k) = loaded.get(label) {
            if k.algorithm() == algorithm {
                return Ok(k.clone());
            }
        }
        let file = match std::fs::read(self.path(label)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyError::NotFound {
                    label: label.to_string(),
                    token: format!("sealed:{}", self.dir.display()),
                })
            }
            Err(e) => {
                return Err(KeyError::Other(format!(
                    "cannot read sealed key {label:?}: {e}"
                )))
            }
        };
        let key = Arc::new(self.unseal(label, algorithm, &file)?);
        loaded.insert(label.to_string(), key.clone());
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(dir: &Path, kek_hex: &str) -> SealedFileBackend {
        SealedFileBackend::open(dir, Kek::parse(kek_hex, "test").unwrap()).unwrap()
    }

    const KEK_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const KEK_B: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn keys_survive_a_restart_and_are_not_on_disk_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        for alg in KeyAlgorithm::ALL {
            let label = format!("issuer-{}", alg.name());
            let made = backend(dir.path(), KEK_A).generate(&label, alg).unwrap();
            // A new backend (a restarted process) finds the same key.
            let found = backend(dir.path(), KEK_A).find(&label, alg).unwrap();
            assert_eq!(made.public_key_raw(), found.public_key_raw(), "{alg}");
            let file = std::fs::read(dir.path().join(format!("{label}.sealed"))).unwrap();
            // PKCS#8 of ECDSA and RSA keys carries the public key too: in clear it would show.
            let tail = &found.public_key_raw()[found.public_key_raw().len() - 16..];
            if alg != KeyAlgorithm::Ed25519 {
                assert!(
                    !file.windows(16).any(|w| w == tail),
                    "{alg} key stored in clear"
                );
            }
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(format!("{label}.sealed")))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            assert!(file.starts_with(MAGIC));
        }
    }

    #[test]
    fn wrong_kek_tampering_renaming_and_wrong_algorithm_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let b = backend(dir.path(), KEK_A);
        b.generate("workloads-1", KeyAlgorithm::EcdsaP256).unwrap();
        let msg = |e: KeyError| e.to_string();

        let e = msg(backend(dir.path(), KEK_B)
            .find("workloads-1", KeyAlgorithm::EcdsaP256)
            .err()
            .unwrap());
        assert!(e.contains("cannot be opened"), "{e}");
        assert!(!e.contains(KEK_A) && !e.contains(KEK_B));

        let e = msg(backend(dir.path(), KEK_A)
            .find("workloads-1", KeyAlgorithm::EcdsaP384)
            .err()
            .unwrap());
        assert!(e.contains("cannot be opened"), "{e}");

        std::fs::copy(
            dir.path().join("workloads-1.sealed"),
            dir.path().join("nodes-1.sealed"),
        )
        .unwrap();
        assert!(backend(dir.path(), KEK_A)
            .find("nodes-1", KeyAlgorithm::EcdsaP256)
            .is_err());

        let path = dir.path().join("workloads-1.sealed");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(backend(dir.path(), KEK_A)
            .find("workloads-1", KeyAlgorithm::EcdsaP256)
            .is_err());
        std::fs::write(&path, &bytes[..10]).unwrap();
        assert!(backend(dir.path(), KEK_A)
            .find("workloads-1", KeyAlgorithm::EcdsaP256)
            .is_err());
    }

    #[test]
    fn labels_cannot_escape_the_directory_and_keys_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let b = backend(dir.path(), KEK_A);
        for label in ["../x", "a/b", "", ".hidden"] {
            assert!(
                b.generate(label, KeyAlgorithm::EcdsaP256).is_err(),
                "{label}"
            );
        }
        b.generate("k", KeyAlgorithm::EcdsaP256).unwrap();
        assert!(b.generate("k", KeyAlgorithm::EcdsaP256).is_err());
        assert!(matches!(
            b.find("missing", KeyAlgorithm::EcdsaP256),
            Err(KeyError::NotFound { .. })
        ));
    }

    #[test]
    fn kek_parsing() {
        assert!(Kek::parse(KEK_A, "t").is_ok());
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(Kek::parse(&format!("  {b64}\n"), "t").is_ok());
        let e = Kek::parse("c2hvcnQ=", "env KEYGRID_KEK")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("env KEYGRID_KEK") && e.contains("32 bytes"),
            "{e}"
        );
        assert_eq!(
            format!("{:?}", Kek::parse(KEK_A, "t").unwrap()),
            "Kek(<redacted>)"
        );
    }
}
