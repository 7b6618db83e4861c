//! PKCS#11 faults, injected by the shim module (`integration/pkcs11-shim`) in front of a real
//! SoftHSM 2 token: failed `C_Sign` calls (`CKR_SESSION_HANDLE_INVALID`, `CKR_DEVICE_ERROR`), a
//! wrong PIN, a removed and re-inserted token, every signature failing, and 200 concurrent
//! issuances through a pool of four sessions.
//!
//! The `kubesign` tests run the real binary with the shim as the key URIs' `module-path`; the
//! in-process tests (token removal, concurrency) re-run this test binary for one test with
//! `SOFTHSM2_CONF` and the shim's variables in its environment (SoftHSM reads its configuration at
//! `C_Initialize`, and the workspace forbids `unsafe`, so the test process cannot set them for
//! itself). Every certificate is verified with openssl; the shim's log counts the calls.
//!
//! Needs SoftHSM 2, pkcs11-tool, openssl, kubeadm, the kubesign binary and the shim
//! (`cargo build -p cli --bin kubesign && cargo build -p pkcs11-shim`): SKIPPED without them,
//! a failure under `CI=true`.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use backend_pkcs11::{Pkcs11Backend, Pkcs11Options};
use integration::softhsm::{
    CaEntry, SOFTHSM_MODULE, SoftHsm, USER_PIN, child_dir, kubesign_config, reexec, run_env,
    shim_log_lines, shim_module, softhsm, verify_leaves,
};
use integration::{
    Cluster, ECDSA_P256, Output, Snapshot, Tools, cert_info, leftover_temp_files, openssl_bin,
    openssl_verify_files, read_audit, read_string, write,
};
use signer_api::audit::{AuditSink, MemoryAuditSink, RequestContext};
use signer_api::ca::CertificateSubject;
use signer_api::keyuri::{KeyUri, Pkcs11Uri};
use signer_api::profile::{self, DEFAULT_CA_VALIDITY, DEFAULT_LEAF_VALIDITY};
use signer_api::{CaRole, CertificateAuthority, ErrorKind, IssueError, Signer, VerifiedCsr};

const TOKEN: &str = "faults";
const ROLES: [&str; 3] = ["kubernetes", "etcd", "front-proxy"];
const OBJECTS: [&str; 3] = ["kubernetes-ca", "etcd-ca", "front-proxy-ca"];
const ALGS: [&str; 3] = ["ECDSA-P256", "RSA-2048", "ECDSA-P384"];
/// CKR_PIN_INCORRECT.
const CKR_PIN_INCORRECT: u32 = 0xa0;
/// CKR_SESSION_HANDLE_INVALID.
const CKR_SESSION_HANDLE_INVALID: u32 = 0xb3;
/// CKR_DEVICE_ERROR.
const CKR_DEVICE_ERROR: u32 = 0x30;

// ------------------------------------------------------------------------------------------------
// kubesign through the shim
// ------------------------------------------------------------------------------------------------

/// A kubeadm layout, a SoftHSM token with the three CAs, and the shim in front of it.
struct ShimWorld {
    tools: Tools,
    c: Cluster,
    hsm: SoftHsm,
    shim: PathBuf,
    control: PathBuf,
    log: PathBuf,
}

impl ShimWorld {
    /// The tools, a token, a configuration naming the shim as module, and `ca init` (no faults).
    fn new() -> Option<ShimWorld> {
        let tools = Tools::e2e()?;
        softhsm()?;
        let shim = shim_module()?;
        let c = Cluster::new(&tools.kubesign);
        let hsm = SoftHsm::new(&c.root.join("softhsm"));
        let w = ShimWorld {
            control: c.root.join("shim-control"),
            log: c.root.join("shim.log"),
            tools,
            hsm,
            shim,
            c,
        };
        w.hsm.init_token(TOKEN);
        w.control("");
        w.write_config(&w.c.config, &w.hsm.pin_file);
        w.ks(&["ca", "init", "-c", &w.c.config.display().to_string()])
            .ok();
        Some(w)
    }

