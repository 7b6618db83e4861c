//! PKCS#11 benchmark: how close does issuing a certificate through `backend-pkcs11` get to the
//! token's own signing rate, with CA keys in SoftHSM 2?
//!
//! For ECDSA P-256 and RSA-2048 CA keys, in one run, interleaved round by round:
//! - raw: `C_Sign` with the same key through cryptoki directly — one session on one thread, and N
//!   sessions on N threads (N = available parallelism). ECDSA signs a SHA-256 digest with
//!   `CKM_ECDSA`, RSA a TBSCertificate with `CKM_SHA256_RSA_PKCS`, as the backend does;
//! - raw + verify: the same, each signature then verified in software (`verify_signature`), which
//!   is what issuance cannot avoid (verify-after-sign);
//! - backend sign: `Pkcs11Signer::sign` alone (pool 1 with one task, pool N with 2N tasks);
//! - issue: `CertificateAuthority::issue` of a pre-verified CSR with a `MemoryAuditSink`, through a
//!   `Pkcs11Signer` with a session pool of 1 (one task) and of N (2N tasks).
//!
//! Printed: rates (medians) and, per round, issue/raw (target >= 0.80, "met"/"below", never a
//! failure) and issue/(raw + verify), which separates the engine's own overhead from the cost of
//! verifying every signature. A pool's size is fixed by the first opener of a token in a process,
//! so pool 1 and pool N use two tokens, each key measured raw on its own token.
//!
//! SoftHSM reads `SOFTHSM2_CONF` at `C_Initialize` and the workspace forbids `unsafe` (no
//! `set_var`): the benchmark prepares a token directory and re-runs itself with the variable set.
//! Run: `cargo bench -p integration --bench pkcs11` (about a minute) or `-- --quick` (seconds).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use backend_pkcs11::encoding::{Curve, ecdsa_raw_to_der};
use backend_pkcs11::{Pkcs11Backend, Pkcs11Options, Pkcs11Signer};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use der::{Decode as _, Encode as _};
use integration::softhsm::{CHILD_ENV, SOFTHSM_MODULE, SoftHsm, USER_PIN, softhsm};
use signer_api::audit::{MemoryAuditSink, RequestContext};
use signer_api::ca::CertificateSubject;
use signer_api::profile::{self, DEFAULT_CA_VALIDITY, DEFAULT_LEAF_VALIDITY};
use signer_api::{CaRole, CertificateAuthority, IssuancePolicy, KeyAlgorithm, Signer, VerifiedCsr};

const TARGET_RATIO: f64 = 0.80;
const TOKEN_ONE: &str = "bench-pool-1";
const TOKEN_MANY: &str = "bench-pool-n";

struct Settings {
    rounds: usize,
    slice: Duration,
    threads: usize,
}

fn settings() -> Settings {
    let quick = std::env::args().skip(1).any(|a| a == "--quick");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    if quick {
        Settings {
            rounds: 3,
            slice: Duration::from_millis(150),
            threads,
        }
    } else {
        Settings {
            rounds: 10,
            slice: Duration::from_millis(500),
            threads,
        }
    }
}

fn main() {
    match std::env::var_os(CHILD_ENV) {
        Some(dir) => child(&PathBuf::from(dir)),
        None => parent(),
    }
}

/// Prepares SoftHSM (two tokens) and re-runs this benchmark with `SOFTHSM2_CONF` set.
fn parent() {
    if softhsm().is_none() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("kubesign-pkcs11-bench-")
        .tempdir()
        .expect("a temporary directory");
    let hsm = SoftHsm::new(tmp.path());
    hsm.init_token(TOKEN_ONE);
    hsm.init_token(TOKEN_MANY);
    let exe = std::env::current_exe().expect("the benchmark's path");
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .envs(hsm.env())
        .env(CHILD_ENV, tmp.path())
        .status()
        .expect("re-running the benchmark");
    assert!(status.success(), "the benchmark failed: {status}");
}

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

