//! The PKCS#11 key backend against a real SoftHSM2 token.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once per process, at `C_Initialize`, and a process
//! initialises the module once; so every check lives in the one `#[test]` below, run in
//! order against one private token directory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use aws_lc_rs::signature::{
    UnparsedPublicKey, VerificationAlgorithm, ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1,
    ED25519, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_2048_8192_SHA384,
};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

use keygrid_core::ca::{Hierarchy, HierarchySettings};
use keygrid_core::keys::pkcs11::{Pkcs11Key, Pkcs11Token};
use keygrid_core::keys::sealed::{Kek, SealedFileBackend};
use keygrid_core::keys::{CaSigner, IssuerKeyRouter, KeyAlgorithm, KeyError, KeyFamily};
use keygrid_core::store::Store;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "keygrid-test";
const SO_PIN: &str = "so-secret-4711";
const USER_PIN: &str = "user-secret-0815";
const WRONG_PIN: &str = "wrong-secret-9876";

fn module() -> PathBuf {
    let path = PathBuf::from(MODULE);
    assert!(
        path.exists(),
        "SoftHSM2 PKCS#11 module {MODULE} is missing; run scripts/install-deps.sh \
         (or apt-get install softhsm2) before running these tests"
    );
    path
}

/// Writes a softhsm2.conf for a private token directory and points this process at it.
fn softhsm_env(dir: &Path) {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    // Only one test runs in this binary and it sets this before any PKCS#11 call.
    std::env::set_var("SOFTHSM2_CONF", &conf);
}

fn pin(p: &str) -> AuthPin {
    AuthPin::from(p.to_string())
}

fn verify_alg(algorithm: KeyAlgorithm) -> &'static dyn VerificationAlgorithm {
    match algorithm {
        KeyAlgorithm::EcdsaP256 => &ECDSA_P256_SHA256_ASN1,
        KeyAlgorithm::EcdsaP384 => &ECDSA_P384_SHA384_ASN1,
        KeyAlgorithm::Ed25519 => &ED25519,
        KeyAlgorithm::Rsa3072 => &RSA_PKCS1_2048_8192_SHA256,
        KeyAlgorithm::Rsa4096 => &RSA_PKCS1_2048_8192_SHA384,
    }
}

/// Signs `msg` with `key` and checks the DER signature with aws-lc-rs.
fn sign_and_verify(key: &dyn CaSigner, msg: &[u8]) {
    let sig = key.sign(msg).expect("token signs");
    match key.algorithm().family() {
        KeyFamily::Ecdsa => assert_eq!(sig[0], 0x30, "signature is a DER SEQUENCE"),
        KeyFamily::Ed25519 => assert_eq!(sig.len(), 64),
        KeyFamily::Rsa => assert_eq!(Some(sig.len() * 8), key.algorithm().rsa_bits()),
    }
    let public = UnparsedPublicKey::new(verify_alg(key.algorithm()), key.public_key_raw());
    public
        .verify(msg, &sig)
        .unwrap_or_else(|_| panic!("{} signature does not verify", key.algorithm()));
    let mut tampered = msg.to_vec();
    tampered.push(0);
    assert!(
        public.verify(&tampered, &sig).is_err(),
        "signature verifies over a different message"
    );
}

