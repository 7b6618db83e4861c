//! KMS benchmark: how close does issuing certificates through AWS KMS (here the local-kms
//! emulator on loopback) get to the emulator's raw Sign rate, and does the client-side rate
//! limit hold?
//!
//! Absolute rates on shared machines are noise, so what matters is a ratio of rates measured in
//! the same run, in interleaved rounds (each round measures both sides once, in alternating
//! order; the ratio reported is the median of the per-round ratios, with its range).
//!
//! For each CA key type (ECDSA P-256, RSA-2048), with `N` concurrent tasks:
//! - raw: `KmsSigner::sign` of a real TBSCertificate (what issuance cannot avoid: one KMS Sign
//!   round trip);
//! - issue: `CertificateAuthority::issue` with the same signer and a
//!   `signer_api::audit::MemoryAuditSink` (builds the TBSCertificate, signs through KMS, verifies
//!   the signature locally, records it), and issue/raw.
//!
//! Then the client-side rate limit (`RateLimit::per_second`, as `backends.awskms.rateLimit`
//! sets it): issuance at 50/s and 200/s with `N` tasks, achieved rate / limit (at most 1 plus the
//! initial burst of a tenth of a second's worth, spread over the run).
//!
//! Run: `cargo bench -p integration --bench kms` (about a minute) or with `-- --quick` (a few
//! seconds). `-- --concurrency N` sets the task count (default 8). The emulators come from
//! KUBESIGN_LOCAL_KMS_ENDPOINT, else `scripts/kms-emulators.sh start`; if they cannot start, the
//! bench says so and exits 0.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kms::config::{Credentials, SharedCredentialsProvider};
use backend_kms::{KmsBackend, KmsOptions, KmsSigner, RateLimit};
use der::{Decode as _, Encode as _};
use signer_api::audit::{MemoryAuditSink, RequestContext};
use signer_api::ca::CertificateSubject;
use signer_api::keyuri::{AwsKmsUri, KeyUri};
use signer_api::profile::{self, DEFAULT_CA_VALIDITY, DEFAULT_LEAF_VALIDITY};
use signer_api::{CaRole, CertificateAuthority, IssuancePolicy, KeyAlgorithm, Signer, VerifiedCsr};

struct Settings {
    rounds: usize,
    slice: Duration,
    limited_run: Duration,
    concurrency: usize,
}

fn settings() -> Settings {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let concurrency = args
        .iter()
        .position(|a| a == "--concurrency")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(8);
    if quick {
        Settings {
            rounds: 3,
            slice: Duration::from_millis(400),
            limited_run: Duration::from_millis(1500),
            concurrency,
        }
    } else {
        Settings {
            rounds: 9,
            slice: Duration::from_secs(1),
            limited_run: Duration::from_secs(5),
            concurrency,
        }
    }
}

fn sdk_config() -> SdkConfig {
    SdkConfig::builder()
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test",
            "test",
            None,
            None,
            "kubesign-kms-bench",
        )))
        .behavior_version(BehaviorVersion::latest())
        .build()
}

fn alias_uri(endpoint: &str, what: &str) -> AwsKmsUri {
    let mut b = [0u8; 6];
    aws_lc_rs::rand::fill(&mut b).expect("system randomness");
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let text =
        format!("awskms:///alias/kubesign-bench/{what}-{hex}?region=us-east-1&endpoint={endpoint}");
    match KeyUri::parse(&text).expect("a valid awskms URI") {
        KeyUri::AwsKms(u) => u,
        other => panic!("not an awskms URI: {other}"),
    }
}

