//! The root CA key `keygrid dev` creates lives in SoftHSM2 as a sensitive, non-extractable
//! object, and the published root certificate carries exactly that key.
//!
//! One test per file: SoftHSM2 reads its configuration once per process.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use keygrid_integration::{softhsm_module, DevEnv};

fn bool_attr(attrs: &[Attribute], want: AttributeType) -> Option<bool> {
    attrs.iter().find_map(|a| match (a, want) {
        (Attribute::Sensitive(v), AttributeType::Sensitive) => Some(*v),
        (Attribute::Extractable(v), AttributeType::Extractable) => Some(*v),
        (Attribute::NeverExtractable(v), AttributeType::NeverExtractable) => Some(*v),
        (Attribute::AlwaysSensitive(v), AttributeType::AlwaysSensitive) => Some(*v),
        _ => None,
    })
}

#[test]
fn root_key_is_sensitive_non_extractable_and_matches_the_root_certificate() {
    let env = DevEnv::start("5m");
    let dir = env.dir.path().to_path_buf();
    // Same token directory as the running core; SoftHSM2's file store is multi-process safe.
    std::env::set_var("SOFTHSM2_CONF", dir.join("softhsm/softhsm2.conf"));
    let pin = std::fs::read_to_string(dir.join("hsm-pin")).unwrap();

    let ctx = Pkcs11::new(softhsm_module()).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == "keygrid-dev")
        .expect("the dev token");
    let session = ctx.open_ro_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::from(pin.trim().to_string())))
        .unwrap();

    let privs = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .unwrap();
    let mut root = None;
    for h in privs {
        let attrs = session.get_attributes(h, &[AttributeType::Label]).unwrap();
        let label = attrs.iter().find_map(|a| match a {
            Attribute::Label(l) => Some(String::from_utf8_lossy(l).to_string()),
            _ => None,
        });
        if label
            .as_deref()
            .is_some_and(|l| l.starts_with("keygrid-root-"))
        {
            root = Some((h, label.unwrap()));
        }
    }
    let (root, label) = root.expect("a root key in the token");
    let attrs = session
        .get_attributes(
            root,
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
                AttributeType::AlwaysSensitive,
            ],
        )
        .unwrap();
    assert_eq!(
        bool_attr(&attrs, AttributeType::Sensitive),
        Some(true),
        "CKA_SENSITIVE"
    );
    assert_eq!(
        bool_attr(&attrs, AttributeType::Extractable),
        Some(false),
        "CKA_EXTRACTABLE"
    );
    assert_eq!(
        bool_attr(&attrs, AttributeType::NeverExtractable),
        Some(true),
        "CKA_NEVER_EXTRACTABLE"
    );
    assert_eq!(
        bool_attr(&attrs, AttributeType::AlwaysSensitive),
        Some(true),
        "CKA_ALWAYS_SENSITIVE"
    );

    // Reading the private value must fail: either an error or no value returned.
    match session.get_attributes(root, &[AttributeType::Value]) {
        Err(_) => {}
        Ok(values) => assert!(
            !values
                .iter()
                .any(|a| matches!(a, Attribute::Value(v) if !v.is_empty())),
            "the token handed out the root private key value"
        ),
    }

    // The root certificate in the published bundle carries the token's public key.
    let pubs = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Label(label.into_bytes()),
        ])
        .unwrap();
    let point = session
        .get_attributes(pubs[0], &[AttributeType::EcPoint])
        .unwrap();
    let point = point
        .iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p.clone()),
            _ => None,
        })
        .unwrap();
    let bundle = std::fs::read_to_string(env.bundle_pem()).unwrap();
    let root_der = pem::parse_many(&bundle).unwrap().remove(0).into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&root_der).unwrap();
    let spk = cert.public_key().subject_public_key.data.to_vec();
    assert!(
        point.ends_with(&spk),
        "root certificate key differs from the HSM key"
    );
    assert_eq!(spk.len(), 97, "an uncompressed P-384 point");
}