#[test]
fn softhsm_backend() {
    let module = module();
    let dir = tempfile::tempdir().unwrap();
    softhsm_env(dir.path());

    // --- token creation --------------------------------------------------------------
    let created =
        Pkcs11Token::init_if_missing(&module, TOKEN, &pin(SO_PIN), &pin(USER_PIN)).unwrap();
    assert!(created, "a fresh token directory has no token yet");
    let created =
        Pkcs11Token::init_if_missing(&module, TOKEN, &pin(SO_PIN), &pin(USER_PIN)).unwrap();
    assert!(!created, "an existing token is left alone");

    // --- wrong PIN (before any session of this process is logged in) -------------------
    match Pkcs11Token::open(&module, TOKEN, pin(WRONG_PIN)) {
        Ok(_) => panic!("opening the token with a wrong PIN must fail"),
        Err(e) => {
            let shown = format!("{e} / {e:?}");
            assert!(!shown.contains(WRONG_PIN), "error leaks the PIN: {shown}");
            assert!(!shown.contains(USER_PIN), "error leaks the PIN: {shown}");
            assert!(
                matches!(
                    e,
                    KeyError::Pkcs11 {
                        source: CkError::Pkcs11(RvError::PinIncorrect, _),
                        ..
                    }
                ),
                "expected CKR_PIN_INCORRECT, got {e:?}"
            );
        }
    }
    // An unknown token label is a clear error too.
    match Pkcs11Token::open(&module, "no-such-token", pin(USER_PIN)) {
        Ok(_) => panic!("opening a missing token must fail"),
        Err(e) => assert!(e.to_string().contains("no-such-token"), "{e}"),
    }

    // --- keys: generate, sign, verify, find again ------------------------------------
    let token = Pkcs11Token::open(&module, TOKEN, pin(USER_PIN)).unwrap();
    assert_eq!(token.label(), TOKEN);
    assert!(!format!("{token:?}").contains(USER_PIN));

    let p256 = token
        .generate_key("test-p256", KeyAlgorithm::EcdsaP256)
        .unwrap();
    assert_eq!(p256.algorithm(), KeyAlgorithm::EcdsaP256);
    assert_eq!(p256.public_key_raw().len(), 65);
    assert_eq!(p256.public_key_raw()[0], 0x04, "uncompressed point");
    assert_eq!(p256.location(), format!("pkcs11:{TOKEN}/test-p256"));
    sign_and_verify(&p256, b"KeyGrid P-256 test message");

    let p384 = token
        .generate_key("test-p384", KeyAlgorithm::EcdsaP384)
        .unwrap();
    assert_eq!(p384.algorithm(), KeyAlgorithm::EcdsaP384);
    assert_eq!(p384.public_key_raw().len(), 97);
    assert_eq!(p384.public_key_raw()[0], 0x04, "uncompressed point");
    sign_and_verify(&p384, b"KeyGrid P-384 test message");
    assert_ne!(p256.public_key_raw(), &p384.public_key_raw()[..65]);

    let ed = token
        .generate_key("test-ed25519", KeyAlgorithm::Ed25519)
        .unwrap();
    assert_eq!(ed.public_key_raw().len(), 32);
    sign_and_verify(&ed, b"KeyGrid Ed25519 test message");
    let rsa = token
        .generate_key("test-rsa3072", KeyAlgorithm::Rsa3072)
        .unwrap();
    sign_and_verify(&rsa, b"KeyGrid RSA-3072 test message");
    let rsa_found = token
        .find_key("test-rsa3072", KeyAlgorithm::Rsa3072)
        .unwrap();
    assert_eq!(rsa_found.public_key_raw(), rsa.public_key_raw());
    assert!(
        token
            .find_key("test-rsa3072", KeyAlgorithm::Rsa4096)
            .is_err(),
        "an RSA-3072 key must not load as RSA-4096"
    );
    assert!(
        token
            .find_key("test-ed25519", KeyAlgorithm::EcdsaP256)
            .is_err(),
        "an Ed25519 key must not load as P-256"
    );

    let found = token
        .find_key("test-p256", KeyAlgorithm::EcdsaP256)
        .unwrap();
    assert_eq!(found.public_key_raw(), p256.public_key_raw());
    sign_and_verify(&found, b"signed with the key found again");
    let found384 = token
        .find_key("test-p384", KeyAlgorithm::EcdsaP384)
        .unwrap();
    assert_eq!(found384.public_key_raw(), p384.public_key_raw());
    // Asking for a key with the wrong algorithm is refused, not misused.
    match token.find_key("test-p384", KeyAlgorithm::EcdsaP256) {
        Ok(_) => panic!("a P-384 key must not load as P-256"),
        Err(e) => assert!(matches!(e, KeyError::Other(_)), "{e:?}"),
    }

    match token.find_key("no-such-key", KeyAlgorithm::EcdsaP256) {
        Ok(_) => panic!("an unknown label must not be found"),
        Err(KeyError::NotFound { label, token: t }) => {
            assert_eq!(label, "no-such-key");
            assert_eq!(t, TOKEN);
        }
        Err(e) => panic!("expected KeyError::NotFound, got {e:?}"),
    }

    // --- the private key cannot leave the token --------------------------------------
    check_private_key_attributes(&module, "test-p256");
    check_private_key_attributes(&module, "test-p384");
    check_private_key_attributes(&module, "test-ed25519");
    check_private_key_attributes(&module, "test-rsa3072");

    // --- concurrent signing through the session pool ---------------------------------
    concurrent_signing(Arc::new(p256));

    // --- a whole hierarchy with its keys in the token --------------------------------
    hierarchy_in_token(&module, token, dir.path());
}