    fn write_config(&self, path: &Path, pin_file: &Path) {
        let cas: Vec<CaEntry> = ROLES
            .iter()
            .zip(OBJECTS)
            .zip(ALGS)
            .map(|((role, object), algorithm)| CaEntry {
                role,
                key: format!(
                    "pkcs11:token={TOKEN};object={object};type=private?module-path={}&pin-source={}",
                    self.shim.display(),
                    pin_file.display()
                ),
                certificate: self.c.cas.join(match *role {
                    "kubernetes" => "ca.crt",
                    "etcd" => "etcd/ca.crt",
                    _ => "front-proxy-ca.crt",
                }),
                algorithm,
            })
            .collect();
        write(
            path,
            kubesign_config(&cas, &self.c.audit, "  pkcs11:\n    sessions: 2\n"),
        );
    }

    /// Replaces the shim's control file.
    fn control(&self, text: &str) {
        write(&self.control, text);
    }

    /// Empties the shim's log.
    fn clear_log(&self) {
        write(&self.log, "");
    }

    fn env(&self) -> Vec<(OsString, OsString)> {
        self.hsm.env_with(&[
            ("KUBESIGN_SHIM_MODULE", OsStr::new(SOFTHSM_MODULE)),
            ("KUBESIGN_SHIM_CONTROL", self.control.as_os_str()),
            ("KUBESIGN_SHIM_LOG", self.log.as_os_str()),
        ])
    }

    fn ks(&self, args: &[&str]) -> Output {
        run_env(&self.c.kubesign, args, Some(&self.c.root), &self.env())
    }

    /// `kubesign CMD -c CONFIG --cert-dir D/pki --kubeconfig-dir D/kubeconfig` for the layout `d`.
    fn ks_on(&self, d: &Cluster, cmd: &str, config: &Path) -> Output {
        self.ks(&[
            cmd,
            "-c",
            &config.display().to_string(),
            "--cert-dir",
            &d.pki.display().to_string(),
            "--kubeconfig-dir",
            &d.kc.display().to_string(),
        ])
    }

    /// A fresh kubeadm directory (its own temporary layout) with real generate-csr output.
    fn fresh_csrs(&self) -> Cluster {
        let d = Cluster::new(&self.tools.kubesign);
        d.generate_csr(&self.tools.kubeadm, &ECDSA_P256);
        d
    }

    fn log_count(&self, prefix: &str) -> usize {
        shim_log_lines(&self.log)
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }
}

/// The issued records of the audit log.
fn issued(audit: &Path) -> Vec<serde_json::Value> {
    read_audit(audit)
        .into_iter()
        .filter(|r| r["event"] == "issued")
        .collect()
}

/// (a) 30% of `C_Sign` calls fail, with each return value in turn: `kubesign sign` retries on
/// fresh sessions and completes; every certificate verifies; the audit log holds exactly the
/// written certificates, once each.
#[test]
fn sign_completes_through_injected_sign_failures() {
    let Some(w) = ShimWorld::new() else { return };
    for (rv_name, rv) in [
        ("session-handle-invalid", CKR_SESSION_HANDLE_INVALID),
        ("device-error", CKR_DEVICE_ERROR),
    ] {
        w.control(&format!("sign_fail_rate=0.3\nsign_fail_rv={rv_name}\n"));
        let mut injected = 0;
        // Two full directories per return value: a run with no failure injected at all is
        // unlikely (0.7^15) but would prove nothing, so the count is over both.
        for run in 0..2 {
            let d = w.fresh_csrs();
            let before: BTreeSet<String> = issued(&w.c.audit)
                .iter()
                .map(|r| r["certificate_sha256"].as_str().unwrap().to_owned())
                .collect();
            w.clear_log();
            let out = w.ks_on(&d, "sign", &w.c.config);
            assert_eq!(
                out.code,
                Some(0),
                "{rv_name} run {run}: kubesign sign must complete through 30% transient C_Sign failures\n{out:?}\nshim log:\n{}",
                read_string(&w.log)
            );
            out.stderr_has(&["signed 12 certificates"]);
            let n = w.log_count(&format!("C_Sign injected={rv}"));
            if n > 0 {
                out.stderr_has(&["transient PKCS#11 failure; retrying"]);
            }
            injected += n;
            assert_eq!(
                w.log_count("C_Sign injected=") - n,
                0,
                "only {rv_name} was injected"
            );
            assert!(
                w.log_count("C_Sign rv=0") >= 15,
                "12 certificates and 3 key self-tests were signed: {}",
                read_string(&w.log)
            );
            let infos = verify_leaves(&d, &ECDSA_P256);
            // The audit log: exactly the 12 written certificates, once each.
            let written: BTreeSet<String> = infos.values().map(|i| i.sha256.clone()).collect();
            let new: Vec<String> = issued(&w.c.audit)
                .iter()
                .map(|r| r["certificate_sha256"].as_str().unwrap().to_owned())
                .filter(|h| !before.contains(h))
                .collect();
            assert_eq!(
                new.len(),
                12,
                "{rv_name} run {run}: one record per certificate"
            );
            assert_eq!(
                new.into_iter().collect::<BTreeSet<_>>(),
                written,
                "{rv_name} run {run}: the audit log records exactly the written certificates"
            );
            assert!(leftover_temp_files(&d.root).is_empty());
        }
        assert!(
            injected > 0,
            "no {rv_name} failure was injected in two runs: the shim did not act"
        );
    }
    assert!(!read_string(&w.c.audit).contains(USER_PIN));
}