/// The same key, seen through a second cryptoki handle on the module the backend initialised
/// (one library instance: `C_Initialize` answers "already initialised"), for raw measurements.
struct Raw {
    ctx: Pkcs11,
    slot: Slot,
    label: String,
    /// `CKM_ECDSA` (else `CKM_SHA256_RSA_PKCS`); a `Mechanism` itself is not `Sync`.
    ecdsa: bool,
    /// What goes into `C_Sign`: the SHA-256 digest (ECDSA) or the TBSCertificate (RSA).
    data: Vec<u8>,
    tbs: Vec<u8>,
    curve: Option<Curve>,
    signer: Arc<Pkcs11Signer>,
}

impl Raw {
    fn new(token: &str, object: &str, tbs: &[u8], signer: Arc<Pkcs11Signer>) -> Raw {
        let ctx = Pkcs11::new(SOFTHSM_MODULE).expect("loading SoftHSM");
        let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
        let slot = ctx
            .get_slots_with_token()
            .expect("slots")
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .is_ok_and(|i| i.label().trim_end() == token)
            })
            .expect("the token");
        let (ecdsa, data, curve) = match signer.mechanism() {
            "CKM_ECDSA" => (
                true,
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, tbs)
                    .as_ref()
                    .to_vec(),
                Some(Curve::P256),
            ),
            "CKM_SHA256_RSA_PKCS" => (false, tbs.to_vec(), None),
            other => panic!("unexpected mechanism {other}"),
        };
        Raw {
            ctx,
            slot,
            label: object.to_owned(),
            ecdsa,
            data,
            tbs: tbs.to_vec(),
            curve,
            signer,
        }
    }

    /// A session (logged in: login state is per process and token) and the key's handle.
    fn session(&self) -> (Session, ObjectHandle) {
        let session = self.ctx.open_ro_session(self.slot).expect("a session");
        let _ = session.login(UserType::User, Some(&USER_PIN.into()));
        let key = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(self.label.as_bytes().to_vec()),
            ])
            .expect("finding the key")[0];
        (session, key)
    }

    /// C_Sign rate on `threads` sessions, one per thread (a `Session` is not `Sync`), for
    /// `slice`; with `verify`, every signature is also verified in software on the same thread.
    fn rate(&self, threads: usize, slice: Duration, verify: bool) -> f64 {
        let alg = self.signer.algorithm().algorithm_identifier();
        let ready = std::sync::Barrier::new(threads);
        let rates: Vec<f64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let (ready, alg) = (&ready, &alg);
                    scope.spawn(move || {
                        let (session, key) = self.session();
                        let mechanism = if self.ecdsa {
                            Mechanism::Ecdsa
                        } else {
                            Mechanism::Sha256RsaPkcs
                        };
                        ready.wait();
                        let start = Instant::now();
                        let mut n = 0u64;
                        while start.elapsed() < slice {
                            let sig = session.sign(&mechanism, key, &self.data).expect("C_Sign");
                            if verify {
                                let sig = match self.curve {
                                    Some(c) => ecdsa_raw_to_der(c, &sig).expect("r||s to DER"),
                                    None => sig,
                                };
                                signer_api::verify::verify_signature(
                                    self.signer.public_key(),
                                    alg,
                                    &self.tbs,
                                    &sig,
                                )
                                .expect("the signature verifies");
                            }
                            n += 1;
                        }
                        let rate = n as f64 / start.elapsed().as_secs_f64();
                        // Closing this session leaves the token logged in: the backend's pooled
                        // sessions stay open.
                        drop(session);
                        rate
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a signing thread"))
                .collect()
        });
        rates.iter().sum()
    }
}

/// A CA in the token with the engine around it.
struct Issuer {
    ca: Arc<CertificateAuthority>,
    subject: Arc<CertificateSubject>,
    policy: Arc<IssuancePolicy>,
    context: RequestContext,
}

impl Issuer {
    /// Issuance rate with `tasks` concurrent tasks for `slice`.
    async fn rate(&self, tasks: usize, slice: Duration) -> f64 {
        let count = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let (ca, subject, policy, context, count) = (
                self.ca.clone(),
                self.subject.clone(),
                self.policy.clone(),
                self.context.clone(),
                count.clone(),
            );
            handles.push(tokio::spawn(async move {
                // A fresh sink per task, so one growing vector is not what is measured.
                let sink = MemoryAuditSink::default();
                let mut n = 0u64;
                while start.elapsed() < slice {
                    ca.issue(&subject, &policy, SystemTime::now(), &sink, context.clone())
                        .await
                        .expect("issue");
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            }));
        }
        for h in handles {
            h.await.expect("an issuing task");
        }
        count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
    }
}

