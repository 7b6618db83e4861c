//! backend-kms against real KMS emulators: local-kms (honours DIGEST; its ImportKeyMaterial takes
//! only symmetric keys) and moto (ignores MessageType=DIGEST). No mocks.
//!
//! Endpoints come from KUBESIGN_LOCAL_KMS_ENDPOINT and KUBESIGN_MOTO_ENDPOINT
//! (`eval "$(scripts/kms-emulators.sh start)"`). When they are unset the tests start both
//! emulators through scripts/kms-emulators.sh (installing them on first use) in a private run
//! directory, and the emulators stop when this test process exits. If that fails: under CI=true
//! the tests panic with instructions; otherwise they print "SKIPPED: ..." and pass.
//!
//! Credentials are dummies set on the SDK configuration, never in the process environment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use aws_sdk_kms::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use backend_kms::{KmsBackend, KmsKeySpec, KmsOptions, MessageType, RateLimit, RetryPolicy};
use der::Decode;
use secrecy::SecretSlice;
use signer_api::keyuri::{AwsKmsUri, KeyUri};
use signer_api::signer::PrivateKeyMaterial;
use signer_api::verify::{VerifyError, verify_signature};
use signer_api::{ErrorKind, KeyAlgorithm, KeyGenerator, KeyImporter, Signer};
use spki::SubjectPublicKeyInfoOwned;

const REGION: &str = "us-east-1";

struct Endpoints {
    local_kms: String,
    moto: String,
}

fn start_emulators() -> Result<Endpoints, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kms-emulators.sh");
    let run_dir = std::env::temp_dir().join(format!("kubesign-kms-tests-{}", std::process::id()));
    let out = Command::new("bash")
        .arg(&script)
        .arg("start")
        .env("KUBESIGN_KMS_RUN_DIR", &run_dir)
        .env("KUBESIGN_KMS_WATCH_PID", std::process::id().to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} start failed ({})",
            script.display(),
            out.status
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(str::to_owned)
            .ok_or_else(|| format!("{} start printed no {name}", script.display()))
    };
    Ok(Endpoints {
        local_kms: get("KUBESIGN_LOCAL_KMS_ENDPOINT")?,
        moto: get("KUBESIGN_MOTO_ENDPOINT")?,
    })
}

fn endpoints() -> &'static Result<Endpoints, String> {
    static E: OnceLock<Result<Endpoints, String>> = OnceLock::new();
    E.get_or_init(|| {
        match (
            std::env::var("KUBESIGN_LOCAL_KMS_ENDPOINT"),
            std::env::var("KUBESIGN_MOTO_ENDPOINT"),
        ) {
            (Ok(local_kms), Ok(moto)) => Ok(Endpoints { local_kms, moto }),
            _ => start_emulators(),
        }
    })
}

/// Prints to the real stderr, past libtest's output capture, so that skips, emulator gaps and
/// measured rates show in every run.
fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The emulator endpoints, or `None` after printing SKIPPED (outside CI).
fn emulators(test: &str) -> Option<&'static Endpoints> {
    match endpoints() {
        Ok(e) => Some(e),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!(
            "{test}: the KMS emulators are required under CI=true but are not available: {why}. \
             Install and start them with `eval \"$(scripts/kms-emulators.sh start)\"` (needs Go \
             and python3-venv; builds local-kms from the Go module proxy and installs moto from \
             PyPI), or set KUBESIGN_LOCAL_KMS_ENDPOINT and KUBESIGN_MOTO_ENDPOINT"
        ),
        Err(why) => {
            report(&format!(
                "SKIPPED: {test}: KMS emulators not available: {why} (run `eval \"$(scripts/kms-emulators.sh start)\"`)"
            ));
            None
        }
    }
}

fn sdk_config() -> SdkConfig {
    SdkConfig::builder()
        .region(Region::new(REGION))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test",
            "test",
            None,
            None,
            "kubesign-tests",
        )))
        .behavior_version(BehaviorVersion::latest())
        .build()
}

