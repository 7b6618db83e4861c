//! The PKCS#11 backend against a real SoftHSM 2 token: no mocks.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once, at `C_Initialize`, and a process may hold only one context
//! per module; setting an environment variable from inside the test process is `unsafe` (which
//! the workspace forbids). So every test runs in its own child process: the `#[test]` function
//! creates a token directory and config file, re-runs this test binary for just that test with
//! `SOFTHSM2_CONF` set, and reports the child's output. In the child, the same function sees
//! [`CHILD_ENV`], initialises its token with `softhsm2-util` and runs the body. Each test thus has
//! its own token directory, its own module context, and its own process-wide login state.
//!
//! Without SoftHSM the tests print `SKIPPED: ...` and pass, except under `CI=true`, where they
//! fail with instructions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair, RsaKeyPair};
use backend_pkcs11::{KeyPolicy, Pkcs11Backend, Pkcs11Options, Pkcs11Signer, RsaMechanism};
use der::Decode;
use secrecy::SecretSlice;
use signer_api::keyuri::{KeyUri, Pkcs11Uri};
use signer_api::signer::PrivateKeyMaterial;
use signer_api::verify::verify_signature;
use signer_api::{ErrorKind, KeyAlgorithm, KeyGenerator, KeyImporter, SignatureAlgorithm, Signer};
use spki::SubjectPublicKeyInfoOwned;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const CHILD_ENV: &str = "KUBESIGN_SOFTHSM_TEST_DIR";
const SO_PIN: &str = "87654321";
const PIN: &str = "12345678";

/// One test's SoftHSM world, as seen from the child process.
struct Fixture {
    dir: PathBuf,
    label: String,
    pin_file: PathBuf,
}

impl Fixture {
    /// The key URI for `object` on this test's token.
    fn uri(&self, object: &str) -> Pkcs11Uri {
        self.uri_on(&self.label, object)
    }

    fn uri_on(&self, token: &str, object: &str) -> Pkcs11Uri {
        parse(&format!(
            "pkcs11:token={token};object={object};type=private?module-path={MODULE}&pin-source=file:{}",
            self.pin_file.display()
        ))
    }

    fn backend(&self) -> Pkcs11Backend {
        let mut o = Pkcs11Options::default();
        o.pool_size = 4;
        Pkcs11Backend::new(o)
    }