/// (b) A wrong PIN for three CAs on one token: one `C_Login`, `CKR_PIN_INCORRECT`, never
/// retried; an authentication error; nothing written.
#[test]
fn a_wrong_pin_is_tried_exactly_once() {
    let Some(w) = ShimWorld::new() else { return };
    let d = w.fresh_csrs();
    let wrong = w.c.root.join("wrong.pin");
    write(&wrong, "00000000\n");
    integration::softhsm::set_mode(&wrong, 0o600);
    let config = w.c.root.join("wrong-pin.yaml");
    w.write_config(&config, &wrong);
    let before = Snapshot::of(&[&d.pki, &d.kc, &w.c.cas, &w.c.audit]);
    w.clear_log();
    let out = w.ks_on(&d, "sign", &config);
    out.code(1)
        .stderr_has(&["authentication failed", "CKR_PIN_INCORRECT"]);
    assert!(!out.stderr.contains("00000000"), "the PIN is never printed");
    let logins: Vec<String> = shim_log_lines(&w.log)
        .into_iter()
        .filter(|l| l.starts_with("C_Login"))
        .collect();
    assert_eq!(
        logins,
        [format!("C_Login rv={CKR_PIN_INCORRECT}")],
        "exactly one C_Login, answered CKR_PIN_INCORRECT, for three keys on the token"
    );
    assert_eq!(w.log_count("C_Sign"), 0, "nothing was signed");
    before.assert_same(
        &Snapshot::of(&[&d.pki, &d.kc, &w.c.cas, &w.c.audit]),
        "a failed login",
    );

    // The right PIN still works afterwards (a new process).
    w.clear_log();
    w.ks_on(&d, "sign", &w.c.config).ok();
    assert_eq!(
        shim_log_lines(&w.log)
            .iter()
            .filter(|l| l.starts_with("C_Login"))
            .collect::<Vec<_>>(),
        ["C_Login rv=0"]
    );
}