fn backend(options: KmsOptions) -> KmsBackend {
    KmsBackend::with_sdk_config(options, sdk_config())
}

/// A raw SDK client, for setting up situations (disable a key) the backend never causes.
fn raw_client(endpoint: &str) -> aws_sdk_kms::Client {
    let conf = aws_sdk_kms::config::Builder::from(&sdk_config())
        .endpoint_url(endpoint)
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

fn unique(prefix: &str) -> String {
    let mut b = [0u8; 6];
    SystemRandom::new().fill(&mut b).unwrap();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}-{hex}")
}

fn uri(endpoint: &str, key: &str) -> AwsKmsUri {
    match KeyUri::parse(&format!(
        "awskms:///{key}?region={REGION}&endpoint={endpoint}"
    ))
    .unwrap()
    {
        KeyUri::AwsKms(u) => u,
        other => panic!("{other:?}"),
    }
}

/// A TBSCertificate-sized message larger than the RAW limit, so DIGEST mode matters.
fn big_message() -> Vec<u8> {
    (0..5000u32).map(|i| (i % 251) as u8).collect()
}

fn verify(signer: &dyn Signer, message: &[u8], signature: &[u8]) -> Result<(), VerifyError> {
    verify_signature(
        signer.public_key(),
        &signer.algorithm().algorithm_identifier(),
        message,
        signature,
    )
}

#[tokio::test]
async fn local_kms_generate_sign_verify_each_algorithm() {
    let Some(e) = emulators("local_kms_generate_sign_verify_each_algorithm") else {
        return;
    };
    let backend = backend(KmsOptions::default());
    for (alg, spec) in [
        (KeyAlgorithm::EcdsaP256, "ECC_NIST_P256"),
        (KeyAlgorithm::EcdsaP384, "ECC_NIST_P384"),
        (KeyAlgorithm::Rsa2048, "RSA_2048"),
    ] {
        let alias = unique("alias/kubesign-test/gen");
        let key = KeyUri::AwsKms(uri(&e.local_kms, &alias));
        let signer = backend.generate(&key, alg).await.unwrap();
        assert_eq!(signer.algorithm(), alg.signature_algorithm());
        let d = signer.describe();
        assert!(
            d.starts_with("awskms arn:aws:kms:us-east-1:") && d.ends_with(&format!("({spec})")),
            "{d}"
        );

        let message = big_message();
        let signature = signer.sign(&message).await.unwrap();
        verify(signer.as_ref(), &message, &signature).unwrap();
        assert!(verify(signer.as_ref(), b"another message", &signature).is_err());

        // Opening the alias again gives the same key; key_info tells what kubesign created.
        let KeyUri::AwsKms(u) = &key else { panic!() };
        let again = backend.open(u).await.unwrap();
        assert_eq!(again.public_key(), signer.public_key());
        assert_eq!(again.key_spec().as_str(), spec);
        let info = backend.key_info(u).await.unwrap();
        assert_eq!(info.key_spec, spec);
        assert_eq!(info.key_state, "Enabled");
        assert_eq!(info.key_usage, "SIGN_VERIFY");
        assert_eq!(info.origin, "AWS_KMS");
        assert_eq!(info.spec().map(KmsKeySpec::key_algorithm), Some(alg));
        assert_eq!(
            info.description,
            format!("kubesign {} CA", alias.trim_start_matches("alias/"))
        );
        assert!(
            info.signing_algorithms
                .iter()
                .any(|a| a == again.key_spec().signing_algorithm().as_str()),
            "{:?}",
            info.signing_algorithms
        );

        // A generator never replaces a key.
        let refused = backend.generate(&key, alg).await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::KeyPolicy, "{refused}");
        assert!(
            refused.to_string().contains("already exists") && refused.to_string().contains("adopt"),
            "{refused}"
        );
    }
}

