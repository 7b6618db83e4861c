//! `kubesign serve` benchmark (issue #5): drain N approved CertificateSigningRequests and compare
//! with kube-controller-manager's own csrsigning controller, in one run, on the same apiserver.
//!
//! One real control plane (etcd + kube-apiserver on 127.0.0.1, `integration::control_plane`) with
//! the CA keys in files (ECDSA-P256). Then two phases, each with a fresh set of N
//! `kubernetes.io/kube-apiserver-client` requests (rcgen, ECDSA-P256, labelled per phase):
//!
//! 1. kube-controller-manager `--controllers=csrsigning` with the Kubernetes CA cert/key files
//!    (its default client QPS/burst and worker count, as kubeadm runs it);
//! 2. `kubesign serve` (same CA key file, leader election OFF, default `workers`, the audit log
//!    on, as a ServiceAccount bound by `deploy/rbac.yaml`).
//!
//! Each phase: start the signer, create the N requests (parallel `kubectl create -f -` of Lists),
//! approve them (parallel `kubectl certificate approve` with 20 names per call), and meanwhile
//! poll the phase's requests with one `kubectl get --raw` LIST about every 200 ms, recording when
//! each certificate was first observed. The approval time of a request is estimated from the
//! approve call that carried it (client-side start/return) intersected with the Approved
//! condition's `lastUpdateTime` (1 s resolution): the midpoint of that interval. So latencies are
//! observation-based, with an error of about one poll period plus half an approve call.
//!
//! Reported per phase: N, wall time (first approve call started -> last certificate observed),
//! throughput, latency p50/p99, poll period; then serve/kcm throughput and p99 ratios. Nothing
//! asserts on the numbers; a missing component prints why and exits 0.
//!
//! Run: `cargo bench -p integration --bench serve` (N=2000, a few minutes; `KUBESIGN_BENCH_N`
//! overrides N) or `-- --quick` (N=100, about a minute). The kubesign binary: `KUBESIGN_BIN`,
//! else `target/release/kubesign`, else `target/debug/kubesign`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use integration::control_plane::{
    CaKeys, ControlPlane, ControlPlaneOptions, ControlPlaneTools, ControllerManagerOptions,
    free_ports,
};
use integration::{parse_iso_utc, workspace_root};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

const SIGNER: &str = "kubernetes.io/kube-apiserver-client";
const POLL_EVERY: Duration = Duration::from_millis(200);
/// kubectl's client-side limiter allows a burst of 10 requests (then 5/s); approving costs a GET
/// and an update per name, so 5 names per call are never throttled.
const APPROVE_CHUNK: usize = 5;
const APPROVE_PARALLEL: usize = 12;
const CREATE_CHUNK: usize = 250;
const CREATE_PARALLEL: usize = 6;