/// `Pkcs11Signer::sign` rate (the backend alone: digest, session pool, blocking-thread hand-off,
/// `C_Sign`, r||s to DER) with `tasks` concurrent tasks for `slice`.
async fn backend_sign_rate(
    signer: &Arc<Pkcs11Signer>,
    tbs: &Arc<Vec<u8>>,
    tasks: usize,
    slice: Duration,
) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (signer, tbs, count) = (signer.clone(), tbs.clone(), count.clone());
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < slice {
                signer.sign(&tbs).await.expect("sign");
                n += 1;
            }
            count.fetch_add(n, Ordering::Relaxed);
        }));
    }
    for h in handles {
        h.await.expect("a signing task");
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// A key of `algorithm` generated in `token` with a pool of `pool` sessions, its CA, and a TBS
/// of the size issuance signs.
async fn issuer(
    dir: &Path,
    token: &str,
    pool: usize,
    algorithm: KeyAlgorithm,
) -> (Issuer, Arc<Pkcs11Signer>, Vec<u8>, String) {
    let object = format!("bench-{algorithm}");
    let uri = format!(
        "pkcs11:token={token};object={object};type=private?module-path={SOFTHSM_MODULE}&pin-source={}",
        dir.join("user.pin").display()
    );
    let signer_api::KeyUri::Pkcs11(parsed) = signer_api::KeyUri::parse(&uri).expect("key URI")
    else {
        panic!("not a pkcs11 URI")
    };
    let mut options = Pkcs11Options::default();
    options.pool_size = pool;
    let signer = Pkcs11Backend::new(options)
        .generate_key(&parsed, algorithm)
        .await
        .expect("a key in the token");
    let ca_der = CertificateAuthority::self_signed(
        CaRole::Kubernetes,
        signer.as_ref(),
        DEFAULT_CA_VALIDITY,
        SystemTime::now(),
    )
    .await
    .expect("CA certificate");
    let dyn_signer: Arc<dyn Signer> = signer.clone();
    let ca = CertificateAuthority::new(CaRole::Kubernetes, &ca_der, dyn_signer, uri).expect("CA");
    let pem = integration::bench::apiserver_csr_pem(algorithm);
    let csr = VerifiedCsr::parse(pem.as_bytes()).expect("CSR");
    let apiserver = profile::by_name("apiserver").expect("profile");
    apiserver.check_request(&csr).expect("an apiserver request");
    let context = RequestContext {
        profile: "apiserver".into(),
        source: "bench".into(),
        source_sha256: None,
        requester: None,
    };
    let issuer = Issuer {
        ca: Arc::new(ca),
        subject: Arc::new(CertificateSubject::from(&csr)),
        policy: Arc::new(apiserver.policy(DEFAULT_LEAF_VALIDITY)),
        context,
    };
    let sample = issuer
        .ca
        .issue(
            &issuer.subject,
            &issuer.policy,
            SystemTime::now(),
            &MemoryAuditSink::default(),
            issuer.context.clone(),
        )
        .await
        .expect("issue");
    let cert = x509_cert::Certificate::from_der(&sample.der).expect("certificate");
    let tbs = cert.tbs_certificate().to_der().expect("TBS");
    (issuer, signer, tbs, object)
}

#[derive(Default)]
struct Series {
    raw1: Vec<f64>,
    rawn: Vec<f64>,
    rawv1: Vec<f64>,
    rawvn: Vec<f64>,
    sign1: Vec<f64>,
    signn: Vec<f64>,
    issue1: Vec<f64>,
    issuen: Vec<f64>,
}

fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

fn child(dir: &Path) {
    let s = settings();
    let n = s.threads;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(n.max(2))
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "PKCS#11 issuance vs raw C_Sign, SoftHSM 2 ({SOFTHSM_MODULE}), N = {n}; {} rounds x {} ms per measurement, interleaved",
        s.rounds,
        s.slice.as_millis()
    );
    for (algorithm, name) in [
        (KeyAlgorithm::EcdsaP256, "ECDSA P-256"),
        (KeyAlgorithm::Rsa2048, "RSA-2048"),
    ] {
        let (one, signer1, tbs, object) = rt.block_on(issuer(dir, TOKEN_ONE, 1, algorithm));
        let (many, signern, _, _) = rt.block_on(issuer(dir, TOKEN_MANY, n, algorithm));
        let raw_one = Raw::new(TOKEN_ONE, &object, &tbs, signer1.clone());
        let raw_many = Raw::new(TOKEN_MANY, &object, &tbs, signern.clone());
        let tbs_arc = Arc::new(tbs.clone());
        let mut m = Series::default();
        for round in 0..s.rounds {
            // Alternate the order so drift favours neither side.
            let issue_first = round % 2 == 1;
            if issue_first {
                m.issue1.push(rt.block_on(one.rate(1, s.slice)));
                m.issuen.push(rt.block_on(many.rate(2 * n, s.slice)));
            }
            m.raw1.push(raw_one.rate(1, s.slice, false));
            m.rawn.push(raw_many.rate(n, s.slice, false));
            m.rawv1.push(raw_one.rate(1, s.slice, true));
            m.rawvn.push(raw_many.rate(n, s.slice, true));
            m.sign1
                .push(rt.block_on(backend_sign_rate(&signer1, &tbs_arc, 1, s.slice)));
            m.signn
                .push(rt.block_on(backend_sign_rate(&signern, &tbs_arc, 2 * n, s.slice)));
            if !issue_first {
                m.issue1.push(rt.block_on(one.rate(1, s.slice)));
                m.issuen.push(rt.block_on(many.rate(2 * n, s.slice)));
            }
        }
        let verdict = |r: &[f64]| {
            if integration::bench::median(r) >= TARGET_RATIO {
                "met"
            } else {
                "below"
            }
        };
        let stats1 = signer1.token_stats();
        let statsn = signern.token_stats();
        println!(
            "\n{name} ({} byte TBSCertificate, {})",
            tbs.len(),
            signer1.mechanism()
        );
        println!(
            "  raw C_Sign /s                1 session: {:>9.0}   {n} sessions/{n} threads: {:>9.0}",
            integration::bench::median(&m.raw1),
            integration::bench::median(&m.rawn)
        );
        println!(
            "  raw C_Sign + verify /s       1 session: {:>9.0}   {n} sessions/{n} threads: {:>9.0}",
            integration::bench::median(&m.rawv1),
            integration::bench::median(&m.rawvn)
        );
        println!(
            "  backend sign /s              pool 1:    {:>9.0}   pool {n} ({} tasks):      {:>9.0}   (Pkcs11Signer::sign)",
            integration::bench::median(&m.sign1),
            2 * n,
            integration::bench::median(&m.signn)
        );
        println!(
            "  issue /s                     pool 1:    {:>9.0}   pool {n} ({} tasks):      {:>9.0}",
            integration::bench::median(&m.issue1),
            2 * n,
            integration::bench::median(&m.issuen)
        );
        let r1 = ratios(&m.issue1, &m.raw1);
        let rn = ratios(&m.issuen, &m.rawn);
        println!(
            "  issue/raw (target {TARGET_RATIO:.2})        pool 1: {} {}   pool {n}: {} {}",
            integration::bench::range(&r1),
            verdict(&r1),
            integration::bench::range(&rn),
            verdict(&rn)
        );
        println!(
            "  backend sign/raw             pool 1: {}        pool {n}: {}",
            integration::bench::range(&ratios(&m.sign1, &m.raw1)),
            integration::bench::range(&ratios(&m.signn, &m.rawn))
        );
        println!(
            "  issue/(raw+verify)           pool 1: {}        pool {n}: {}",
            integration::bench::range(&ratios(&m.issue1, &m.rawv1)),
            integration::bench::range(&ratios(&m.issuen, &m.rawvn))
        );
        println!(
            "  pool counters: pool 1 {} sessions, {} retries; pool {n} {} sessions, {} retries",
            stats1.sessions_opened, stats1.retries, statsn.sessions_opened, statsn.retries
        );
    }
    println!(
        "\nissue/raw compares with C_Sign alone; issue/(raw+verify) with C_Sign plus the software \
         verification every issuance does (verify-after-sign), leaving the engine's own overhead \
         (TBS building, encoding, audit record, session pool, blocking-thread hand-off)."
    );
}