#[tokio::test]
async fn local_kms_raw_mode_and_its_size_limit() {
    let Some(e) = emulators("local_kms_raw_mode_and_its_size_limit") else {
        return;
    };
    let backend = backend(KmsOptions::default());
    let alias = unique("alias/kubesign-test/raw");
    let u = uri(&e.local_kms, &alias);
    backend
        .generate_key(&u, KeyAlgorithm::EcdsaP384, "raw-test")
        .await
        .unwrap();
    let raw = backend
        .open_with(
            &u,
            &KmsOptions::default().with_message_type(MessageType::Raw),
        )
        .await
        .unwrap();
    assert_eq!(raw.message_type(), MessageType::Raw);
    let message = &big_message()[..4096];
    let signature = raw.sign(message).await.unwrap();
    verify(raw.as_ref(), message, &signature).unwrap();

    let too_big = raw.sign(&big_message()).await.unwrap_err();
    assert_eq!(too_big.kind(), ErrorKind::Unsupported);
    assert!(
        too_big.to_string().contains("4096") && too_big.to_string().contains("DIGEST"),
        "{too_big}"
    );
}

#[tokio::test]
async fn local_kms_disabled_key_fails_fast_with_the_fix() {
    let Some(e) = emulators("local_kms_disabled_key_fails_fast_with_the_fix") else {
        return;
    };
    // A retry budget that would take seconds if a permanent error were retried.
    let options = KmsOptions::default().with_retry(RetryPolicy::new(
        5,
        Duration::from_secs(2),
        Duration::from_secs(2),
    ));
    let backend = backend(options);
    let u = uri(&e.local_kms, &unique("alias/kubesign-test/disabled"));
    let signer = backend
        .generate_key(&u, KeyAlgorithm::EcdsaP256, "disabled-test")
        .await
        .unwrap();
    raw_client(&e.local_kms)
        .disable_key()
        .key_id(signer.key_arn())
        .send()
        .await
        .unwrap();

    let start = Instant::now();
    let err = signer.sign(b"tbs").await.unwrap_err();
    let elapsed = start.elapsed();
    assert_eq!(err.kind(), ErrorKind::KeyPolicy, "{err}");
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains("is disabled")
            && text.contains("aws kms enable-key")
            && text.contains("KMS Sign")
            && text.contains(&u.to_string()),
        "{text}"
    );
    assert!(!text.contains("attempts"), "{text}");
    assert!(
        elapsed < Duration::from_millis(1500),
        "a permanent error was retried: {elapsed:?}"
    );
    assert!(std::error::Error::source(&err).is_some());

    // Adopting a disabled key is refused the same way, before any signing.
    let adopt = backend.adopt(&u, None).await.unwrap_err();
    assert_eq!(adopt.kind(), ErrorKind::KeyPolicy);
    assert!(adopt.to_string().contains("enable-key"), "{adopt}");
}