/// Operations per second of `tasks` concurrent loops of `op`, each running until `slice` has
/// passed (one warm-up call each first, not counted).
async fn concurrent_rate<F, Fut>(tasks: usize, slice: Duration, op: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    for _ in 0..tasks {
        op().await;
    }
    let start = Instant::now();
    let deadline = start + slice;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let op = op.clone();
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                op().await;
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await.expect("a benchmark task panicked");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// One CA in KMS and what issuing for an apiserver CSR needs.
struct Fixture {
    name: &'static str,
    signer: Arc<KmsSigner>,
    ca: Arc<CertificateAuthority>,
    subject: Arc<CertificateSubject>,
    policy: Arc<IssuancePolicy>,
    context: RequestContext,
    tbs: Arc<Vec<u8>>,
}

async fn fixture(
    backend: &KmsBackend,
    endpoint: &str,
    algorithm: KeyAlgorithm,
    name: &'static str,
) -> Result<Fixture, String> {
    let uri = alias_uri(endpoint, name);
    backend
        .generate_key(&uri, algorithm, "bench")
        .await
        .map_err(|e| format!("creating the {name} key: {e}"))?;
    let signer = backend
        .open(&uri)
        .await
        .map_err(|e| format!("opening the {name} key: {e}"))?;
    let now = SystemTime::now();
    let ca_der = CertificateAuthority::self_signed(
        CaRole::Kubernetes,
        signer.as_ref(),
        DEFAULT_CA_VALIDITY,
        now,
    )
    .await
    .map_err(|e| format!("{name}: CA certificate: {e}"))?;
    let ca =
        CertificateAuthority::new(CaRole::Kubernetes, &ca_der, signer.clone(), uri.to_string())
            .map_err(|e| format!("{name}: CA: {e}"))?;
    let csr = VerifiedCsr::parse(
        integration::bench::apiserver_csr_pem(KeyAlgorithm::EcdsaP256).as_bytes(),
    )
    .map_err(|e| format!("CSR: {e}"))?;
    let apiserver = profile::by_name("apiserver").ok_or("no apiserver profile")?;
    apiserver
        .check_request(&csr)
        .map_err(|e| format!("the CSR does not fit the apiserver profile: {e}"))?;
    let policy = apiserver.policy(DEFAULT_LEAF_VALIDITY);
    let subject = CertificateSubject::from(&csr);
    let context = RequestContext {
        profile: "apiserver".into(),
        source: "bench".into(),
        source_sha256: Some(signer_api::ca::sha256_hex(csr.der())),
        requester: None,
    };
    // The raw message: a real TBSCertificate as this CA issues it.
    let sample = ca
        .issue(
            &subject,
            &policy,
            now,
            &MemoryAuditSink::default(),
            context.clone(),
        )
        .await
        .map_err(|e| format!("{name}: issue: {e}"))?;
    let cert = x509_cert::Certificate::from_der(&sample.der).map_err(|e| e.to_string())?;
    let tbs = cert.tbs_certificate().to_der().map_err(|e| e.to_string())?;
    Ok(Fixture {
        name,
        signer,
        ca: Arc::new(ca),
        subject: Arc::new(subject),
        policy: Arc::new(policy),
        context,
        tbs: Arc::new(tbs),
    })
}

async fn raw_rate(f: &Fixture, s: &Settings) -> f64 {
    let (signer, tbs) = (f.signer.clone(), f.tbs.clone());
    concurrent_rate(s.concurrency, s.slice, move || {
        let (signer, tbs) = (signer.clone(), tbs.clone());
        async move {
            signer.sign(&tbs).await.expect("KMS Sign");
        }
    })
    .await
}

async fn issue_rate(
    ca: Arc<CertificateAuthority>,
    f: &Fixture,
    tasks: usize,
    slice: Duration,
) -> f64 {
    let (subject, policy, context) = (f.subject.clone(), f.policy.clone(), f.context.clone());
    concurrent_rate(tasks, slice, move || {
        let (ca, subject, policy, context) =
            (ca.clone(), subject.clone(), policy.clone(), context.clone());
        async move {
            // A sink per certificate: the measurement does not grow a shared vector.
            let sink = MemoryAuditSink::default();
            ca.issue(&subject, &policy, SystemTime::now(), &sink, context)
                .await
                .expect("issue through KMS");
        }
    })
    .await
}

async fn run(endpoint: &str, s: &Settings) -> Result<(), String> {
    // No client-side rate limit for the comparison: only the concurrency bound.
    let options = KmsOptions::default()
        .with_max_concurrency(s.concurrency)
        .with_rate_limit(RateLimit::Unlimited);
    let backend = KmsBackend::with_sdk_config(options, sdk_config());
    let mut fixtures = Vec::new();
    for (alg, name) in [
        (KeyAlgorithm::EcdsaP256, "ECDSA-P256"),
        (KeyAlgorithm::Rsa2048, "RSA-2048"),
    ] {
        fixtures.push(fixture(&backend, endpoint, alg, name).await?);
    }

    println!(
        "Issuance through local-kms ({endpoint}), {} concurrent tasks, {} rounds x {} ms per measurement, interleaved",
        s.concurrency,
        s.rounds,
        s.slice.as_millis()
    );
    println!(
        "  {:<12} {:>8} {:>14} {:>14} {:>22}",
        "CA key", "TBS B", "raw Sign /s", "issue /s", "issue/raw med [range]"
    );
    for f in &fixtures {
        let mut raw = Vec::new();
        let mut issue = Vec::new();
        for round in 0..s.rounds {
            let (r, i) = if round % 2 == 0 {
                let r = raw_rate(f, s).await;
                (r, issue_rate(f.ca.clone(), f, s.concurrency, s.slice).await)
            } else {
                let i = issue_rate(f.ca.clone(), f, s.concurrency, s.slice).await;
                (raw_rate(f, s).await, i)
            };
            raw.push(r);
            issue.push(i);
        }
        let ratios: Vec<f64> = issue.iter().zip(&raw).map(|(i, r)| i / r).collect();
        println!(
            "  {:<12} {:>8} {:>14.1} {:>14.1} {:>22}",
            f.name,
            f.tbs.len(),
            integration::bench::median(&raw),
            integration::bench::median(&issue),
            integration::bench::range(&ratios)
        );
    }
    println!(
        "  (raw: KmsSigner::sign of the same TBSCertificate; issue: CertificateAuthority::issue with verify-after-sign and a MemoryAuditSink)"
    );

    println!();
    println!(
        "Client-side rate limit (backends.awskms.rateLimit; burst = a tenth of a second's worth), {} tasks, {} ms per run",
        s.concurrency,
        s.limited_run.as_millis()
    );
    println!(
        "  {:<12} {:>10} {:>12} {:>16}",
        "CA key", "limit /s", "achieved /s", "achieved/limit"
    );
    let f = &fixtures[0];
    for limit in [50.0, 200.0] {
        let limited = KmsBackend::with_sdk_config(
            KmsOptions::default()
                .with_max_concurrency(s.concurrency)
                .with_rate_limit(RateLimit::per_second(limit)),
            sdk_config(),
        );
        let uri = match KeyUri::parse(f.ca.key_uri()).map_err(|e| e.to_string())? {
            KeyUri::AwsKms(u) => u,
            other => return Err(format!("not an awskms URI: {other}")),
        };
        let signer = limited.open(&uri).await.map_err(|e| e.to_string())?;
        let ca = CertificateAuthority::new(
            CaRole::Kubernetes,
            f.ca.certificate_pem().as_bytes(),
            signer,
            f.ca.key_uri().to_owned(),
        )
        .map_err(|e| e.to_string())?;
        // The warm-up calls draw the initial burst (and some debt) before the timed run.
        let achieved = issue_rate(Arc::new(ca), f, s.concurrency, s.limited_run).await;
        let burst = (limit / 10.0).ceil();
        let ceiling = 1.0 + burst / (limit * s.limited_run.as_secs_f64());
        println!(
            "  {:<12} {:>10.0} {:>12.1} {:>16.2}   (ceiling with the burst: {ceiling:.2}){}",
            f.name,
            limit,
            achieved,
            achieved / limit,
            if achieved / limit > ceiling * 1.05 {
                "  LIMIT EXCEEDED"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn main() {
    let s = settings();
    let endpoint = match integration::kms_emulators_result() {
        Ok(e) => e.local_kms.clone(),
        Err(why) => {
            println!("KMS benchmark: the KMS emulators are not available, nothing measured: {why}");
            return;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = runtime.block_on(run(&endpoint, &s)) {
        println!("KMS benchmark: could not run against local-kms at {endpoint}: {e}");
    }
}