/// Looks at the private key with cryptoki directly: sensitive, never extractable, no value.
fn check_private_key_attributes(module: &Path, label: &str) {
    let ctx = Pkcs11::new(module).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("C_Initialize: {e}"),
    }
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == TOKEN)
        .expect("test token present");
    let session = ctx.open_ro_session(slot).unwrap();
    match session.login(UserType::User, Some(&pin(USER_PIN))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("C_Login: {e}"),
    }
    let handles = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .unwrap();
    assert_eq!(handles.len(), 1, "exactly one private key labelled {label}");
    let key = handles[0];

    let attrs = session
        .get_attributes(
            key,
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
                AttributeType::AlwaysSensitive,
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::Sign,
            ],
        )
        .unwrap();
    let flag = |want: AttributeType| -> bool {
        attrs
            .iter()
            .find_map(|a| match (a, want) {
                (Attribute::Sensitive(v), AttributeType::Sensitive)
                | (Attribute::Extractable(v), AttributeType::Extractable)
                | (Attribute::NeverExtractable(v), AttributeType::NeverExtractable)
                | (Attribute::AlwaysSensitive(v), AttributeType::AlwaysSensitive)
                | (Attribute::Token(v), AttributeType::Token)
                | (Attribute::Private(v), AttributeType::Private)
                | (Attribute::Sign(v), AttributeType::Sign) => Some(*v),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{label}: attribute {want:?} not returned"))
    };
    assert!(flag(AttributeType::Sensitive), "{label}: CKA_SENSITIVE");
    assert!(
        !flag(AttributeType::Extractable),
        "{label}: CKA_EXTRACTABLE"
    );
    assert!(
        flag(AttributeType::NeverExtractable),
        "{label}: CKA_NEVER_EXTRACTABLE"
    );
    assert!(
        flag(AttributeType::AlwaysSensitive),
        "{label}: CKA_ALWAYS_SENSITIVE"
    );
    assert!(flag(AttributeType::Token), "{label}: CKA_TOKEN");
    assert!(flag(AttributeType::Private), "{label}: CKA_PRIVATE");
    assert!(flag(AttributeType::Sign), "{label}: CKA_SIGN");

    // Reading the private value must not yield any bytes.
    match session.get_attributes(key, &[AttributeType::Value]) {
        Err(_) => {}
        Ok(attrs) => {
            for a in &attrs {
                if let Attribute::Value(v) = a {
                    panic!(
                        "{label}: CKA_VALUE of a sensitive key was readable ({} bytes)",
                        v.len()
                    );
                }
            }
        }
    }
    // Nor may the key be wrapped out (CKA_EXTRACTABLE false is enforced by the token).
    assert!(
        session
            .update_attributes(key, &[Attribute::Extractable(true)])
            .is_err(),
        "{label}: CKA_EXTRACTABLE could be switched back on"
    );
    // Keep `ctx` loaded until the session is closed.
    drop(session);
    drop(ctx);
}

fn concurrent_signing(key: Arc<Pkcs11Key>) {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 10;
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let key = Arc::clone(&key);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                (0..PER_THREAD)
                    .map(|i| {
                        let msg = format!("thread {t} message {i}").into_bytes();
                        let sig = key.sign(&msg).expect("concurrent sign");
                        (msg, sig)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key_raw().to_vec());
    let mut count = 0;
    for h in handles {
        for (msg, sig) in h.join().expect("signing thread panicked") {
            public
                .verify(&msg, &sig)
                .unwrap_or_else(|_| panic!("concurrent signature over {msg:?} does not verify"));
            count += 1;
        }
    }
    assert_eq!(count, THREADS * PER_THREAD);
}

fn hierarchy_in_token(module: &Path, token: Arc<Pkcs11Token>, dir: &Path) {
    let settings = HierarchySettings {
        trust_domain: "hsm.example.org".into(),
        root_algorithm: KeyAlgorithm::EcdsaP384,
        root_ttl: Duration::from_secs(10 * 365 * 24 * 3600),
        issuer_algorithm: KeyAlgorithm::EcdsaP256,
        // One issuer per other algorithm: RSA in the token, Ed25519 sealed on disk.
        issuer_algorithms: [
            ("nodes".to_string(), KeyAlgorithm::Rsa3072),
            ("workloads".to_string(), KeyAlgorithm::Ed25519),
        ]
        .into(),
        issuer_ttl: Duration::from_secs(7 * 24 * 3600),
        control_plane_constraints: Default::default(),
        revocation_base_url: None,
    };
    let db = dir.join("keygrid.db");
    let kek = "5e".repeat(32);
    let router = |token: &Arc<Pkcs11Token>| {
        IssuerKeyRouter::new(
            Box::new(token.clone()),
            Some(Box::new(
                SealedFileBackend::open(&dir.join("sealed"), Kek::parse(&kek, "test").unwrap())
                    .unwrap(),
            )),
            ["workloads".to_string()],
        )
        .unwrap()
    };
    let (root_der, workloads_der, root_location) = {
        let store = Store::open(&db).unwrap();
        let (h, created) = Hierarchy::init_or_load(&store, &router(&token), &settings).unwrap();
        assert!(created);
        let location = h.root().key_location();
        assert!(
            location.starts_with(&format!("pkcs11:{TOKEN}/keygrid-root-")),
            "root key lives in the token: {location}"
        );
        for a in h.authorities() {
            let expected = if a.name() == "workloads" {
                "software"
            } else {
                "pkcs11:"
            };
            assert!(a.key_location().starts_with(expected), "{}", a.name());
        }
        assert_eq!(h.workloads().algorithm(), KeyAlgorithm::Ed25519);
        let nodes = h
            .authorities()
            .into_iter()
            .find(|a| a.name() == "nodes")
            .unwrap();
        assert_eq!(nodes.algorithm(), KeyAlgorithm::Rsa3072);
        openssl_verifies_leaf_of(h.root().cert_der(), nodes.as_ref());
        (
            h.root().cert_der().to_vec(),
            h.workloads().cert_der().to_vec(),
            location,
        )
    };
    // The root's key is a non-extractable token key like the others.
    let root_label = root_location
        .rsplit('/')
        .next()
        .expect("location has a label")
        .to_string();
    check_private_key_attributes(module, &root_label);

    // A second handle to the same token in one process is refused: PKCS#11 login state is
    // per process, so it could not check its PIN.
    let second = Pkcs11Token::open(module, TOKEN, pin(WRONG_PIN));
    assert!(
        matches!(&second, Err(KeyError::Token(m)) if m.contains("already open")),
        "a second open of the same token must be refused"
    );
    // Restart of the store: a fresh store on the same file finds the same CAs.
    let store = Store::open(&db).unwrap();
    let (h, created) = Hierarchy::init_or_load(&store, &router(&token), &settings).unwrap();
    assert!(!created, "the stored hierarchy is loaded, not recreated");
    // Without the software backend the sealed workloads key cannot be found: a clear error.
    let e = Hierarchy::init_or_load(&store, &token, &settings)
        .err()
        .expect("software keys need the software backend");
    assert!(e.to_string().contains("not configured"), "{e}");
    assert_eq!(h.root().cert_der(), &root_der[..]);
    assert_eq!(h.workloads().cert_der(), &workloads_der[..]);
    assert_eq!(h.root().key_location(), root_location);
    assert_eq!(
        store.authorities().unwrap().len(),
        1 + keygrid_core::ca::ISSUERS.len()
    );

    // And the reloaded workloads key still signs certificates under the same chain.
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let issued = h
        .workloads()
        .sign(
            keygrid_core::ca::profiles::x509_svid("spiffe://hsm.example.org/w", &[]).unwrap(),
            &leaf_key,
            Duration::from_secs(300),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    openssl_verifies_leaf_of(&root_der, h.workloads().as_ref());
    let (_, leaf) = x509_parser::parse_x509_certificate(&issued.der).unwrap();
    let (_, workloads) = x509_parser::parse_x509_certificate(&workloads_der).unwrap();
    let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
    leaf.verify_signature(Some(workloads.public_key()))
        .expect("leaf signed by the HSM workloads key");
    workloads
        .verify_signature(Some(root.public_key()))
        .expect("workloads CA signed by the HSM root key");
    root.verify_signature(None)
        .expect("root self-signed by the HSM root key");
}

/// Issues a leaf under `issuer` and has `openssl verify -x509_strict` check the chain to the
/// root: the independent proof that RSA and Ed25519 CA signatures are well-formed.
fn openssl_verifies_leaf_of(root_der: &[u8], issuer: &keygrid_core::ca::Authority) {
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let issued = issuer
        .sign(
            keygrid_core::ca::profiles::x509_svid("spiffe://hsm.example.org/w", &[]).unwrap(),
            &leaf_key,
            Duration::from_secs(300),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pem = |name: &str, der: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())),
        )
        .unwrap();
        path
    };
    let root = pem("root.pem", root_der);
    let inter = pem("issuer.pem", issuer.cert_der());
    let leaf = pem("leaf.pem", &issued.der);
    let out = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-x509_strict")
        .arg("-CAfile")
        .arg(&root)
        .arg("-untrusted")
        .arg(&inter)
        .arg(&leaf)
        .output()
        .expect("openssl is installed (scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "{} ({}) chain: {}{}",
        issuer.name(),
        issuer.algorithm(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