    /// Initialises another token. Only before the first backend call of the test: SoftHSM reads
    /// its token directory when the module is initialised.
    fn init_token(&self, label: &str) {
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                SO_PIN,
                "--pin",
                PIN,
            ])
            .output()
            .expect("softhsm2-util runs");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token {label}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pkcs11-tool --list-objects` output for this test's token (a separate process).
    fn pkcs11_tool_objects(&self) -> String {
        let out = Command::new("pkcs11-tool")
            .args([
                "--module",
                MODULE,
                "--token-label",
                &self.label,
                "--login",
                "--pin",
                PIN,
                "--list-objects",
            ])
            .output()
            .expect("pkcs11-tool runs");
        assert!(
            out.status.success(),
            "pkcs11-tool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn write_file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

fn parse(s: &str) -> Pkcs11Uri {
    match KeyUri::parse(s).unwrap() {
        KeyUri::Pkcs11(u) => *u,
        other => panic!("not a pkcs11 URI: {other}"),
    }
}

/// Token labels are at most 32 bytes.
fn label_for(test: &str) -> String {
    test.chars().take(32).collect()
}

fn tool_present(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `body` for test `name` in a child process with its own SoftHSM token directory.
fn run_isolated<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Fixture) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let dir = PathBuf::from(dir);
        let fx = Fixture {
            label: label_for(name.rsplit("::").next().unwrap_or(name)),
            pin_file: dir.join("pin"),
            dir,
        };
        fx.init_token(&fx.label);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(body(fx));
        return;
    }

    let missing: Vec<&str> = ["softhsm2-util", "pkcs11-tool"]
        .into_iter()
        .filter(|t| !tool_present(t))
        .chain((!Path::new(MODULE).exists()).then_some(MODULE))
        .collect();
    if !missing.is_empty() {
        let msg = format!(
            "SoftHSM test {name} needs {}: install with `apt-get install -y softhsm2 opensc`",
            missing.join(", ")
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg} (CI=true: PKCS#11 tests must not be skipped in CI)");
        }
        // Straight to the process's stderr, past libtest's output capture, so it is seen.
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIPPED: {msg}");
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let pin = dir.path().join("pin");
    std::fs::write(&pin, format!("{PIN}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            name,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success(),
        "test {name} failed in its child process"
    );
    assert!(
        stdout.contains("1 passed") || stdout.contains("test result: ok. 1 passed"),
        "test {name} did not run in its child process"
    );
}

macro_rules! softhsm_test {
    ($(#[$m:meta])* $name:ident, |$fx:ident| $body:block) => {
        $(#[$m])*
        #[test]
        fn $name() {
            // libtest's name for the test: the module path below the crate, then the function.
            let full = format!("{}::{}", module_path!(), stringify!($name));
            let name = full.split_once("::").map_or(full.as_str(), |(_, rest)| rest);
            run_isolated(name, |$fx: Fixture| async move $body);
        }
    };
}

async fn sign_and_verify(signer: &dyn Signer, msg: &[u8]) {
    let sig = signer.sign(msg).await.unwrap();
    verify_signature(
        signer.public_key(),
        &signer.algorithm().algorithm_identifier(),
        msg,
        &sig,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", signer.describe()));
}

softhsm_test!(generate_sign_verify_each_algorithm, |fx| {
    let backend = fx.backend();
    for (alg, sig_alg, mech) in [
        (
            KeyAlgorithm::EcdsaP256,
            SignatureAlgorithm::EcdsaP256Sha256,
            "CKM_ECDSA",
        ),
        (
            KeyAlgorithm::EcdsaP384,
            SignatureAlgorithm::EcdsaP384Sha384,
            "CKM_ECDSA",
        ),
        (
            KeyAlgorithm::Rsa2048,
            SignatureAlgorithm::RsaPkcs1Sha256,
            "CKM_SHA256_RSA_PKCS",
        ),
    ] {
        let object = format!("ca-{alg}");
        let uri = fx.uri(&object);
        // Through the KeyGenerator trait, as the CLI will call it.
        let key_uri = KeyUri::Pkcs11(Box::new(uri.clone()));
        let signer = KeyGenerator::generate(&backend, &key_uri, alg)
            .await
            .unwrap();
        assert_eq!(signer.algorithm(), sig_alg);
        sign_and_verify(&*signer, b"tbsCertificate bytes").await;
        let d = signer.describe();
        assert!(
            d.starts_with(&format!(
                "pkcs11 token={} object={object} (SoftHSM",
                fx.label
            )),
            "{d}"
        );
        assert!(!d.contains(PIN));

        // Opened again by URI: the same key, the expected mechanism and attributes.
        let opened = backend.open_signer(&uri).await.unwrap();
        assert_eq!(opened.public_key(), signer.public_key());
        assert_eq!(opened.key_algorithm(), Some(alg));
        assert_eq!(opened.mechanism(), mech);
        let a = opened.key_attributes();
        assert!(a.sign && a.sensitive && a.always_sensitive && a.never_extractable && a.local);
        assert!(!a.extractable);
        assert!(a.generated_in_token());
        assert_eq!(
            a.describe(),
            [
                "sign=true",
                "extractable=false",
                "sensitive=true",
                "always-sensitive=true",
                "never-extractable=true",
                "local=true"
            ]
        );
        assert_eq!(opened.id().len(), 16, "a random 16-byte CKA_ID");
        sign_and_verify(&*opened, b"another message").await;
    }

    // The token's own view, through an independent tool.
    let listing = fx.pkcs11_tool_objects();
    for alg in ["ECDSA-P256", "ECDSA-P384", "RSA-2048"] {
        let label_line = format!("label:      ca-{alg}");
        let private = listing
            .split("Private Key Object")
            .skip(1)
            .find(|block| block.contains(&label_line))
            .unwrap_or_else(|| panic!("no private key ca-{alg} in:\n{listing}"));
        let access = private
            .lines()
            .find(|l| l.trim_start().starts_with("Access:"))
            .unwrap();
        assert!(
            access.contains("sensitive, always sensitive, never extractable, local"),
            "{alg}: {access}"
        );
        assert!(!access.contains(" extractable,") || access.contains("never extractable"));
        let usage = private
            .lines()
            .find(|l| l.trim_start().starts_with("Usage:"))
            .unwrap();
        assert!(usage.contains("sign"), "{alg}: {usage}");
        assert!(
            !usage.contains("decrypt") && !usage.contains("unwrap") && !usage.contains("derive"),
            "{alg}: {usage}"
        );
    }

    // keys list
    let keys = backend.list_keys(&fx.uri_on(&fx.label, "x")).await.unwrap();
    assert!(keys.is_empty(), "object=x matches nothing");
    let mut all = fx.uri("x");
    all.object = None;
    let keys = backend.list_keys(&all).await.unwrap();
    assert_eq!(keys.len(), 3);
    for k in &keys {
        assert!(k.attributes.generated_in_token());
        assert!(k.kind.is_some());
        assert!(k.uri_path(&fx.label).contains("type=private"));
    }
});

softhsm_test!(
    generate_refuses_existing_label_or_id_and_adopt_is_explicit,
    |fx| {
        let backend = fx.backend();
        let uri = fx.uri("kubernetes-ca");
        let first = backend
            .generate_key(&uri, KeyAlgorithm::EcdsaP256)
            .await
            .unwrap();
        let again = backend
            .generate_key(&uri, KeyAlgorithm::EcdsaP256)
            .await
            .unwrap_err();
        assert_eq!(again.kind(), ErrorKind::KeyPolicy);
        assert!(again.to_string().contains("kubernetes-ca"), "{again}");
        assert!(again.to_string().contains("adopt"), "{again}");

        // Same id under another label is refused too.
        let mut same_id = fx.uri("other");
        same_id.id = Some(first.id().to_vec());
        let e = backend
            .generate_key(&same_id, KeyAlgorithm::EcdsaP256)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::KeyPolicy);

        // Only id= given: the label is its hex.
        let mut only_id = fx.uri("unused");
        only_id.object = None;
        only_id.id = Some(vec![0xca, 0xfe]);
        let s = backend
            .generate_key(&only_id, KeyAlgorithm::EcdsaP256)
            .await
            .unwrap();
        assert_eq!(s.label(), Some("cafe"));

        let adopted = backend
            .adopt_key(&uri, Some(KeyAlgorithm::EcdsaP256))
            .await
            .unwrap();
        assert_eq!(adopted.public_key(), first.public_key());
        let e = backend
            .adopt_key(&uri, Some(KeyAlgorithm::Rsa2048))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::KeyMismatch);

        let e = backend
            .open_signer(&fx.uri("no-such-key"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("no-such-key"), "{e}");
    }
);

fn material(algorithm: KeyAlgorithm, pkcs8: &[u8]) -> PrivateKeyMaterial {
    PrivateKeyMaterial {
        algorithm,
        pkcs8_der: SecretSlice::from(pkcs8.to_vec()),
    }
}

softhsm_test!(import_pkcs8_keys, |fx| {
    let backend = fx.backend();
    let rng = aws_lc_rs::rand::SystemRandom::new();

    // EC P-256
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let original = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref()).unwrap();
    let original_spki =
        SubjectPublicKeyInfoOwned::from_der(original.public_key().as_der().unwrap().as_ref())
            .unwrap();
    let key_uri = KeyUri::Pkcs11(Box::new(fx.uri("imported-ec")));
    let signer = KeyImporter::import(
        &backend,
        &key_uri,
        material(KeyAlgorithm::EcdsaP256, doc.as_ref()),
    )
    .await
    .unwrap();
    assert_eq!(signer.public_key(), &original_spki);
    let msg = b"signed by the imported key";
    let sig = signer.sign(msg).await.unwrap();
    verify_signature(
        &original_spki,
        &SignatureAlgorithm::EcdsaP256Sha256.algorithm_identifier(),
        msg,
        &sig,
    )
    .unwrap();

    // RSA-2048
    let rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let rsa_pkcs8 = rsa.as_der().unwrap();
    let rsa_spki =
        SubjectPublicKeyInfoOwned::from_der(rsa.public_key().as_der().unwrap().as_ref()).unwrap();
    let s = backend
        .import_key(
            &fx.uri("imported-rsa"),
            material(KeyAlgorithm::Rsa2048, rsa_pkcs8.as_ref()),
        )
        .await
        .unwrap();
    assert_eq!(s.public_key(), &rsa_spki);
    let sig = s.sign(msg).await.unwrap();
    verify_signature(
        &rsa_spki,
        &SignatureAlgorithm::RsaPkcs1Sha256.algorithm_identifier(),
        msg,
        &sig,
    )
    .unwrap();

    // Imported keys are sensitive and not extractable, but show they were not born in the token.
    for name in ["imported-ec", "imported-rsa"] {
        let opened = backend.open_signer(&fx.uri(name)).await.unwrap();
        let a = opened.key_attributes();
        assert!(a.sensitive && !a.extractable && a.sign, "{name}: {a:?}");
        assert!(!a.always_sensitive && !a.local, "{name}: {a:?}");
        assert!(!a.generated_in_token());
    }
    let listing = fx.pkcs11_tool_objects();
    assert!(!listing.contains("always sensitive"), "{listing}");

    // Never replaces.
    let e = backend
        .import_key(
            &fx.uri("imported-ec"),
            material(KeyAlgorithm::EcdsaP256, doc.as_ref()),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyPolicy);

    // Declared algorithm must match the material.
    let e = backend
        .import_key(
            &fx.uri("mislabelled"),
            material(KeyAlgorithm::EcdsaP384, doc.as_ref()),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyMismatch);

    // With imported keys refused, neither import nor open works.
    let mut strict = Pkcs11Options::default();
    strict.imported_keys = KeyPolicy::Refuse;
    let strict = Pkcs11Backend::new(strict);
    let e = strict
        .open_signer(&fx.uri("imported-ec"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyPolicy);
    assert!(e.to_string().contains("importedKeys"), "{e}");
    let e = strict
        .import_key(
            &fx.uri("refused"),
            material(KeyAlgorithm::EcdsaP256, doc.as_ref()),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyPolicy);
});

softhsm_test!(extractable_keys_are_refused_by_default, |fx| {
    // Made by pkcs11-tool before this process loads the module.
    let out = Command::new("pkcs11-tool")
        .args([
            "--module",
            MODULE,
            "--token-label",
            &fx.label,
            "--login",
            "--pin",
            PIN,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "extractable",
            "--id",
            "0e",
            "--extractable",
            "--usage-sign",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = fx
        .backend()
        .open_signer(&fx.uri("extractable"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyPolicy);
    let msg = e.to_string();
    assert!(
        msg.contains("CKA_EXTRACTABLE") && msg.contains("extractableKeys"),
        "{msg}"
    );

    let mut lenient = Pkcs11Options::default();
    lenient.extractable_keys = KeyPolicy::Warn;
    let s = Pkcs11Backend::new(lenient)
        .open_signer(&fx.uri("extractable"))
        .await
        .unwrap();
    assert!(s.key_attributes().extractable);
    sign_and_verify(&*s, b"m").await;
});

softhsm_test!(wrong_pin_is_tried_once_per_process, |fx| {
    let wrong = fx.write_file("wrong-pin", "00000000\n");
    let mut uri = fx.uri("k");
    uri.pin = Some(signer_api::keyuri::PinSource::File(wrong));
    let backend = fx.backend();

    let e = backend.open_signer(&uri).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    assert!(e.to_string().contains("CKR_PIN_INCORRECT"), "{e}");
    assert!(!e.to_string().contains("00000000"));
    let stats = backend.token_stats(&uri).unwrap();
    assert_eq!(stats.login_calls, 1);

    let e = backend.open_signer(&uri).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    assert!(e.to_string().contains("not trying it again"), "{e}");
    assert_eq!(
        backend.token_stats(&uri).unwrap().login_calls,
        1,
        "the failing PIN must not reach C_Login again"
    );

    // The right PIN still works...
    let good = fx.uri("k");
    backend
        .generate_key(&good, KeyAlgorithm::EcdsaP256)
        .await
        .unwrap();
    assert_eq!(backend.token_stats(&good).unwrap().login_calls, 2);
    // ...and once logged in, another PIN is refused rather than accepted unchecked.
    let other = fx.write_file("other-pin", "11111111");
    let mut uri = fx.uri("k");
    uri.pin = Some(signer_api::keyuri::PinSource::File(other));
    let e = backend.open_signer(&uri).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    assert!(e.to_string().contains("different PIN"), "{e}");
    assert_eq!(backend.token_stats(&good).unwrap().login_calls, 2);
});

softhsm_test!(configuration_errors_are_clear, |fx| {
    let backend = fx.backend();
    // Missing pin-source: an error before any device is touched.
    let mut uri = fx.uri("k");
    let missing = fx.dir.join("no-such-pin-file");
    uri.pin = Some(signer_api::keyuri::PinSource::File(missing.clone()));
    let e = backend.open_signer(&uri).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    assert!(
        e.to_string().contains(&missing.display().to_string())
            && e.to_string().contains("cannot read the PIN"),
        "{e}"
    );
    assert!(backend.token_stats(&uri).is_none(), "no token was opened");

    let empty = fx.write_file("empty-pin", "\n");
    uri.pin = Some(signer_api::keyuri::PinSource::File(empty));
    let e = backend.open_signer(&uri).await.unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");

    // Unknown token label.
    let e = backend
        .open_signer(&fx.uri_on("no-such-token", "k"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("\"no-such-token\""), "{e}");
    assert!(
        e.to_string().contains(&fx.label),
        "lists present tokens: {e}"
    );

    // module-name resolves in the standard directories.
    let by_name = parse(&format!(
        "pkcs11:token={};object=k?module-name=softhsm2&pin-source=file:{}",
        fx.label,
        fx.pin_file.display()
    ));
    backend
        .generate_key(&by_name, KeyAlgorithm::EcdsaP256)
        .await
        .unwrap();
    let e = backend
        .open_signer(&parse("pkcs11:object=k?module-name=nonexistent-module"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidKeyReference);

    // The token by serial, by manufacturer and model, or as the only token: no label needed.
    let by_label = backend.open_signer(&fx.uri("k")).await.unwrap();
    let pin = fx.pin_file.display();
    for path in [
        format!("serial={};object=k", by_label.token_serial()),
        "manufacturer=SoftHSM%20project;model=SoftHSM%20v2;object=k".to_owned(),
        "object=k".to_owned(),
    ] {
        let uri = parse(&format!(
            "pkcs11:{path}?module-path={MODULE}&pin-source=file:{pin}"
        ));
        let s = backend.open_signer(&uri).await.unwrap();
        assert_eq!(s.public_key(), by_label.public_key(), "{path}");
    }
    let e = backend
        .open_signer(&parse(&format!(
            "pkcs11:serial=0000;object=k?module-path={MODULE}&pin-source=file:{pin}"
        )))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("serial=\"0000\""), "{e}");
});

softhsm_test!(concurrent_signs_through_the_pool, |fx| {
    let backend = fx.backend(); // pool of 4
    let signer: Arc<Pkcs11Signer> = backend
        .generate_key(&fx.uri("busy"), KeyAlgorithm::EcdsaP256)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let s = Arc::clone(&signer);
        tasks.push(tokio::spawn(async move {
            for i in 0..25u32 {
                let msg = format!("task {t} message {i}");
                let sig = s.sign(msg.as_bytes()).await.unwrap();
                verify_signature(
                    s.public_key(),
                    &s.algorithm().algorithm_identifier(),
                    msg.as_bytes(),
                    &sig,
                )
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = signer.token_stats();
    assert_eq!(stats.sessions_discarded, 0);
    assert_eq!(stats.retries, 0);
    // 4 pooled sessions at most, plus the read-write session key generation used.
    assert!(stats.sessions_opened <= 5, "{stats:?}");
    assert!(stats.operations >= 200, "{stats:?}");
    assert_eq!(stats.login_calls, 1, "{stats:?}");
});

softhsm_test!(rsa_pkcs1_fallback_matches_the_combined_mechanism, |fx| {
    let combined = fx
        .backend()
        .generate_key(&fx.uri("rsa"), KeyAlgorithm::Rsa2048)
        .await
        .unwrap();
    assert_eq!(combined.mechanism(), "CKM_SHA256_RSA_PKCS");
    let mut o = Pkcs11Options::default();
    o.rsa_mechanism = RsaMechanism::RawPkcs1;
    let raw = Pkcs11Backend::new(o)
        .open_signer(&fx.uri("rsa"))
        .await
        .unwrap();
    assert_eq!(raw.mechanism(), "CKM_RSA_PKCS");
    let msg = b"PKCS#1 v1.5 is deterministic";
    sign_and_verify(&*raw, msg).await;
    // Same key, same message: the DigestInfo built here must equal the token's own.
    assert_eq!(
        raw.sign(msg).await.unwrap(),
        combined.sign(msg).await.unwrap()
    );
});

/// A second cryptoki handle on the module this process already initialised (the same library
/// instance, so `C_Initialize` reports it is already initialised), for acting behind the
/// backend's back.
fn raw_context() -> cryptoki::context::Pkcs11 {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    let ctx = Pkcs11::new(MODULE).unwrap();
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    ctx
}

fn raw_slot(ctx: &cryptoki::context::Pkcs11, label: &str) -> cryptoki::slot::Slot {
    ctx.get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == label)
        .unwrap()
}

softhsm_test!(recovers_when_another_component_logs_the_token_out, |fx| {
    let backend = fx.backend();
    let signer = backend
        .generate_key(&fx.uri("k"), KeyAlgorithm::EcdsaP256)
        .await
        .unwrap();
    let mut warm = Vec::new();
    for _ in 0..8 {
        let s = Arc::clone(&signer);
        warm.push(tokio::spawn(async move { s.sign(b"warm").await.unwrap() }));
    }
    for w in warm {
        w.await.unwrap();
    }
    let before = signer.token_stats();
    assert_eq!(before.login_calls, 1);

    // C_Logout on any session logs out every session of the process: the pooled sessions stay
    // open but lose their login.
    tokio::task::spawn_blocking({
        let label = fx.label.clone();
        move || {
            let ctx = raw_context();
            let session = ctx.open_ro_session(raw_slot(&ctx, &label)).unwrap();
            session.logout().unwrap();
        }
    })
    .await
    .unwrap();

    sign_and_verify(&*signer, b"after logout").await;
    let after = signer.token_stats();
    assert_eq!(after.login_calls, 2, "logged in again once: {after:?}");
    assert_eq!(after.retries, before.retries + 1, "{after:?}");
    assert!(
        after.sessions_discarded > before.sessions_discarded,
        "{after:?}"
    );
    println!("after an external C_Logout: {after:?}");
    for _ in 0..20 {
        sign_and_verify(&*signer, b"and then").await;
    }
    assert_eq!(signer.token_stats().login_calls, 2);
});

/// Informal sign rates: `cargo test -p backend-pkcs11 --release --test softhsm -- --ignored
/// --nocapture measure_sign_rates`.
mod measure {
    use super::*;
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, ObjectClass};
    use cryptoki::session::UserType;

    async fn rate(signer: &Arc<Pkcs11Signer>, tasks: usize, total: usize) -> f64 {
        let start = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let s = Arc::clone(signer);
            handles.push(tokio::spawn(async move {
                for _ in 0..total / tasks {
                    s.sign(b"tbs").await.unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        total as f64 / start.elapsed().as_secs_f64()
    }

    /// Direct cryptoki on `threads` sessions, each on its own thread: the ceiling.
    fn raw_rate(label: &str, object: &str, threads: usize, total: usize, ecdsa: bool) -> f64 {
        // The backend already initialised the module in this process; this is a second handle
        // on the same library instance, so C_Initialize reports it is already initialised.
        let ctx = Pkcs11::new(MODULE).unwrap();
        let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
        let slot = ctx
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == label)
            .unwrap();
        let start = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    let session = ctx.open_ro_session(slot).unwrap();
                    let _ = session.login(UserType::User, Some(&PIN.into()));
                    let key = session
                        .find_objects(&[
                            Attribute::Class(ObjectClass::PRIVATE_KEY),
                            Attribute::Label(object.as_bytes().to_vec()),
                        ])
                        .unwrap()[0];
                    let (mech, data) = if ecdsa {
                        (Mechanism::Ecdsa, vec![7u8; 32])
                    } else {
                        (Mechanism::Sha256RsaPkcs, b"tbs".to_vec())
                    };
                    for _ in 0..total / threads {
                        session.sign(&mech, key, &data).unwrap();
                    }
                    // Dropping the session closes it; the backend's sessions keep the login.
                });
            }
        });
        total as f64 / start.elapsed().as_secs_f64()
    }

    softhsm_test!(
        #[ignore = "informal benchmark; run with --ignored --nocapture"]
        measure_sign_rates,
        |fx| {
            fx.init_token("pool1");
            let n = std::thread::available_parallelism().map_or(2, |n| n.get());
            let mut one = Pkcs11Options::default();
            one.pool_size = 1;
            let mut many = Pkcs11Options::default();
            many.pool_size = n;
            for (alg, total, ecdsa) in [
                (KeyAlgorithm::EcdsaP256, 4000, true),
                (KeyAlgorithm::Rsa2048, 1000, false),
            ] {
                let object = format!("bench-{alg}");
                let s1 = Pkcs11Backend::new(one.clone())
                    .generate_key(&fx.uri_on("pool1", &object), alg)
                    .await
                    .unwrap();
                let sn = Pkcs11Backend::new(many.clone())
                    .generate_key(&fx.uri(&object), alg)
                    .await
                    .unwrap();
                let pool1 = rate(&s1, 1, total).await;
                let pool1_c = rate(&s1, 2 * n, total).await;
                let pooln = rate(&sn, 2 * n, total).await;
                let label = fx.label.clone();
                let raw1 = tokio::task::spawn_blocking({
                    let (l, o) = (label.clone(), object.clone());
                    move || raw_rate(&l, &o, 1, total, ecdsa)
                })
                .await
                .unwrap();
                let rawn =
                    tokio::task::spawn_blocking(move || raw_rate(&label, &object, n, total, ecdsa))
                        .await
                        .unwrap();
                println!(
                    "{alg}: raw 1 session {raw1:.0}/s, raw {n} sessions {rawn:.0}/s | pool 1 (1 task) {pool1:.0}/s, \
                     pool 1 ({} tasks) {pool1_c:.0}/s, pool {n} ({} tasks) {pooln:.0}/s | pool {n} / raw {n}: {:.2}, pool 1 / raw 1: {:.2}",
                    2 * n,
                    2 * n,
                    pooln / rawn,
                    pool1 / raw1
                );
            }
        }
    );
}
