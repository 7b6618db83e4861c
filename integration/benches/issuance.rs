//! Issuance benchmark: how close does issuing a certificate get to the cost of the signature it
//! needs, and how long does `kubesign sign` take on a whole kubeadm directory?
//!
//! Absolute rates on shared machines are noise, so everything that matters is a ratio of rates
//! measured in the same run, in interleaved rounds (each round measures every operation once; the
//! ratio reported is the median of the per-round ratios, with its range). Nothing here asserts on
//! time: targets are printed as "target met" / "below target".
//!
//! For each CA key type (ECDSA P-256, RSA-2048; file keys made with `FileKeyGenerator`):
//! - raw: `FileSigner::sign_sync` + `verify::verify_signature` on a real TBSCertificate of the
//!   same size as the ones issued, with the same key (what issuance cannot avoid: sign, then
//!   verify-after-sign);
//! - issue: `CertificateAuthority::issue` for a pre-verified CSR with an in-memory audit sink, and
//!   its ratio to raw (target >= 0.70);
//! - issue with the real JSONL audit log (`JsonlAuditLog`, one fsync per record), and its ratio;
//! - CSR parse + proof of possession (`VerifiedCsr::parse` of a PEM request of the same key type).
//!
//! Then the real binary: `kubesign sign` on a fresh copy of `examples/kubeadm-csr` (12 CSRs) per
//! run, with file CAs made once by `kubesign ca init`; min and median wall time, next to
//! `kubesign --version` (process start) measured in the same run. Target: well under 50 ms.
//!
//! Run: `cargo bench -p integration --bench issuance` (about a minute), or with `-- --quick` (a
//! few seconds, for CI). The binary comes from `KUBESIGN_BIN`, else `$CARGO_TARGET_DIR` or
//! `<workspace>/target`, release before debug.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use backend_file::{FileKeyGenerator, FileSigner};
use der::{Decode as _, Encode as _};
use kubesign_cli::audit_log::JsonlAuditLog;
use signer_api::audit::{AuditSink, MemoryAuditSink, RequestContext};
use signer_api::ca::CertificateSubject;
use signer_api::profile::{self, DEFAULT_CA_VALIDITY, DEFAULT_LEAF_VALIDITY};
use signer_api::{
    CaRole, CertificateAuthority, IssuancePolicy, KeyAlgorithm, Signer, VerifiedCsr, verify,
};

const TARGET_RATIO: f64 = 0.70;
const TARGET_SIGN_MS: f64 = 50.0;

struct Settings {
    quick: bool,
    rounds: usize,
    slice: Duration,
    binary_runs: usize,
}

