//! Key-file mode for service-account keys, for clusters that do not use the
//! ExternalJWTSigner: `sa.key`/`sa.pub` as kubeadm names them, plus `sa-verify.pub`, the
//! bundle of every key tokens may still be verified with, for kube-apiserver's
//! `--service-account-key-file`.
//!
//! kube-apiserver reads these files only at start, so rotation is the documented
//! three-roll procedure (research note §3.2), one step per command:
//! `stage` (new key verifies everywhere), `promote` (new key signs, old one still
//! verifies), `retire` (old key gone once its tokens have expired). In this mode the
//! private key is necessarily a file the API server reads; the external signer is the mode
//! that keeps it in the HSM.

use std::path::Path;

use anyhow::{bail, Context};

use crate::server::write_atomic;

/// The rotation steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaStep {
    /// Create `sa.key`/`sa.pub` if missing and write the bundle.
    Init,
    /// Create `sa-next.key` and add its public key to the bundle.
    Stage,
    /// Make the staged key the signing key; the old public key stays in the bundle.
    Promote,
    /// Drop the previous public key from the bundle.
    Retire,
}

impl SaStep {
    /// Parses a step name.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "init" => SaStep::Init,
            "stage" => SaStep::Stage,
            "promote" => SaStep::Promote,
            "retire" => SaStep::Retire,
            other => bail!("unknown step {other:?}; use init, stage, promote or retire"),
        })
    }
}

fn read(dir: &Path, f: &str) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(dir.join(f)) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.join(f).display())),
    }
}

fn write(dir: &Path, f: &str, data: &str, mode: u32) -> anyhow::Result<()> {
    write_atomic(&dir.join(f), data.as_bytes(), mode)
        .with_context(|| format!("cannot write {}", dir.join(f).display()))
}

fn public_of(dir: &Path, key_file: &str) -> anyhow::Result<String> {
    let text = read(dir, key_file)?.with_context(|| format!("{key_file} is missing"))?;
    let key = rcgen::KeyPair::from_pem(&text)
        .map_err(|_| anyhow::anyhow!("{key_file} is not a usable PKCS#8 ECDSA key"))?;
    Ok(key.public_key_pem())
}

fn new_key() -> anyhow::Result<rcgen::KeyPair> {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("cannot generate a key")
}

/// Runs one step in `dir`; returns what the operator does next.
pub fn run_step(dir: &Path, step: SaStep) -> anyhow::Result<&'static str> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let bundle = |keys: &[String]| keys.concat();
    match step {
        SaStep::Init => {
            if read(dir, "sa.key")?.is_none() {
                let k = new_key()?;
                write(dir, "sa.key", &k.serialize_pem(), 0o600)?;
            }
            let current = public_of(dir, "sa.key")?;
            write(dir, "sa.pub", &current, 0o644)?;
            let mut keys = vec![current];
            keys.extend(read(dir, "sa-previous.pub")?);
            write(dir, "sa-verify.pub", &bundle(&keys), 0o644)?;
            Ok("point kube-apiserver --service-account-key-file at sa-verify.pub and --service-account-signing-key-file at sa.key, kube-controller-manager --service-account-private-key-file at sa.key")
        }
        SaStep::Stage => {
            if read(dir, "sa-next.key")?.is_some() {
                bail!("a key is already staged (sa-next.key); run `promote` next");
            }
            let current = public_of(dir, "sa.key")?;
            let k = new_key()?;
            write(dir, "sa-next.key", &k.serialize_pem(), 0o600)?;
            write(dir, "sa-next.pub", &k.public_key_pem(), 0o644)?;
            let mut keys = vec![current];
            keys.extend(read(dir, "sa-previous.pub")?);
            keys.push(k.public_key_pem());
            write(dir, "sa-verify.pub", &bundle(&keys), 0o644)?;
            Ok("restart every kube-apiserver, one at a time (they now accept the staged key), then run `promote`")
        }
        SaStep::Promote => {
            let next = read(dir, "sa-next.key")?
                .context("no staged key (sa-next.key); run `stage` first")?;
            let next_pub = public_of(dir, "sa-next.key")?;
            let old_pub = public_of(dir, "sa.key")?;
            write(dir, "sa-previous.pub", &old_pub, 0o644)?;
            write(
                dir,
                "sa-verify.pub",
                &bundle(&[next_pub.clone(), old_pub]),
                0o644,
            )?;
            write(dir, "sa.key", &next, 0o600)?;
            write(dir, "sa.pub", &next_pub, 0o644)?;
            for f in ["sa-next.key", "sa-next.pub"] {
                std::fs::remove_file(dir.join(f))
                    .with_context(|| format!("cannot remove {}", dir.join(f).display()))?;
            }
            Ok("restart every kube-apiserver and kube-controller-manager, one at a time (the new key signs); once tokens signed by the old key have expired, run `retire`")
        }
        SaStep::Retire => {
            let current = public_of(dir, "sa.key")?;
            write(dir, "sa-verify.pub", &current, 0o644)?;
            match std::fs::remove_file(dir.join("sa-previous.pub")) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context("cannot remove sa-previous.pub"),
            }
            Ok("restart every kube-apiserver, one at a time: the old key no longer verifies")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("sa-verify.pub"))
            .unwrap()
            .matches("BEGIN PUBLIC KEY")
            .count()
    }

    #[test]
    fn zero_downtime_rotation_steps() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        assert!(
            run_step(dir, SaStep::Promote).is_err(),
            "nothing staged yet"
        );
        run_step(dir, SaStep::Init).unwrap();
        let first = std::fs::read_to_string(dir.join("sa.pub")).unwrap();
        assert_eq!(count(dir), 1);
        run_step(dir, SaStep::Init).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("sa.pub")).unwrap(),
            first,
            "init keeps the key"
        );
        run_step(dir, SaStep::Stage).unwrap();
        assert!(
            run_step(dir, SaStep::Stage).is_err(),
            "one staged key at a time"
        );
        assert_eq!(count(dir), 2);
        assert_eq!(
            std::fs::read_to_string(dir.join("sa.pub")).unwrap(),
            first,
            "stage does not switch signing"
        );
        run_step(dir, SaStep::Promote).unwrap();
        let second = std::fs::read_to_string(dir.join("sa.pub")).unwrap();
        assert_ne!(second, first);
        let verify = std::fs::read_to_string(dir.join("sa-verify.pub")).unwrap();
        assert!(verify.contains(&first) && verify.contains(&second));
        assert!(!dir.join("sa-next.key").exists());
        run_step(dir, SaStep::Retire).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("sa-verify.pub")).unwrap(),
            second
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("sa.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