/// (d) Every `C_Sign` fails: `sign` and `renew` fail cleanly, write nothing and release no
/// certificate (none in the audit log).
#[test]
fn nothing_is_released_when_every_signature_fails() {
    let Some(w) = ShimWorld::new() else { return };
    let d = w.fresh_csrs();
    let records = read_audit(&w.c.audit).len();
    for (rv_name, ckr) in [
        ("device-error", "CKR_DEVICE_ERROR"),
        ("session-handle-invalid", "CKR_SESSION_HANDLE_INVALID"),
    ] {
        w.control(&format!("sign_fail_rate=1.0\nsign_fail_rv={rv_name}\n"));
        let before = Snapshot::of(&[&d.pki, &d.kc, &w.c.cas, &w.c.audit]);
        w.clear_log();
        let out = w.ks_on(&d, "sign", &w.c.config);
        out.code(1).stderr_has(&["C_Sign", ckr]);
        before.assert_same(
            &Snapshot::of(&[&d.pki, &d.kc, &w.c.cas, &w.c.audit]),
            "sign with every C_Sign failing",
        );
        assert!(leftover_temp_files(&d.root).is_empty());
        assert!(
            w.log_count("C_Sign injected=") >= 4,
            "retried before giving up"
        );
        assert_eq!(w.log_count("C_Sign rv=0"), 0);
    }
    assert_eq!(
        read_audit(&w.c.audit).len(),
        records,
        "no certificate released"
    );
    assert!(issued(&w.c.audit).is_empty());

    // Renewal of a signed tree: the old certificates stay, nothing is released.
    w.control("");
    w.ks_on(&d, "sign", &w.c.config).ok();
    let signed = issued(&w.c.audit).len();
    assert_eq!(signed, 12);
    w.control("sign_fail_rate=1.0\nsign_fail_rv=device-error\n");
    let before = Snapshot::of(&[&d.pki, &d.kc, &w.c.cas, &w.c.audit]);
    w.ks_on(&d, "renew", &w.c.config)
        .code(1)
        .stderr_has(&["CKR_DEVICE_ERROR"]);
    before.assert_same(
        &Snapshot::of(&[&d.pki, &d.kc, &w.c.cas, &w.c.audit]),
        "renew with every C_Sign failing",
    );
    assert_eq!(issued(&w.c.audit).len(), signed);
    w.control("");
    verify_leaves(&d, &ECDSA_P256);
}

// ------------------------------------------------------------------------------------------------
// In process, re-executed with the environment SoftHSM and the shim need
// ------------------------------------------------------------------------------------------------

const SHIM_PATH_ENV: &str = "KUBESIGN_IT_SHIM_PATH";
const IN_PROCESS_TOKEN: &str = "in-process";