/// Seconds since the Unix epoch, as f64 (wall clock: comparable with `lastUpdateTime`).
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn kubesign_binary(found: &Path) -> PathBuf {
    if std::env::var_os("KUBESIGN_BIN").is_some_and(|v| !v.is_empty()) {
        return found.to_path_buf();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let target = if target.is_relative() {
        workspace_root().join(target)
    } else {
        target
    };
    let release = target.join("release/kubesign");
    if release.is_file() {
        release
    } else {
        found.to_path_buf()
    }
}

// ------------------------------------------------------------------------------------------------
// kubesign serve as a child process.
// ------------------------------------------------------------------------------------------------

/// A running `kubesign serve`; SIGKILLed on drop.
struct Serve {
    child: Child,
    log: PathBuf,
    http: u16,
}

impl Serve {
    fn spawn(cp: &ControlPlane, config: &Path, kubeconfig: &Path) -> Result<Serve, String> {
        let http = free_ports(1).map_err(|e| e.to_string())?[0];
        let log = cp.log_dir.join("kubesign-serve.log");
        let f = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = f.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&cp.tools.kubesign)
            .args([
                "serve",
                "--log-level=warn",
                "--log-format=json",
                &format!("--http-address=127.0.0.1:{http}"),
            ])
            .arg("--config")
            .arg(config)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env_remove("KUBECONFIG")
            .env_remove("RUST_LOG")
            .current_dir(&cp.root)
            .stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("starting kubesign serve: {e}"))?;
        let s = Serve { child, log, http };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !s.ready() {
            if Instant::now() > deadline {
                return Err(format!(
                    "kubesign serve not ready in 60 s\n{}",
                    integration::control_plane::tail(&s.log, 40)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(s)
    }

    fn ready(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.http)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// deploy/serviceaccount.yaml + deploy/rbac.yaml applied, and a kubeconfig with a token of the
/// `kubesign` ServiceAccount.
fn service_account_kubeconfig(cp: &ControlPlane) -> Result<PathBuf, String> {
    for f in ["deploy/serviceaccount.yaml", "deploy/rbac.yaml"] {
        let p = workspace_root().join(f);
        let out = cp.kubectl(&["apply", "-f", &p.display().to_string()]);
        if out.code != Some(0) {
            return Err(format!("kubectl apply {f}: {out:?}"));
        }
    }
    let out = cp.kubectl(&[
        "-n",
        "kube-system",
        "create",
        "token",
        "kubesign",
        "--duration=2h",
    ]);
    let token = out.stdout.trim().to_owned();
    if out.code != Some(0) || token.is_empty() {
        return Err(format!("kubectl create token: {out:?}"));
    }
    let conf = cp.root.join("kubesign-sa.conf");
    std::fs::write(
        &conf,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: cp\n  cluster:\n    server: {}\n    certificate-authority: {}\ncontexts:\n- name: kubesign\n  context: {{cluster: cp, user: kubesign}}\ncurrent-context: kubesign\nusers:\n- name: kubesign\n  user:\n    token: {token}\n",
            cp.api_url,
            cp.pki("ca.crt").display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(conf)
}

/// The control plane's kubesign.yaml (file CA keys, audit log) plus a `serve:` section.
fn serve_config(cp: &ControlPlane) -> Result<PathBuf, String> {
    let base = std::fs::read_to_string(&cp.kubesign_config).map_err(|e| e.to_string())?;
    let path = cp.root.join("serve-bench.yaml");
    let section = format!(
        "serve:\n  maxDuration: 8760h\n  leaderElection:\n    enabled: false\n  signers:\n    - name: {SIGNER}\n"
    );
    std::fs::write(&path, format!("{base}{section}")).map_err(|e| e.to_string())?;
    Ok(path)
}

// ------------------------------------------------------------------------------------------------
// One phase.
// ------------------------------------------------------------------------------------------------

struct Phase {
    n: usize,
    signed: usize,
    wall: f64,
    throughput: f64,
    p50: f64,
    p99: f64,
    approve_span: f64,
    poll_period: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A `List` of `CertificateSigningRequest`s, as JSON.
fn csr_list(names: &[String], label: &str, key: &KeyPair) -> Result<String, String> {
    let items = names
        .iter()
        .map(|name| {
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::OrganizationName, "kubesign:bench");
            dn.push(DnType::CommonName, name.as_str());
            params.distinguished_name = dn;
            let pem = params
                .serialize_request(key)
                .and_then(|c| c.pem())
                .map_err(|e| format!("CSR: {e}"))?;
            Ok(serde_json::json!({
                "apiVersion": "certificates.k8s.io/v1",
                "kind": "CertificateSigningRequest",
                "metadata": {"name": name, "labels": {"kubesign-bench": label}},
                "spec": {
                    "request": STANDARD.encode(pem),
                    "signerName": SIGNER,
                    "expirationSeconds": 3600,
                    "usages": ["digital signature", "client auth"],
                }
            }))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string())
}

/// Runs `job(chunk)` for every chunk on `threads` threads; the first error, if any.
fn parallel<T: Sync>(
    threads: usize,
    chunks: &[T],
    job: impl Fn(&T) -> Result<(), String> + Sync,
) -> Result<(), String> {
    let next = AtomicUsize::new(0);
    let first_err = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(c) = chunks.get(i) else { break };
                    if let Err(e) = job(c) {
                        first_err
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                    }
                }
            });
        }
    });
    match first_err.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn run_phase(cp: &ControlPlane, label: &str, n: usize, key: &KeyPair) -> Result<Phase, String> {
    let names: Vec<String> = (0..n).map(|i| format!("bench-{label}-{i:05}")).collect();

    // Create (not timed).
    let lists = names
        .chunks(CREATE_CHUNK)
        .map(|c| csr_list(c, label, key))
        .collect::<Result<Vec<_>, String>>()?;
    parallel(CREATE_PARALLEL, &lists, |list| {
        let out = cp.kubectl_stdin(
            &cp.admin_conf,
            &["create", "-f", "-", "-o", "name"],
            Some(list.as_bytes()),
        );
        if out.code == Some(0) {
            Ok(())
        } else {
            Err(format!("creating CSRs: {out:?}"))
        }
    })?;

    // Approve on worker threads while this thread polls.
    let approve_chunks: Vec<&[String]> = names.chunks(APPROVE_CHUNK).collect();
    let approve_windows: Mutex<HashMap<String, (f64, f64)>> = Mutex::new(HashMap::new());
    let mut cert_seen: HashMap<String, f64> = HashMap::new();
    let mut approved_lut: HashMap<String, f64> = HashMap::new();
    let approving_done = std::sync::atomic::AtomicBool::new(false);
    let path = format!(
        "/apis/certificates.k8s.io/v1/certificatesigningrequests?labelSelector=kubesign-bench%3D{label}"
    );
    let deadline =
        Instant::now() + Duration::from_secs(120) + Duration::from_millis(300) * n as u32;
    let mut polls = 0usize;
    let mut poll_ends: Vec<f64> = Vec::new();
    let approve_result = std::thread::scope(|s| {
        let approver = s.spawn(|| {
            let r = parallel(APPROVE_PARALLEL, &approve_chunks, |chunk| {
                let mut args: Vec<OsString> = vec!["certificate".into(), "approve".into()];
                args.extend(chunk.iter().map(OsString::from));
                let t0 = now();
                let out = cp.kubectl(&args);
                let t1 = now();
                if out.code != Some(0) {
                    return Err(format!("approving: {out:?}"));
                }
                let mut w = approve_windows.lock().unwrap_or_else(|e| e.into_inner());
                for name in chunk.iter() {
                    w.insert(name.clone(), (t0, t1));
                }
                Ok(())
            });
            approving_done.store(true, Ordering::SeqCst);
            r
        });
        loop {
            let t0 = Instant::now();
            let out = cp.kubectl(&["get", "--raw", &path]);
            let seen_at = now();
            polls += 1;
            poll_ends.push(seen_at);
            if out.code == Some(0)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&out.stdout)
            {
                for item in v["items"].as_array().into_iter().flatten() {
                    let Some(name) = item["metadata"]["name"].as_str() else {
                        continue;
                    };
                    if !approved_lut.contains_key(name)
                        && let Some(lut) = item["status"]["conditions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|c| c["type"] == "Approved")
                            .and_then(|c| c["lastUpdateTime"].as_str())
                    {
                        approved_lut.insert(name.to_owned(), parse_iso_utc(lut) as f64);
                    }
                    if item["status"]["certificate"]
                        .as_str()
                        .is_some_and(|c| !c.is_empty())
                    {
                        cert_seen.entry(name.to_owned()).or_insert(seen_at);
                    }
                }
            }
            if cert_seen.len() >= n {
                break;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "  {label}: only {} of {n} certificates after the deadline; reporting those",
                    cert_seen.len()
                );
                break;
            }
            if let Some(rest) = POLL_EVERY.checked_sub(t0.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        approver
            .join()
            .unwrap_or_else(|_| Err("approver panicked".into()))
    });
    approve_result?;
    let windows = approve_windows
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());

    let first_approve = windows.values().map(|w| w.0).fold(f64::INFINITY, f64::min);
    let last_approve = windows.values().map(|w| w.1).fold(0.0, f64::max);
    let last_cert = cert_seen.values().copied().fold(0.0, f64::max);
    let mut latencies: Vec<f64> = cert_seen
        .iter()
        .filter_map(|(name, seen)| {
            let (c0, c1) = *windows.get(name)?;
            let (lo, hi) = match approved_lut.get(name) {
                Some(&lut) if lut.max(c0) <= (lut + 1.0).min(c1) => {
                    (lut.max(c0), (lut + 1.0).min(c1))
                }
                _ => (c0, c1),
            };
            Some((seen - (lo + hi) / 2.0).max(0.0))
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let wall = if cert_seen.is_empty() {
        f64::NAN
    } else {
        last_cert - first_approve
    };
    let poll_period = if poll_ends.len() > 1 {
        (poll_ends[poll_ends.len() - 1] - poll_ends[0]) / (poll_ends.len() - 1) as f64
    } else {
        f64::NAN
    };
    Ok(Phase {
        n,
        signed: cert_seen.len(),
        wall,
        throughput: cert_seen.len() as f64 / wall,
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        approve_span: last_approve - first_approve,
        poll_period,
    })
}

fn print_phase(name: &str, p: &Phase) {
    println!(
        "  {name:<22} N={:<5} signed={:<5} wall={:>7.2} s  throughput={:>8.1} certs/s  latency p50={:>6.3} s  p99={:>6.3} s  (approving took {:.2} s; poll period {:.0} ms)",
        p.n,
        p.signed,
        p.wall,
        p.throughput,
        p.p50,
        p.p99,
        p.approve_span,
        p.poll_period * 1000.0
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let n: usize = if quick {
        100
    } else {
        std::env::var("KUBESIGN_BENCH_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(2000)
    };
    println!(
        "serve bench: drain {n} approved {SIGNER} CSRs, kube-controller-manager csrsigning vs kubesign serve ({})",
        if quick {
            "quick run"
        } else {
            "full run; `-- --quick` for N=100"
        }
    );

    let opts = ControlPlaneOptions {
        ca_keys: CaKeys::File,
        ..ControlPlaneOptions::default()
    };
    // `find` prints SKIPPED (or panics under CI=true) when a component is missing: either way
    // this bench says so and exits 0.
    let found = std::panic::catch_unwind(|| ControlPlaneTools::find(&opts));
    let Ok(Some(mut tools)) = found else {
        println!(
            "serve bench: SKIPPED: a component is missing (see above; run scripts/testbed.sh and build kubesign)"
        );
        return;
    };
    if let Err(why) = &tools.kube_controller_manager {
        println!("serve bench: SKIPPED: kube-controller-manager is unavailable: {why}");
        return;
    }
    tools.kubesign = kubesign_binary(&tools.kubesign);
    println!(
        "  kubesign binary: {}{}",
        tools.kubesign.display(),
        if tools
            .kubesign
            .components()
            .any(|c| c.as_os_str() == "debug")
        {
            " (a debug build: serve numbers are pessimistic)"
        } else {
            ""
        }
    );
    println!(
        "  CA: kubernetes CA, ECDSA-P256, key in a file, the same file for both signers; requests ECDSA-P256"
    );

    if let Err(e) = run(&tools, opts, n) {
        eprintln!("serve bench: error: {e}");
        std::process::exit(1);
    }
}

fn run(tools: &ControlPlaneTools, opts: ControlPlaneOptions, n: usize) -> Result<(), String> {
    let mut cp = ControlPlane::start(tools, opts).map_err(|e| format!("{e:?}"))?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;

    // Phase 1: kube-controller-manager.
    let ca_key = cp.ca_key_file("kubernetes-ca");
    let ca_crt = cp.pki("ca.crt");
    cp.start_controller_manager(&ControllerManagerOptions {
        signing: Some((ca_crt, ca_key)),
        ..ControllerManagerOptions::controllers(&["csrsigning"])
    })
    .map_err(|e| format!("{e:?}"))?;
    let kcm = run_phase(&cp, "kcm", n, &key);
    cp.stop_controller_manager();
    let kcm = kcm?;

    // Phase 2: kubesign serve.
    let sa = service_account_kubeconfig(&cp)?;
    let config = serve_config(&cp)?;
    let serve = Serve::spawn(&cp, &config, &sa)?;
    let ks = run_phase(&cp, "serve", n, &key);
    drop(serve);
    let ks = ks?;

    println!(
        "results (latency = approval -> certificate first observed by polling; observation-based):"
    );
    print_phase("kube-controller-manager", &kcm);
    print_phase("kubesign serve", &ks);
    println!(
        "  ratios: throughput serve/kcm = {:.2}x   p99 latency serve/kcm = {:.2}   p50 serve/kcm = {:.2}",
        ks.throughput / kcm.throughput,
        ks.p99 / kcm.p99,
        ks.p50 / kcm.p50
    );
    println!(
        "  notes: polling = one LIST of the phase's CSRs every ~{} ms (resolution above); approval time = \
         midpoint of the approve call ({APPROVE_CHUNK} names/call, {APPROVE_PARALLEL} in parallel, competing for the same CPUs) intersected with \
         the Approved lastUpdateTime second; when `approving took` is close to `wall`, the approval rate \
         bounds throughput. kcm: --controllers=csrsigning, default --kube-api-qps/--kube-api-burst; \
         serve: leader election off, default workers, audit log on.",
        POLL_EVERY.as_millis()
    );
    Ok(())
}