#[tokio::test]
async fn local_kms_missing_alias_is_not_found() {
    let Some(e) = emulators("local_kms_missing_alias_is_not_found") else {
        return;
    };
    let backend = backend(KmsOptions::default());
    let u = uri(&e.local_kms, &unique("alias/kubesign-test/missing"));
    let err = backend.open(&u).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("GetPublicKey"), "{err}");
    assert!(err.to_string().contains(&u.to_string()), "{err}");
    assert_eq!(
        backend.key_info(&u).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn local_kms_adopt_existing_keys() {
    let Some(e) = emulators("local_kms_adopt_existing_keys") else {
        return;
    };
    let client = raw_client(&e.local_kms);
    let created = client
        .create_key()
        .key_spec(KeySpec::EccNistP256)
        .key_usage(KeyUsageType::SignVerify)
        .send()
        .await
        .unwrap();
    let meta = created.key_metadata().unwrap();
    let backend = backend(KmsOptions::default());

    // By key ID and by key ARN.
    let by_id = uri(&e.local_kms, meta.key_id());
    let signer = backend
        .adopt(&by_id, Some(KeyAlgorithm::EcdsaP256))
        .await
        .unwrap();
    let sig = signer.sign(b"adopted").await.unwrap();
    verify(signer.as_ref(), b"adopted", &sig).unwrap();
    let by_arn = uri(&e.local_kms, meta.arn().unwrap());
    assert_eq!(
        backend.adopt(&by_arn, None).await.unwrap().public_key(),
        signer.public_key()
    );

    // The wrong expected type, an encryption key, and "creating" a key ID are refused.
    let wrong = backend
        .adopt(&by_id, Some(KeyAlgorithm::Rsa2048))
        .await
        .unwrap_err();
    assert_eq!(wrong.kind(), ErrorKind::KeyMismatch, "{wrong}");

    let enc = client
        .create_key()
        .key_spec(KeySpec::Rsa2048)
        .key_usage(KeyUsageType::EncryptDecrypt)
        .send()
        .await
        .unwrap();
    let enc_uri = uri(&e.local_kms, enc.key_metadata().unwrap().key_id());
    let err = backend.open(&enc_uri).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyPolicy, "{err}");
    assert!(err.to_string().contains("SIGN_VERIFY"), "{err}");

    let err = backend
        .generate(&KeyUri::AwsKms(by_id), KeyAlgorithm::EcdsaP256)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidKeyReference, "{err}");
}

#[tokio::test]
async fn local_kms_import_pkcs8() {
    let Some(e) = emulators("local_kms_import_pkcs8") else {
        return;
    };
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
    let original =
        SubjectPublicKeyInfoOwned::from_der(key.public_key().as_der().unwrap().as_ref()).unwrap();
    let material = PrivateKeyMaterial {
        algorithm: KeyAlgorithm::EcdsaP256,
        pkcs8_der: SecretSlice::from(key.to_pkcs8v1().unwrap().as_ref().to_vec()),
    };
    let backend = backend(KmsOptions::default());
    let alias = unique("alias/kubesign-test/import");
    let key_uri = KeyUri::AwsKms(uri(&e.local_kms, &alias));
    match backend.import(&key_uri, material).await {
        Ok(signer) => {
            assert_eq!(signer.public_key(), &original);
            let message = big_message();
            let sig = signer.sign(&message).await.unwrap();
            verify_signature(
                &original,
                &signer.algorithm().algorithm_identifier(),
                &message,
                &sig,
            )
            .unwrap();
        }
        Err(err) => {
            // local-kms (the version on the Go module proxy) imports only symmetric keys: its
            // CreateKey refuses Origin=EXTERNAL with an asymmetric KeySpec. The backend must
            // report that as a clear, permanent error and leave no alias behind.
            let text = err.to_string();
            assert!(
                text.contains("not supported for Origin EXTERNAL") && text.contains("CreateKey"),
                "unexpected import failure: {text}"
            );
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{text}");
            let KeyUri::AwsKms(u) = &key_uri else {
                panic!()
            };
            assert_eq!(
                backend.key_info(u).await.unwrap_err().kind(),
                ErrorKind::NotFound
            );
            report(&format!(
                "EMULATOR GAP: local-kms cannot import asymmetric key material ({text}); the \
                 wrapping (RSA-OAEP-SHA256 + AES-KWP) is covered by backend_kms::wrap unit tests"
            ));
        }
    }
}

#[tokio::test]
async fn moto_raw_mode_signs_correctly() {
    let Some(e) = emulators("moto_raw_mode_signs_correctly") else {
        return;
    };
    let backend = backend(KmsOptions::default().with_message_type(MessageType::Raw));
    for alg in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Rsa2048,
    ] {
        let u = uri(&e.moto, &unique("alias/kubesign-test/moto-raw"));
        let signer = backend.generate_key(&u, alg, "moto").await.unwrap();
        assert!(
            signer.key_arn().starts_with("arn:aws:kms:"),
            "{}",
            signer.key_arn()
        );
        let message = b"a TBSCertificate under 4096 bytes";
        let sig = signer.sign(message).await.unwrap();
        verify(signer.as_ref(), message, &sig).unwrap();
    }
}