/// Parent side: a SoftHSM with one token, optionally a key made by pkcs11-tool, the shim's
/// control and log files; then re-runs the test `name` with all of it in the environment.
fn run_in_child(name: &str, shim: bool, key: Option<(&str, &str)>) {
    if softhsm().is_none() || openssl_bin().is_none() {
        return;
    }
    let shim_path = if shim {
        match shim_module() {
            Some(p) => Some(p),
            None => return,
        }
    } else {
        None
    };
    let tmp = tempfile::Builder::new()
        .prefix("kubesign-pkcs11-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let hsm = SoftHsm::new(&dir.join("softhsm"));
    hsm.init_token(IN_PROCESS_TOKEN);
    if let Some((label, key_type)) = key {
        hsm.keypairgen(IN_PROCESS_TOKEN, label, "01", key_type, &["--sensitive"]);
    }
    write(&dir.join("control"), "");
    let mut env = hsm.env_with(&[
        ("KUBESIGN_SHIM_MODULE", OsStr::new(SOFTHSM_MODULE)),
        ("KUBESIGN_SHIM_CONTROL", dir.join("control").as_os_str()),
        ("KUBESIGN_SHIM_LOG", dir.join("shim.log").as_os_str()),
    ]);
    if let Some(p) = shim_path {
        env.push((SHIM_PATH_ENV.into(), p.into_os_string()));
    }
    reexec(name, &dir, &env);
}

/// Child side: what the parent prepared.
struct Child {
    dir: PathBuf,
    pin_file: PathBuf,
    control: PathBuf,
    log: PathBuf,
}

impl Child {
    fn new(dir: PathBuf) -> Child {
        Child {
            pin_file: dir.join("softhsm/user.pin"),
            control: dir.join("control"),
            log: dir.join("shim.log"),
            dir,
        }
    }

    fn uri(&self, module: &Path, object: &str) -> Pkcs11Uri {
        let text = format!(
            "pkcs11:token={IN_PROCESS_TOKEN};object={object};type=private?module-path={}&pin-source={}",
            module.display(),
            self.pin_file.display()
        );
        match KeyUri::parse(&text).unwrap() {
            KeyUri::Pkcs11(u) => *u,
            other => panic!("not a pkcs11 URI: {other}"),
        }
    }

    fn control(&self, text: &str) {
        write(&self.control, text);
    }

    fn log_count(&self, needle: &str) -> usize {
        shim_log_lines(&self.log)
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// A CA certificate made with `signer`, and the authority.
async fn authority(signer: Arc<dyn Signer>, uri: &str) -> (CertificateAuthority, Vec<u8>) {
    let der = CertificateAuthority::self_signed(
        CaRole::Kubernetes,
        signer.as_ref(),
        DEFAULT_CA_VALIDITY,
        SystemTime::now(),
    )
    .await
    .unwrap();
    let ca = CertificateAuthority::new(CaRole::Kubernetes, &der, signer, uri.to_owned()).unwrap();
    (ca, der)
}

/// An apiserver request, verified, as the engine takes it.
fn apiserver_request() -> (
    CertificateSubject,
    signer_api::IssuancePolicy,
    RequestContext,
) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "kube-apiserver");
    params.distinguished_name = dn;
    params.subject_alt_names = vec![
        rcgen::SanType::DnsName("kubernetes".try_into().unwrap()),
        rcgen::SanType::IpAddress("10.96.0.1".parse().unwrap()),
    ];
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    let csr = VerifiedCsr::parse(pem.as_bytes()).unwrap();
    let apiserver = profile::by_name("apiserver").unwrap();
    apiserver.check_request(&csr).unwrap();
    let context = RequestContext {
        profile: "apiserver".into(),
        source: "pkcs11_faults".into(),
        source_sha256: None,
        requester: None,
    };
    (
        CertificateSubject::from(&csr),
        apiserver.policy(DEFAULT_LEAF_VALIDITY),
        context,
    )
}

/// openssl verifies every certificate (DER) against the CA certificate (DER).
fn openssl_verifies_all(dir: &Path, ca_der: &[u8], certs: &[Vec<u8>]) {
    let ca = dir.join("ca.pem");
    write(&ca, integration::pem_encode("CERTIFICATE", ca_der));
    let files: Vec<PathBuf> = certs
        .iter()
        .enumerate()
        .map(|(i, der)| {
            let p = dir.join(format!("leaf-{i}.pem"));
            write(&p, integration::pem_encode("CERTIFICATE", der));
            p
        })
        .collect();
    for chunk in files.chunks(100) {
        let (ok, out) = openssl_verify_files(&ca, chunk, Some("sslserver"));
        let bad: Vec<_> = ok.iter().filter(|(_, v)| !**v).map(|(f, _)| f).collect();
        assert!(bad.is_empty(), "{} do not verify\n{out:?}", bad.len());
    }
}

/// One issuance that must fail transiently, release nothing and record nothing.
async fn issue_fails_transiently(
    ca: &CertificateAuthority,
    request: &(
        CertificateSubject,
        signer_api::IssuancePolicy,
        RequestContext,
    ),
    sink: &MemoryAuditSink,
    expect: &[&str],
) {
    let records = sink.records().len();
    let (subject, policy, context) = request;
    let e = ca
        .issue(subject, policy, SystemTime::now(), sink, context.clone())
        .await
        .expect_err("the token is unusable: no certificate may come out");
    assert!(e.is_retryable(), "{e}");
    match &e {
        IssueError::Signing { source, .. } => {
            assert_eq!(source.kind(), ErrorKind::Unavailable, "{source}");
            let msg = source.to_string();
            assert!(
                expect.iter().any(|x| msg.contains(x)),
                "{msg}: expected one of {expect:?}"
            );
        }
        other => panic!("expected a signing failure, got {other}"),
    }
    assert_eq!(sink.records().len(), records, "nothing audited");
}

/// (c) The token is removed while a signer signs in a loop, then re-inserted: every sign fails
/// with a retryable `Unavailable` error while it is gone (never a certificate, never a bad
/// signature), and signing works again in the same process, on the same signer, afterwards; the
/// shim invalidates the sessions opened before the removal. Also (d) in process: with every
/// `C_Sign` failing, issuance releases and records nothing.
#[test]
fn token_removal_and_recovery_in_one_process() {
    let Some(dir) = child_dir() else {
        run_in_child(
            "token_removal_and_recovery_in_one_process",
            true,
            Some(("removable", "rsa:4096")),
        );
        return;
    };
    let child = Child::new(dir);
    let shim = PathBuf::from(std::env::var_os(SHIM_PATH_ENV).expect("the shim's path"));
    runtime().block_on(async move {
        let mut options = Pkcs11Options::default();
        options.pool_size = 6;
        // The scenario below counts sessions per attempt for a budget of four attempts.
        options.retry.max_attempts = 4;
        let max_attempts = options.retry.max_attempts as u64;
        let backend = Pkcs11Backend::new(options);
        let uri = child.uri(&shim, "removable");
        let signer = backend.open_signer(&uri).await.unwrap();
        let (ca, ca_der) = authority(signer.clone(), &uri.to_string()).await;
        let request = apiserver_request();
        let (subject, policy, context) = &request;
        let sink = MemoryAuditSink::default();
        let mut certs = Vec::new();

        // Warm the pool: all six sessions open and idle (RSA-4096 signatures take long enough
        // that 24 concurrent signers hold every session at once).
        for _ in 0..20 {
            let mut tasks = Vec::new();
            for t in 0..24 {
                let s = signer.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..5 {
                        let msg = format!("warm {t} {i}");
                        let sig = s.sign(msg.as_bytes()).await.unwrap();
                        signer_api::verify::verify_signature(
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
            if signer.token_stats().sessions_opened >= 6 {
                break;
            }
        }
        let warm = signer.token_stats();
        assert_eq!(warm.sessions_opened, 6, "{warm:?}");
        assert_eq!(warm.sessions_discarded, 0, "{warm:?}");

        for _ in 0..20 {
            let c = ca
                .issue(subject, policy, SystemTime::now(), &sink, context.clone())
                .await
                .unwrap();
            certs.push(c.der);
        }

        // Removed: one issuance fails after its attempts, each on a pooled session that the
        // shim answers CKR_DEVICE_REMOVED; two of the six sessions stay idle, now stale.
        child.control("removed=true\n");
        // With the default retry budget the failed sessions are discarded and new ones refused,
        // so the last answer may also be CKR_TOKEN_NOT_PRESENT; either way: retryable, no cert.
        issue_fails_transiently(
            &ca,
            &request,
            &sink,
            &["CKR_DEVICE_REMOVED", "CKR_TOKEN_NOT_PRESENT"],
        )
        .await;
        let removed = signer.token_stats();
        assert_eq!(
            removed.sessions_discarded - warm.sessions_discarded,
            max_attempts,
            "one session discarded per attempt: {removed:?}"
        );
        assert!(child.log_count("injected=") as u64 >= max_attempts);

        // Re-inserted: the stale sessions answer CKR_SESSION_HANDLE_INVALID, the pool replaces
        // them, and the very first issuance succeeds, in this process, with this signer.
        child.control("");
        let c = ca
            .issue(subject, policy, SystemTime::now(), &sink, context.clone())
            .await
            .expect("signing works again once the token is back");
        certs.push(c.der);
        assert!(
            child.log_count("(session from before removal)") >= 1,
            "the shim did not invalidate the stale sessions:\n{}",
            std::fs::read_to_string(&child.log).unwrap_or_default()
        );
        let recovered = signer.token_stats();
        assert!(recovered.retries > removed.retries, "{recovered:?}");
        assert!(recovered.sessions_opened > removed.sessions_opened);
        for i in 0..20 {
            let msg = format!("after re-insertion {i}");
            let sig = signer.sign(msg.as_bytes()).await.unwrap();
            signer_api::verify::verify_signature(
                signer.public_key(),
                &signer.algorithm().algorithm_identifier(),
                msg.as_bytes(),
                &sig,
            )
            .unwrap();
        }

        // Removed again for longer: the idle sessions are used up and new ones cannot be
        // opened (CKR_TOKEN_NOT_PRESENT); still only retryable errors.
        child.control("removed=true\n");
        for _ in 0..3 {
            issue_fails_transiently(
                &ca,
                &request,
                &sink,
                &["CKR_DEVICE_REMOVED", "CKR_TOKEN_NOT_PRESENT"],
            )
            .await;
            let e = signer.sign(b"while removed").await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
            assert!(e.is_retryable());
        }
        assert!(child.log_count(&format!("C_OpenSession injected={}", 0xe0)) >= 1);
        child.control("");
        for _ in 0..20 {
            let c = ca
                .issue(subject, policy, SystemTime::now(), &sink, context.clone())
                .await
                .unwrap();
            certs.push(c.der);
        }

        // (d) Every C_Sign fails (the token answers, but never signs): nothing is released.
        for rv in ["device-error", "session-handle-invalid"] {
            child.control(&format!("sign_fail_rate=1.0\nsign_fail_rv={rv}\n"));
            issue_fails_transiently(
                &ca,
                &request,
                &sink,
                &["CKR_DEVICE_ERROR", "CKR_SESSION_HANDLE_INVALID"],
            )
            .await;
        }
        child.control("");
        let c = ca
            .issue(subject, policy, SystemTime::now(), &sink, context.clone())
            .await
            .unwrap();
        certs.push(c.der);

        // Every certificate that came out, and only those, was audited; openssl verifies them all.
        let audited: BTreeSet<String> = sink
            .records()
            .iter()
            .map(|r| r.certificate_sha256.clone())
            .collect();
        let released: BTreeSet<String> = certs.iter().map(|d| integration::sha256_hex(d)).collect();
        assert_eq!(certs.len(), 42);
        assert_eq!(audited, released);
        openssl_verifies_all(&child.dir, &ca_der, &certs);
        let logins: Vec<String> = shim_log_lines(&child.log)
            .into_iter()
            .filter(|l| l.starts_with("C_Login"))
            .collect();
        assert!(
            !logins.is_empty() && logins.iter().all(|l| l == "C_Login rv=0"),
            "{logins:?}"
        );
        println!("token removal: {:?}", signer.token_stats());
    });
}

/// (e) 200 concurrent issuances through one signer with a pool of four sessions: 200
/// certificates, 200 distinct serials, all verified by openssl against the CA certificate.
#[test]
fn concurrent_issuance_through_a_pool_of_four() {
    let Some(dir) = child_dir() else {
        run_in_child("concurrent_issuance_through_a_pool_of_four", false, None);
        return;
    };
    let child = Child::new(dir);
    runtime().block_on(async move {
        let mut options = Pkcs11Options::default();
        options.pool_size = 4;
        let backend = Pkcs11Backend::new(options);
        let uri = child.uri(Path::new(SOFTHSM_MODULE), "pool-of-four");
        let signer = backend
            .generate_key(&uri, signer_api::KeyAlgorithm::Rsa2048)
            .await
            .unwrap();
        let (ca, ca_der) = authority(signer.clone(), &uri.to_string()).await;
        let ca = Arc::new(ca);
        let request = Arc::new(apiserver_request());
        let sink = Arc::new(MemoryAuditSink::default());
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (ca, request, sink) = (ca.clone(), request.clone(), sink.clone());
            tasks.push(tokio::spawn(async move {
                let (subject, policy, context) = &*request;
                ca.issue(
                    subject,
                    policy,
                    SystemTime::now(),
                    sink.as_ref() as &dyn AuditSink,
                    context.clone(),
                )
                .await
                .map(|c| c.der)
            }));
        }
        let mut certs = Vec::new();
        for t in tasks {
            certs.push(t.await.unwrap().unwrap());
        }
        let serials: BTreeSet<String> = certs
            .iter()
            .map(|d| {
                integration::cert_info(integration::pem_encode("CERTIFICATE", d).as_bytes()).serial
            })
            .collect();
        assert_eq!(serials.len(), 200, "200 distinct serials");
        let audited: BTreeMap<String, String> = sink
            .records()
            .iter()
            .map(|r| (r.serial.clone(), r.certificate_sha256.clone()))
            .collect();
        assert_eq!(audited.len(), 200, "200 audit records, distinct serials");
        assert_eq!(
            audited.keys().cloned().collect::<BTreeSet<_>>(),
            serials.iter().map(|s| s.to_lowercase()).collect(),
        );
        openssl_verifies_all(&child.dir, &ca_der, &certs);
        let stats = signer.token_stats();
        assert!(stats.operations >= 201, "{stats:?}");
        assert!(
            stats.sessions_opened <= 5,
            "at most four pooled sessions plus the key generation's: {stats:?}"
        );
        assert_eq!(stats.retries, 0, "{stats:?}");
        // Issued at the same time, each certificate is the CA's and the request's.
        let info = cert_info(integration::pem_encode("CERTIFICATE", &certs[0]).as_bytes());
        assert_eq!(info.issuer, "CN = kubernetes");
        assert_eq!(info.subject, "CN = kube-apiserver");
    });
}