fn settings() -> Settings {
    let quick = std::env::args().skip(1).any(|a| a == "--quick");
    if quick {
        Settings {
            quick,
            rounds: 5,
            slice: Duration::from_millis(60),
            binary_runs: 5,
        }
    } else {
        Settings {
            quick,
            rounds: 15,
            slice: Duration::from_millis(250),
            binary_runs: 20,
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

/// Operations per second of `op`, run for `slice`.
fn rate(slice: Duration, mut op: impl FnMut()) -> f64 {
    op(); // warm
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < slice {
        op();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn rate_async<F, Fut>(slice: Duration, mut op: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    op().await;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < slice {
        op().await;
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// `1,234` / `12.3` style.
fn fmt_rate(r: f64) -> String {
    if r >= 1000.0 {
        let s = format!("{:.0}", r);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{r:.1}")
    }
}

// ---------------------------------------------------------------------------------------------
// In-process issuance
// ---------------------------------------------------------------------------------------------

struct AlgResult {
    name: &'static str,
    tbs_len: usize,
    raw: Vec<f64>,
    issue_mem: Vec<f64>,
    issue_jsonl: Vec<f64>,
    csr_parse: Vec<f64>,
}

impl AlgResult {
    fn ratios(&self, issue: &[f64]) -> Vec<f64> {
        issue.iter().zip(&self.raw).map(|(i, r)| i / r).collect()
    }
}

fn bench_algorithm(
    rt: &tokio::runtime::Runtime,
    s: &Settings,
    dir: &Path,
    algorithm: KeyAlgorithm,
    name: &'static str,
) -> AlgResult {
    let key_path = dir.join(format!("{name}.key"));
    FileKeyGenerator::generate_at(&key_path, algorithm).expect("generate the CA key");
    let signer = Arc::new(FileSigner::load(&key_path).expect("load the CA key"));
    let now = SystemTime::now();
    let ca_der = rt
        .block_on(CertificateAuthority::self_signed(
            CaRole::Kubernetes,
            signer.as_ref(),
            DEFAULT_CA_VALIDITY,
            now,
        ))
        .expect("self-signed CA certificate");
    let ca = CertificateAuthority::new(
        CaRole::Kubernetes,
        &ca_der,
        signer.clone(),
        format!("file:{}", key_path.display()),
    )
    .expect("CA");

    let csr_pem = integration::bench::apiserver_csr_pem(algorithm);
    let csr = VerifiedCsr::parse(csr_pem.as_bytes()).expect("CSR");
    let apiserver = profile::by_name("apiserver").expect("apiserver profile");
    apiserver
        .check_request(&csr)
        .expect("the CSR fits kubeadm's apiserver profile");
    let policy: IssuancePolicy = apiserver.policy(DEFAULT_LEAF_VALIDITY);
    let subject = CertificateSubject::from(&csr);
    let context = RequestContext {
        profile: "apiserver".into(),
        source: "bench".into(),
        source_sha256: Some(signer_api::ca::sha256_hex(csr.der())),
        requester: None,
    };

    // The raw message: a real TBSCertificate as issued by this CA for this CSR.
    let memory = MemoryAuditSink::default();
    let sample = rt
        .block_on(ca.issue(&subject, &policy, now, &memory, context.clone()))
        .expect("issue");
    let cert = x509_cert::Certificate::from_der(&sample.der).expect("issued certificate parses");
    let tbs = cert.tbs_certificate().to_der().expect("TBS");
    let alg_id = signer.algorithm().algorithm_identifier();
    let spki = signer.public_key().clone();
    let sig = signer.sign_sync(&tbs).expect("sign");
    verify::verify_signature(&spki, &alg_id, &tbs, &sig).expect("verify");

    let audit_path = dir.join(format!("audit-{name}.jsonl"));
    let jsonl = JsonlAuditLog::open(&audit_path).expect("audit log");

    let mut out = AlgResult {
        name,
        tbs_len: tbs.len(),
        raw: Vec::new(),
        issue_mem: Vec::new(),
        issue_jsonl: Vec::new(),
        csr_parse: Vec::new(),
    };
    let raw = || {
        rate(s.slice, || {
            let sig = signer.sign_sync(&tbs).expect("sign");
            verify::verify_signature(&spki, &alg_id, &tbs, &sig).expect("verify");
        })
    };
    let issue = |sink: &dyn AuditSink| {
        let fut = rate_async(s.slice, || async {
            ca.issue(&subject, &policy, SystemTime::now(), sink, context.clone())
                .await
                .expect("issue");
        });
        rt.block_on(fut)
    };
    for round in 0..s.rounds {
        // Alternate the order inside a round so that drift does not favour one side.
        let (r, m) = if round % 2 == 0 {
            let r = raw();
            (r, issue(&MemoryAuditSink::default()))
        } else {
            let m = issue(&MemoryAuditSink::default());
            (raw(), m)
        };
        out.raw.push(r);
        // A fresh memory sink per measurement, so the record vector does not grow across rounds.
        out.issue_mem.push(m);
        out.issue_jsonl.push(issue(&jsonl));
        out.csr_parse.push(rate(s.slice, || {
            VerifiedCsr::parse(csr_pem.as_bytes()).expect("CSR");
        }));
    }
    let lines = std::fs::read_to_string(&audit_path)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    assert!(lines > 0, "the JSONL audit log received the records");
    out
}

/// The filesystem type holding `path` (from /proc/mounts; Linux only).
fn filesystem_of(path: &Path) -> String {
    let Ok(path) = path.canonicalize() else {
        return "unknown".into();
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, mount, fstype) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mount)
                .then(|| (mount.len(), fstype.to_owned()))
        })
        .max()
        .map_or_else(|| "unknown".into(), |(_, t)| t)
}

fn print_issuance(results: &[AlgResult], s: &Settings, fs: &str) {
    let range = |v: &[f64]| {
        format!(
            "{:.2} [{:.2}-{:.2}]",
            integration::bench::median(v),
            min(v),
            max(v)
        )
    };
    let verdict = |v: &[f64]| {
        if integration::bench::median(v) >= TARGET_RATIO {
            "target met"
        } else {
            "below target"
        }
    };
    let w = 26;
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    rows.push((
        "CA key".into(),
        results.iter().map(|r| r.name.to_owned()).collect(),
    ));
    rows.push((
        "TBSCertificate bytes".into(),
        results.iter().map(|r| r.tbs_len.to_string()).collect(),
    ));
    rows.push((
        "raw sign+verify /s".into(),
        results
            .iter()
            .map(|r| fmt_rate(integration::bench::median(&r.raw)))
            .collect(),
    ));
    rows.push((
        "issue, memory audit /s".into(),
        results
            .iter()
            .map(|r| fmt_rate(integration::bench::median(&r.issue_mem)))
            .collect(),
    ));
    rows.push((
        format!("  issue/raw (target {TARGET_RATIO:.2})"),
        results
            .iter()
            .map(|r| range(&r.ratios(&r.issue_mem)))
            .collect(),
    ));
    rows.push((
        "".into(),
        results
            .iter()
            .map(|r| verdict(&r.ratios(&r.issue_mem)).to_owned())
            .collect(),
    ));
    rows.push((
        "issue, JSONL audit+fsync /s".into(),
        results
            .iter()
            .map(|r| fmt_rate(integration::bench::median(&r.issue_jsonl)))
            .collect(),
    ));
    rows.push((
        "  issue/raw".into(),
        results
            .iter()
            .map(|r| range(&r.ratios(&r.issue_jsonl)))
            .collect(),
    ));
    rows.push((
        "CSR parse + PoP /s".into(),
        results
            .iter()
            .map(|r| fmt_rate(integration::bench::median(&r.csr_parse)))
            .collect(),
    ));
    rows.push((
        "  CSR parse / raw".into(),
        results
            .iter()
            .map(|r| range(&r.ratios(&r.csr_parse)))
            .collect(),
    ));
    println!(
        "In-process issuance ({} rounds x {} ms per measurement, interleaved; rates are medians, ratios are medians of per-round ratios [min-max])",
        s.rounds,
        s.slice.as_millis()
    );
    for (label, cells) in rows {
        let mut line = format!("  {label:<30}");
        for c in cells {
            line.push_str(&format!("{c:>w$}"));
        }
        println!("{}", line.trim_end());
    }
    println!(
        "  (JSONL audit log on {fs}: one fsync per record; the CSR for each row uses the same key type as the CA)"
    );
}

// ---------------------------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------------------------

fn find_binary() -> Option<(PathBuf, String)> {
    if let Some(p) = std::env::var_os("KUBESIGN_BIN") {
        return Some((PathBuf::from(p), "from KUBESIGN_BIN".into()));
    }
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(workspace_root().join("target"));
    for profile in ["release", "debug"] {
        for d in &dirs {
            let p = d.join(profile).join("kubesign");
            if p.is_file() {
                return Some((p, format!("{profile} build, found in {}", d.display())));
            }
        }
    }
    None
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else if e.file_name() != "README.md" {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

fn time_command(bin: &Path, args: &[&str]) -> Result<f64, String> {
    let start = Instant::now();
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        return Err(format!(
            "{} {} failed ({}): {}",
            bin.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(ms)
}

/// Wall time of writing a small file and fsyncing it (and its directory) where the runs write.
fn small_write_fsync_ms(dir: &Path) -> std::io::Result<f64> {
    use std::io::Write as _;
    let path = dir.join(".fsync-probe");
    let start = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    f.write_all(&[b'x'; 1200])?;
    f.sync_all()?;
    std::fs::File::open(dir)?.sync_all()?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    std::fs::remove_file(&path)?;
    Ok(ms)
}

fn bench_binary(s: &Settings) -> Result<(), String> {
    println!();
    let Some((bin, how)) = find_binary() else {
        println!(
            "kubesign binary: not found (KUBESIGN_BIN unset, no target/release/kubesign or target/debug/kubesign); \
             skipping the `kubesign sign` timing. Build it with `cargo build --release -p cli`."
        );
        return Ok(());
    };
    println!("kubesign binary: {} ({how})", bin.display());
    if how.starts_with("debug") {
        println!(
            "  note: a debug build; its wall times are not representative (this bench itself is built in release)."
        );
    }
    let examples = workspace_root().join("examples/kubeadm-csr");
    let csrs = ["pki", "pki/etcd", "kubeconfig"]
        .iter()
        .filter_map(|d| std::fs::read_dir(examples.join(d)).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".csr"))
        .count();

    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cfg = work.path().join("kubesign.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: kubesign.dev/v1alpha1\nkind: SignerConfiguration\ncas:\n  kubernetes:\n    key: file:ca/ca.key\n    certificate: ca/ca.crt\n  etcd:\n    key: file:ca/etcd-ca.key\n    certificate: ca/etcd-ca.crt\n  front-proxy:\n    key: file:ca/front-proxy-ca.key\n    certificate: ca/front-proxy-ca.crt\naudit:\n  path: audit.jsonl\n",
    )
    .map_err(|e| e.to_string())?;
    let cfg_s = cfg.to_string_lossy().into_owned();
    time_command(&bin, &["ca", "init", "--config", &cfg_s])?;

    let mut sign_ms = Vec::new();
    let mut dry_ms = Vec::new();
    let mut version_ms = Vec::new();
    let mut fsync_ms = Vec::new();
    for i in 0..s.binary_runs {
        let run = work.path().join(format!("run-{i}"));
        copy_dir(&examples, &run).map_err(|e| format!("copying {}: {e}", examples.display()))?;
        let pki = run.join("pki");
        let kc = run.join("kubeconfig");
        let (pki_s, kc_s) = (
            pki.to_string_lossy().into_owned(),
            kc.to_string_lossy().into_owned(),
        );
        version_ms.push(time_command(&bin, &["--version"])?);
        dry_ms.push(time_command(
            &bin,
            &[
                "sign",
                "--dry-run",
                "--config",
                &cfg_s,
                "--cert-dir",
                &pki_s,
                "--kubeconfig-dir",
                &kc_s,
            ],
        )?);
        fsync_ms.push(small_write_fsync_ms(&run).map_err(|e| format!("fsync probe: {e}"))?);
        sign_ms.push(time_command(
            &bin,
            &[
                "sign",
                "--config",
                &cfg_s,
                "--cert-dir",
                &pki_s,
                "--kubeconfig-dir",
                &kc_s,
            ],
        )?);
        if i == 0 {
            for f in [
                "apiserver.crt",
                "etcd/server.crt",
                "front-proxy-client.crt",
                "ca.crt",
            ] {
                if !pki.join(f).is_file() {
                    return Err(format!(
                        "`kubesign sign` did not write {}",
                        pki.join(f).display()
                    ));
                }
            }
        }
    }
    let (sign_min, sign_med) = (min(&sign_ms), integration::bench::median(&sign_ms));
    let (ver_min, ver_med) = (min(&version_ms), integration::bench::median(&version_ms));
    println!(
        "  kubesign sign: {csrs} CSRs of examples/kubeadm-csr into a fresh copy per run, RSA-2048 file CAs (kubeadm's default) from `kubesign ca init`, {} runs",
        s.binary_runs
    );
    println!("  {:<34}{:>10}{:>10}", "", "min", "median");
    println!(
        "  {:<34}{:>7.1} ms{:>7.1} ms",
        "kubesign sign (whole directory)", sign_min, sign_med
    );
    println!(
        "  {:<34}{:>7.1} ms{:>7.1} ms",
        "kubesign --version (process start)", ver_min, ver_med
    );
    println!(
        "  {:<34}{:>7.1} ms{:>7.1} ms",
        "sign minus process start",
        sign_min - ver_min,
        sign_med - ver_med
    );
    println!(
        "  {:<34}{:>7.1} ms{:>7.1} ms",
        "sign --dry-run (no signing/writes)",
        min(&dry_ms),
        integration::bench::median(&dry_ms)
    );
    println!(
        "  {:<34}{:>7.1} ms{:>7.1} ms",
        "one small write + fsync (probe)",
        min(&fsync_ms),
        integration::bench::median(&fsync_ms)
    );
    println!(
        "  (sign minus dry-run, {:.1} ms median, is the signing plus the durable writes: every certificate, kubeconfig, \
         copied CA certificate and audit record is fsynced before sign returns)",
        sign_med - integration::bench::median(&dry_ms)
    );
    println!(
        "  target < {TARGET_SIGN_MS:.0} ms for the directory: {} (median {sign_med:.1} ms = {:.2} of the target); temp dir on {}",
        if sign_med < TARGET_SIGN_MS {
            "target met"
        } else {
            "below target"
        },
        sign_med / TARGET_SIGN_MS,
        filesystem_of(work.path())
    );
    Ok(())
}

fn main() {
    let s = settings();
    let started = Instant::now();
    println!(
        "kubesign issuance benchmark ({}; bench built {})",
        if s.quick {
            "quick run"
        } else {
            "full run; `-- --quick` for a short one"
        },
        if cfg!(debug_assertions) {
            "WITHOUT optimizations: numbers are not meaningful"
        } else {
            "with optimizations"
        }
    );
    println!(
        "Ratios compare rates measured in the same run on this machine; absolute rates are noisy. Nothing here fails on time.\n"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let results = vec![
        bench_algorithm(&rt, &s, dir.path(), KeyAlgorithm::EcdsaP256, "ECDSA-P256"),
        bench_algorithm(&rt, &s, dir.path(), KeyAlgorithm::Rsa2048, "RSA-2048"),
    ];
    print_issuance(&results, &s, &filesystem_of(dir.path()));
    let binary = bench_binary(&s);
    println!(
        "\nbenchmark finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = binary {
        // Not a timing failure: the binary did not do its job.
        eprintln!("error: the kubesign binary failed: {e}");
        std::process::exit(1);
    }
}