/// moto's Sign ignores MessageType=DIGEST and hashes the digest again, so a DIGEST-mode
/// signature is over SHA-256(SHA-256(tbs)) and does not verify. kubesign's issuance engine
/// verifies every signature with signer_api::verify before releasing a certificate, so this
/// emulator bug (or a KMS-compatible service with the same bug) yields
/// IssueError::SignatureInvalid, never a bad certificate.
#[tokio::test]
async fn moto_digest_mode_is_caught_by_verify_after_sign() {
    let Some(e) = emulators("moto_digest_mode_is_caught_by_verify_after_sign") else {
        return;
    };
    let backend = backend(KmsOptions::default());
    let u = uri(&e.moto, &unique("alias/kubesign-test/moto-digest"));
    let signer = backend
        .generate_key(&u, KeyAlgorithm::EcdsaP256, "moto")
        .await
        .unwrap();
    assert_eq!(signer.message_type(), MessageType::Digest);
    let message = big_message();
    let sig = signer.sign(&message).await.unwrap();
    assert_eq!(
        verify(signer.as_ref(), &message, &sig),
        Err(VerifyError::BadSignature)
    );
    // What moto actually signed: the digest, hashed again.
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &message);
    verify(signer.as_ref(), digest.as_ref(), &sig).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_kms_concurrent_signing_respects_the_limits() {
    let Some(e) = emulators("local_kms_concurrent_signing_respects_the_limits") else {
        return;
    };
    const SIGNS: usize = 200;
    const TASKS: usize = 40;
    const RATE: f64 = 100.0;
    let options = KmsOptions::default()
        .with_max_concurrency(8)
        .with_rate_limit(RateLimit::PerSecond {
            rate: RATE,
            burst: 5,
        });
    let backend = backend(options.clone());
    let u = uri(&e.local_kms, &unique("alias/kubesign-test/load"));
    backend
        .generate_key(&u, KeyAlgorithm::EcdsaP256, "load")
        .await
        .unwrap();
    // Two signers for the same key and options share one limiter.
    let a = backend.open(&u).await.unwrap();
    let b = backend.open(&u).await.unwrap();

    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let signer: Arc<dyn Signer> = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..SIGNS / TASKS {
                let message = format!("task {t} certificate {i}").into_bytes();
                let sig = signer.sign(&message).await.unwrap();
                verify(signer.as_ref(), &message, &sig).unwrap();
                ok += 1;
            }
            ok
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let achieved = total as f64 / elapsed;
    report(&format!(
        "local-kms: {total} signatures, all verified, in {elapsed:.2} s: {achieved:.1}/s \
         against a limit of {RATE}/s (burst 5, concurrency 8)"
    ));
    assert_eq!(total, SIGNS);
    // The bucket allows the burst plus RATE per second; allow 5% for timer granularity.
    let ceiling = (RATE * elapsed + 5.0) * 1.05;
    assert!(
        (total as f64) <= ceiling,
        "{total} signatures in {elapsed:.2} s exceed the limit ({ceiling:.0})"
    );

    // For comparison, the same load without a rate limit (only the concurrency bound).
    let unlimited = backend
        .open_with(&u, &options.clone().with_rate_limit(RateLimit::Unlimited))
        .await
        .unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let signer = unlimited.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..SIGNS / TASKS {
                let message = format!("unlimited {t} {i}").into_bytes();
                signer.sign(&message).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    report(&format!(
        "local-kms: {SIGNS} signatures without a rate limit (concurrency 8): {:.1}/s",
        SIGNS as f64 / elapsed
    ));
}
