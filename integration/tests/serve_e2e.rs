//! `kubesign serve` against a real control plane (issue #5): a real etcd and kube-apiserver whose
//! certificates kubesign issued, the CA keys in SoftHSM (`integration::control_plane`), and the
//! real `kubesign` binary running `serve` with a ServiceAccount token bound by exactly the RBAC in
//! `deploy/` (so the shipped permissions are proven sufficient).
//!
//! MUST: sign approved kubelet client, kubelet serving, API server client and custom-signer
//! requests, and the certificates authenticate (as `system:node:NAME` in `system:nodes`, ...) or
//! serve with the requested SANs; honour `expirationSeconds` with kube-controller-manager's
//! notBefore/notAfter rule; end invalid requests `Failed` / `SignerValidationFailure` with a Warning
//! Event; record every signature in the audit log with the requester; release the Lease on SIGTERM;
//! sign a bootstrap-token node request that kube-controller-manager's csrapproving approved; with
//! two replicas only the leader signs and the other takes over when the leader is killed; after a
//! `kill -9` during a burst, every request ends with exactly one certificate.
//! MUST NOT: touch unapproved, denied or other signers' requests.
//!
//! The tests run one at a time (each starts its own etcd and kube-apiserver; two cores).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use integration::control_plane::{
    ControlPlane, ControlPlaneOptions, ControlPlaneTools, ControllerManagerOptions, NODE_NAME,
    free_ports,
};
use integration::{Output, cert_info, openssl_verify, pem_blocks, read_audit, write};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn start() -> Option<ControlPlane> {
    let opts = ControlPlaneOptions::default();
    let tools = ControlPlaneTools::find(&opts)?;
    Some(ControlPlane::start(&tools, opts).unwrap_or_else(|e| panic!("{e:?}")))
}

fn repo(rel: &str) -> PathBuf {
    integration::workspace_root().join(rel)
}

// ------------------------------------------------------------------------------------------------
// kubesign serve as a child process.
// ------------------------------------------------------------------------------------------------

/// A running `kubesign serve`; SIGKILLed on drop.
struct Serve {
    child: Option<Child>,
    log: PathBuf,
    http: u16,
}

impl Serve {
    fn spawn(cp: &ControlPlane, config: &Path, kubeconfig: &Path, name: &str) -> Serve {
        let http = free_ports(1).expect("free port")[0];
        let log = cp.log_dir.join(format!("{name}.log"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("serve log");
        let err = f.try_clone().expect("log handle");
        let mut cmd = Command::new(&cp.tools.kubesign);
        cmd.args([
            "serve",
            "--log-level=info",
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
        .stderr(Stdio::from(err));
        if let Some(conf) = &cp.softhsm_conf {
            cmd.env("SOFTHSM2_CONF", conf);
        }
        let child = cmd.spawn().expect("starting kubesign serve");
        let s = Serve {
            child: Some(child),
            log,
            http,
        };
        s.wait_ready();
        s
    }

    fn http_get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.http)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    fn metrics(&self) -> String {
        self.http_get("/metrics").unwrap_or_default()
    }

    fn is_leader(&self) -> bool {
        self.metrics().contains("\nkubesign_serve_leader 1")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self
                .http_get("/readyz")
                .is_some_and(|r| r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kubesign serve not ready in 60 s\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGTERM, then the exit status (within 30 s).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.pid().to_string();
        // The shell's built-in kill: no procps needed.
        let ok = Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status()
            .expect("kill -TERM");
        assert!(ok.success());
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "kubesign serve did not exit on SIGTERM\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} ---\n{}",
                self.log.display(),
                integration::control_plane::tail(&self.log, 60)
            );
        }
        self.kill9();
    }
}

// ------------------------------------------------------------------------------------------------
// Setup: RBAC from deploy/, a ServiceAccount token, the serve configuration.
// ------------------------------------------------------------------------------------------------

/// Applies deploy/serviceaccount.yaml and deploy/rbac.yaml and returns a kubeconfig holding a
/// token of the `kubesign` ServiceAccount: `serve` then has exactly the shipped permissions.
fn service_account_kubeconfig(cp: &ControlPlane) -> PathBuf {
    for f in ["deploy/serviceaccount.yaml", "deploy/rbac.yaml"] {
        let p = repo(f);
        cp.kubectl(&["apply", "-f", &p.display().to_string()]).ok();
    }
    let out = cp.kubectl(&[
        "-n",
        "kube-system",
        "create",
        "token",
        "kubesign",
        "--duration=2h",
    ]);
    out.ok();
    let token = out.stdout.trim().to_owned();
    assert!(!token.is_empty());
    let conf = cp.root.join("kubesign-sa.conf");
    write(
        &conf,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: cp\n  cluster:\n    server: {}\n    certificate-authority: {}\ncontexts:\n- name: kubesign\n  context: {{cluster: cp, user: kubesign}}\ncurrent-context: kubesign\nusers:\n- name: kubesign\n  user:\n    token: {token}\n",
            cp.api_url,
            cp.pki("ca.crt").display()
        ),
    );
    // The token's identity, as the API server sees it.
    let who = cp.kubectl_with(&conf, &["auth", "whoami", "-o", "json"]);
    who.ok();
    assert_eq!(
        who.json()["status"]["userInfo"]["username"],
        "system:serviceaccount:kube-system:kubesign"
    );
    conf
}

const SERVE_SECTION: &str = "serve:
  maxDuration: 8760h
  leaderElection:
    namespace: kube-system
    leaseName: kubesign
    leaseDuration: 6s
    renewDeadline: 4s
    retryPeriod: 500ms
  signers:
    - name: kubernetes.io/kube-apiserver-client-kubelet
    - name: kubernetes.io/kubelet-serving
    - name: kubernetes.io/kube-apiserver-client
    - name: kubesign.dev/etcd-client
      ca: etcd
      maxDuration: 720h
      rules:
        usages: [digital signature, key encipherment, client auth]
        requiredUsages: [client auth]
        commonName: {prefix: \"etcd-client:\"}
        organizations: []
";

/// The control plane's kubesign.yaml plus a `serve:` section.
fn serve_config(cp: &ControlPlane) -> PathBuf {
    let base = std::fs::read_to_string(&cp.kubesign_config).expect("kubesign.yaml");
    let path = cp.root.join("serve.yaml");
    write(&path, format!("{base}{SERVE_SECTION}"));
    path
}

// ------------------------------------------------------------------------------------------------
// CertificateSigningRequests.
// ------------------------------------------------------------------------------------------------

struct Request {
    name: String,
    key_pem: String,
    csr_pem: String,
}

fn request(name: &str, cn: &str, orgs: &[&str], sans: Vec<SanType>) -> Request {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    let csr_pem = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    Request {
        name: name.to_owned(),
        key_pem: key.serialize_pem(),
        csr_pem,
    }
}

fn dns(s: &str) -> SanType {
    SanType::DnsName(s.try_into().expect("dns"))
}

fn csr_object(r: &Request, signer: &str, usages: &[&str], expiration: Option<u32>) -> String {
    let usages: Vec<String> = usages.iter().map(|u| format!("\"{u}\"")).collect();
    let exp = expiration
        .map(|e| format!("  expirationSeconds: {e}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: {}\nspec:\n  request: {}\n  signerName: {signer}\n  usages: [{}]\n{exp}",
        r.name,
        STANDARD.encode(&r.csr_pem),
        usages.join(", ")
    )
}

/// Creates the CSR as the identity in `kubeconfig`.
fn create(
    cp: &ControlPlane,
    kubeconfig: &Path,
    r: &Request,
    signer: &str,
    usages: &[&str],
    expiration: Option<u32>,
) {
    let obj = csr_object(r, signer, usages, expiration);
    cp.kubectl_stdin(kubeconfig, &["create", "-f", "-"], Some(obj.as_bytes()))
        .ok();
}

fn approve(cp: &ControlPlane, name: &str) {
    cp.kubectl(&["certificate", "approve", name]).ok();
}

fn get_csr(cp: &ControlPlane, name: &str) -> serde_json::Value {
    let out = cp.kubectl(&["get", "csr", name, "-o", "json"]);
    out.ok();
    out.json()
}

fn certificate(csr: &serde_json::Value) -> Option<Vec<u8>> {
    csr["status"]["certificate"]
        .as_str()
        .map(|b| STANDARD.decode(b).expect("status.certificate base64"))
}

fn failed_condition(csr: &serde_json::Value) -> Option<serde_json::Value> {
    csr["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Failed")
        .cloned()
}

/// Waits until the CSR has a certificate or a Failed condition.
fn wait_done(cp: &ControlPlane, serve: &Serve, name: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let csr = get_csr(cp, name);
        if certificate(&csr).is_some() || failed_condition(&csr).is_some() {
            return csr;
        }
        assert!(
            Instant::now() < deadline,
            "{name} neither signed nor failed in 60 s: {csr:#}\n{}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[track_caller]
fn signed(csr: &serde_json::Value) -> Vec<u8> {
    let pem = certificate(csr).unwrap_or_else(|| panic!("no certificate: {csr:#}"));
    let blocks = pem_blocks(&pem);
    assert_eq!(blocks.len(), 1, "exactly one PEM block");
    assert_eq!(blocks[0].0, "CERTIFICATE");
    assert!(
        !String::from_utf8_lossy(&pem).contains(':'),
        "no PEM headers"
    );
    assert!(failed_condition(csr).is_none());
    pem
}

#[track_caller]
fn refused(csr: &serde_json::Value, message: &str) {
    assert!(certificate(csr).is_none(), "{csr:#}");
    let c = failed_condition(csr).unwrap_or_else(|| panic!("no Failed condition: {csr:#}"));
    assert_eq!(c["status"], "True");
    assert_eq!(c["reason"], "SignerValidationFailure");
    assert_eq!(c["message"], message, "{csr:#}");
}

/// The Warning events recorded for a CSR (cluster-scoped: in `default`).
fn warning_events(cp: &ControlPlane, name: &str) -> Vec<serde_json::Value> {
    let out = cp.kubectl(&[
        "-n",
        "default",
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={name}"),
        "-o",
        "json",
    ]);
    out.ok();
    out.json()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["type"] == "Warning")
        .collect()
}

/// A kubeconfig for a client certificate and key.
fn client_kubeconfig(cp: &ControlPlane, name: &str, cert_pem: &[u8], key_pem: &str) -> PathBuf {
    let dir = cp.root.join("clients");
    std::fs::create_dir_all(&dir).expect("clients dir");
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    write(&cert, cert_pem);
    write(&key, key_pem);
    let conf = dir.join(format!("{name}.conf"));
    write(
        &conf,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: cp\n  cluster:\n    server: {}\n    certificate-authority: {}\ncontexts:\n- name: c\n  context: {{cluster: cp, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user:\n    client-certificate: {}\n    client-key: {}\n",
            cp.api_url,
            cp.pki("ca.crt").display(),
            cert.display(),
            key.display()
        ),
    );
    conf
}

#[track_caller]
fn whoami(cp: &ControlPlane, conf: &Path) -> (String, Vec<String>) {
    let out = cp.kubectl_with(conf, &["auth", "whoami", "-o", "json"]);
    out.ok();
    let info = &out.json()["status"]["userInfo"];
    let groups = info["groups"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (
        info["username"].as_str().unwrap_or_default().to_owned(),
        groups,
    )
}

fn lease_holder(cp: &ControlPlane) -> String {
    let out = cp.kubectl(&[
        "-n",
        "kube-system",
        "get",
        "lease",
        "kubesign",
        "-o",
        "json",
    ]);
    out.ok();
    out.json()["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn scratch(cp: &ControlPlane) -> PathBuf {
    let d = cp.root.join("scratch");
    std::fs::create_dir_all(&d).expect("scratch");
    d
}

#[track_caller]
fn assert_verifies(cp: &ControlPlane, ca: &str, pem: &[u8], purpose: &str) {
    let out: Output = openssl_verify(&cp.pki(ca), pem, purpose, &scratch(cp));
    assert_eq!(out.code, Some(0), "{out:?}");
}

// ------------------------------------------------------------------------------------------------
// The tests.
// ------------------------------------------------------------------------------------------------

/// One control plane, one `kubesign serve` with the deploy/ RBAC: every kind of request.
#[test]
fn serve_signs_and_refuses_like_kube_controller_manager() {
    let _one = one_at_a_time();
    let Some(mut cp) = start() else { return };
    let sa_conf = service_account_kubeconfig(&cp);
    // The other manifests are valid for this API server (server-side dry run). Without
    // kube-controller-manager's serviceaccount controller, kube-system/default must be made by
    // hand for the Pod (a real static Pod's mirror Pod skips that check).
    cp.kubectl(&["-n", "kube-system", "create", "serviceaccount", "default"])
        .ok();
    for f in [
        "deploy/configmap.yaml",
        "deploy/deployment.yaml",
        "deploy/static-pod.yaml",
    ] {
        cp.kubectl(&[
            "apply",
            "--dry-run=server",
            "-f",
            &repo(f).display().to_string(),
        ])
        .ok();
    }
    let config = serve_config(&cp);
    let mut serve = Serve::spawn(&cp, &config, &sa_conf, "kubesign-serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !serve.is_leader() {
        assert!(
            Instant::now() < deadline,
            "never became leader\n{}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let node = cp.local_kubeconfig("kubelet.conf");
    let node_user = format!("system:node:{NODE_NAME}");
    let audit_before = read_audit(&cp.audit_log).len();

    // 1. A kubelet client certificate, requested by the node itself.
    let client = request("node-client", &node_user, &["system:nodes"], vec![]);
    create(
        &cp,
        &node,
        &client,
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "client auth"],
        None,
    );
    approve(&cp, "node-client");
    let csr = wait_done(&cp, &serve, "node-client");
    let pem = signed(&csr);
    let info = cert_info(&pem);
    assert_eq!(info.subject, format!("O = system:nodes, CN = {node_user}"));
    assert_eq!(info.issuer, "CN = kubernetes");
    // No expirationSeconds: maxDuration, backdated 5 min at both ends (ttl >= 8h).
    assert_eq!(info.not_after - info.not_before, 8760 * 3600);
    let ku = info.ext("X509v3 Key Usage").expect("keyUsage");
    assert!(ku.critical);
    assert_eq!(ku.value, "Digital Signature");
    assert_eq!(
        info.ext("X509v3 Extended Key Usage")
            .map(|e| e.value.as_str()),
        Some("TLS Web Client Authentication")
    );
    assert_eq!(
        info.ext("X509v3 Basic Constraints")
            .map(|e| e.value.as_str()),
        Some("CA:FALSE")
    );
    assert_verifies(&cp, "ca.crt", &pem, "sslclient");
    let conf = client_kubeconfig(&cp, "node-client", &pem, &client.key_pem);
    let (user, groups) = whoami(&cp, &conf);
    assert_eq!(user, node_user);
    assert!(groups.iter().any(|g| g == "system:nodes"), "{groups:?}");

    // The audit record came first and names the requester.
    let audit = read_audit(&cp.audit_log);
    let rec = audit
        .iter()
        .skip(audit_before)
        .find(|r| r["certificate_sha256"] == info.sha256)
        .unwrap_or_else(|| panic!("no audit record for node-client: {audit:#?}"));
    assert_eq!(
        rec["profile"],
        "kubernetes.io/kube-apiserver-client-kubelet"
    );
    assert_eq!(rec["requester"]["username"], node_user.as_str());
    let rgroups = rec["requester"]["groups"].as_array().expect("groups");
    assert!(rgroups.iter().any(|g| g == "system:nodes"), "{rec:#}");
    assert!(
        rec["source"]
            .as_str()
            .unwrap_or_default()
            .starts_with("CertificateSigningRequest/node-client")
    );
    assert!(rec["source_sha256"].is_string());

    // 2. A kubelet serving certificate with the requested SANs and expirationSeconds.
    let serving = request(
        "node-serving",
        &node_user,
        &["system:nodes"],
        vec![
            dns(NODE_NAME),
            SanType::IpAddress("127.0.0.1".parse().expect("ip")),
        ],
    );
    create(
        &cp,
        &node,
        &serving,
        "kubernetes.io/kubelet-serving",
        &["digital signature", "key encipherment", "server auth"],
        Some(3600),
    );
    approve(&cp, "node-serving");
    let pem = signed(&wait_done(&cp, &serve, "node-serving"));
    let info = cert_info(&pem);
    assert_eq!(
        info.ext("X509v3 Subject Alternative Name")
            .map(|e| e.value.as_str()),
        Some(format!("DNS:{NODE_NAME}, IP Address:127.0.0.1").as_str())
    );
    assert_eq!(
        info.ext("X509v3 Key Usage").map(|e| e.value.as_str()),
        Some("Digital Signature, Key Encipherment")
    );
    assert_eq!(
        info.ext("X509v3 Extended Key Usage")
            .map(|e| e.value.as_str()),
        Some("TLS Web Server Authentication")
    );
    // ttl 1h < 8h: notBefore now-5m, notAfter now+1h.
    assert_eq!(info.not_after - info.not_before, 3600 + 300);
    assert_verifies(&cp, "ca.crt", &pem, "sslserver");

    // 3. An API server client, expirationSeconds below the minimum: raised to 10 minutes.
    let alice = request("alice", "alice", &["dev"], vec![]);
    create(
        &cp,
        &cp.admin_conf,
        &alice,
        "kubernetes.io/kube-apiserver-client",
        &["digital signature", "client auth"],
        Some(600),
    );
    approve(&cp, "alice");
    let pem = signed(&wait_done(&cp, &serve, "alice"));
    let info = cert_info(&pem);
    assert_eq!(info.not_after - info.not_before, 600 + 300);
    let conf = client_kubeconfig(&cp, "alice", &pem, &alice.key_pem);
    let (user, groups) = whoami(&cp, &conf);
    assert_eq!(user, "alice");
    assert!(groups.iter().any(|g| g == "dev"), "{groups:?}");

    // 4. A custom signer on the etcd CA: etcd accepts the certificate.
    let backup = request("etcd-backup", "etcd-client:backup", &[], vec![]);
    create(
        &cp,
        &cp.admin_conf,
        &backup,
        "kubesign.dev/etcd-client",
        &["digital signature", "key encipherment", "client auth"],
        None,
    );
    approve(&cp, "etcd-backup");
    let pem = signed(&wait_done(&cp, &serve, "etcd-backup"));
    let info = cert_info(&pem);
    assert_eq!(info.issuer, "CN = etcd-ca");
    assert_eq!(info.not_after - info.not_before, 720 * 3600);
    let dir = scratch(&cp);
    write(&dir.join("backup.crt"), &pem);
    write(&dir.join("backup.key"), &backup.key_pem);
    cp.etcdctl_with(
        &dir.join("backup.crt"),
        &dir.join("backup.key"),
        &["endpoint", "health", "--command-timeout=5s"],
    )
    .ok();

    // 5. Invalid requests end Failed with kube-controller-manager's messages and an Event.
    let cases: Vec<(Request, &Path, &str, Vec<&str>, &str)> = vec![
        (
            request(
                "bad-serving-email",
                &node_user,
                &["system:nodes"],
                vec![
                    dns(NODE_NAME),
                    SanType::Rfc822Name("n@example.com".try_into().expect("email")),
                ],
            ),
            node.as_path(),
            "kubernetes.io/kubelet-serving",
            vec!["digital signature", "key encipherment", "server auth"],
            "Email subjectAltNames are not allowed",
        ),
        (
            request("bad-client-org", &node_user, &["system:admins"], vec![]),
            cp.admin_conf.as_path(),
            "kubernetes.io/kube-apiserver-client-kubelet",
            vec!["digital signature", "client auth"],
            "subject organization is not system:nodes",
        ),
        (
            request("bad-client-usage", "bob", &[], vec![]),
            cp.admin_conf.as_path(),
            "kubernetes.io/kube-apiserver-client",
            vec!["client auth", "server auth"],
            "invalid usage for client certificate: server auth",
        ),
        (
            request("bad-kubelet-usage", &node_user, &["system:nodes"], vec![]),
            node.as_path(),
            "kubernetes.io/kube-apiserver-client-kubelet",
            vec![
                "digital signature",
                "key encipherment",
                "client auth",
                "server auth",
            ],
            "usages did not match [client auth digital signature key encipherment]",
        ),
        (
            request("bad-etcd-cn", "root", &[], vec![]),
            cp.admin_conf.as_path(),
            "kubesign.dev/etcd-client",
            vec!["client auth"],
            "subject common name does not begin with etcd-client: followed by a name",
        ),
    ];
    for (r, who, signer, usages, _) in &cases {
        create(&cp, who, r, signer, usages, None);
        approve(&cp, &r.name);
    }
    for (r, _, _, _, message) in &cases {
        let csr = wait_done(&cp, &serve, &r.name);
        refused(&csr, message);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let events = warning_events(&cp, &r.name);
            if let Some(e) = events
                .iter()
                .find(|e| e["reason"] == "SignerValidationFailure")
            {
                assert_eq!(e["message"], *message);
                break;
            }
            assert!(Instant::now() < deadline, "no Warning event for {}", r.name);
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    // 6. Left alone: not approved, denied, another signer. Requests made after them are
    //    signed, so kubesign has seen them.
    let pending = request("pending", &node_user, &["system:nodes"], vec![]);
    create(
        &cp,
        &node,
        &pending,
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "client auth"],
        None,
    );
    let denied = request("denied", &node_user, &["system:nodes"], vec![]);
    create(
        &cp,
        &node,
        &denied,
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "client auth"],
        None,
    );
    cp.kubectl(&["certificate", "deny", "denied"]).ok();
    let other = request("other-signer", "x", &[], vec![]);
    create(
        &cp,
        &cp.admin_conf,
        &other,
        "example.com/other",
        &["client auth"],
        None,
    );
    approve(&cp, "other-signer");
    let marker = request("marker", "marker", &[], vec![]);
    create(
        &cp,
        &cp.admin_conf,
        &marker,
        "kubernetes.io/kube-apiserver-client",
        &["client auth"],
        None,
    );
    approve(&cp, "marker");
    let pem = signed(&wait_done(&cp, &serve, "marker"));
    // Only "client auth" asked for: no keyUsage bit (see the operator guide); the API server
    // authenticates the certificate all the same.
    let conf = client_kubeconfig(&cp, "marker", &pem, &marker.key_pem);
    assert_eq!(whoami(&cp, &conf).0, "marker");
    std::thread::sleep(Duration::from_secs(2));
    for name in ["pending", "denied", "other-signer"] {
        let csr = get_csr(&cp, name);
        assert!(certificate(&csr).is_none(), "{name}: {csr:#}");
        assert!(failed_condition(&csr).is_none(), "{name}: {csr:#}");
        assert!(warning_events(&cp, name).is_empty(), "{name}");
    }

    // 7. Metrics.
    let m = serve.metrics();
    for want in [
        "kubesign_serve_certificates_issued_total{signer=\"kubernetes.io/kube-apiserver-client-kubelet\"} 1",
        "kubesign_serve_certificates_issued_total{signer=\"kubernetes.io/kubelet-serving\"} 1",
        "kubesign_serve_certificates_issued_total{signer=\"kubernetes.io/kube-apiserver-client\"} 2",
        "kubesign_serve_certificates_issued_total{signer=\"kubesign.dev/etcd-client\"} 1",
        "kubesign_serve_failures_total{signer=\"kubernetes.io/kubelet-serving\",reason=\"SignerValidationFailure\"} 1",
        "kubesign_serve_signing_duration_seconds_count{backend=\"pkcs11\",ca=\"kubernetes\"}",
        "kubesign_serve_ready 1",
    ] {
        assert!(m.contains(want), "{want} not in\n{m}");
    }

    // 8. kube-controller-manager's csrapproving approves a bootstrap-token node's request
    //    (kubeadm's setup); kubesign signs it.
    cp.start_controller_manager(&ControllerManagerOptions::controllers(&[
        "csrapproving",
        "csrsigning",
    ]))
    .expect("kube-controller-manager");
    let bootstrap = "apiVersion: v1
kind: Secret
metadata: {name: bootstrap-token-abcdef, namespace: kube-system}
type: bootstrap.kubernetes.io/token
stringData:
  token-id: abcdef
  token-secret: 0123456789abcdef
  usage-bootstrap-authentication: \"true\"
  auth-extra-groups: system:bootstrappers:kubeadm:default-node-token
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: kubeadm:kubelet-bootstrap}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:node-bootstrapper}
subjects: [{kind: Group, apiGroup: rbac.authorization.k8s.io, name: system:bootstrappers:kubeadm:default-node-token}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: kubeadm:node-autoapprove-bootstrap}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:certificates.k8s.io:certificatesigningrequests:nodeclient}
subjects: [{kind: Group, apiGroup: rbac.authorization.k8s.io, name: system:bootstrappers:kubeadm:default-node-token}]
";
    cp.kubectl_stdin(
        &cp.admin_conf,
        &["apply", "-f", "-"],
        Some(bootstrap.as_bytes()),
    )
    .ok();
    let boot_conf = cp.root.join("bootstrap.conf");
    write(
        &boot_conf,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: cp\n  cluster:\n    server: {}\n    certificate-authority: {}\ncontexts:\n- name: b\n  context: {{cluster: cp, user: b}}\ncurrent-context: b\nusers:\n- name: b\n  user:\n    token: abcdef.0123456789abcdef\n",
            cp.api_url,
            cp.pki("ca.crt").display()
        ),
    );
    let n2 = request("node-n2", "system:node:n2", &["system:nodes"], vec![]);
    create(
        &cp,
        &boot_conf,
        &n2,
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "client auth"],
        None,
    );
    let csr = wait_done(&cp, &serve, "node-n2");
    let approved = csr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Approved" && c["reason"] == "AutoApproved");
    assert!(
        approved,
        "not auto-approved by kube-controller-manager: {csr:#}"
    );
    let pem = signed(&csr);
    let conf = client_kubeconfig(&cp, "node-n2", &pem, &n2.key_pem);
    let (user, groups) = whoami(&cp, &conf);
    assert_eq!(user, "system:node:n2");
    assert!(groups.iter().any(|g| g == "system:nodes"));
    cp.stop_controller_manager();

    // 9. SIGTERM: a clean exit, and the Lease is released for a standby.
    assert!(!lease_holder(&cp).is_empty());
    let status = serve.terminate();
    assert!(status.success(), "{status:?}\n{}", serve.log_text());
    assert_eq!(lease_holder(&cp), "", "the lease was not released");
    assert!(serve.log_text().contains("released the lease"));
}

/// Two replicas: only the leader signs; `kill -9` of the leader during a burst, then a restart:
/// every request ends with exactly one certificate, and each is in the audit log.
#[test]
fn two_replicas_one_leader_and_exactly_one_certificate_per_request() {
    let _one = one_at_a_time();
    let Some(cp) = start() else { return };
    let sa_conf = service_account_kubeconfig(&cp);
    let config = serve_config(&cp);
    let mut a = Serve::spawn(&cp, &config, &sa_conf, "kubesign-serve-a");
    let mut b = Serve::spawn(&cp, &config, &sa_conf, "kubesign-serve-b");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (leader, standby) = loop {
        match (a.is_leader(), b.is_leader()) {
            (true, false) => break (&mut a, &mut b),
            (false, true) => break (&mut b, &mut a),
            (true, true) => panic!("two leaders"),
            (false, false) => {}
        }
        assert!(Instant::now() < deadline, "no leader in 30 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let node = cp.local_kubeconfig("kubelet.conf");
    let node_user = format!("system:node:{NODE_NAME}");
    let usages = ["digital signature", "client auth"];
    let signer = "kubernetes.io/kube-apiserver-client-kubelet";

    // A first batch: signed by the leader only.
    let mut names = Vec::new();
    for i in 0..5 {
        let r = request(&format!("first-{i}"), &node_user, &["system:nodes"], vec![]);
        create(&cp, &node, &r, signer, &usages, None);
        approve(&cp, &r.name);
        names.push(r.name);
    }
    for n in &names {
        signed(&wait_done(&cp, leader, n));
    }
    assert!(
        !standby
            .metrics()
            .contains("kubesign_serve_certificates_issued_total{"),
        "the standby signed"
    );
    assert!(!standby.is_leader());

    // A burst, and the leader killed (SIGKILL) in the middle of it.
    let mut burst = Vec::new();
    for i in 0..20 {
        let r = request(&format!("burst-{i}"), &node_user, &["system:nodes"], vec![]);
        create(&cp, &node, &r, signer, &usages, None);
        burst.push(r.name);
    }
    for (i, n) in burst.iter().enumerate() {
        approve(&cp, n);
        if i == 8 {
            leader.kill9();
        }
    }
    // The standby takes over within leaseDuration (6 s) plus a retry, and signs the rest.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !standby.is_leader() {
        assert!(
            Instant::now() < deadline,
            "the standby never took over\n{}",
            standby.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The killed replica comes back (same configuration) and stands by.
    *leader = Serve::spawn(&cp, &config, &sa_conf, "kubesign-serve-a2");
    for n in burst.iter().chain(&names) {
        let csr = wait_done(&cp, standby, n);
        let pem = signed(&csr);
        let info = cert_info(&pem);
        // The certificate written is one kubesign recorded before releasing it.
        let audit = read_audit(&cp.audit_log);
        assert!(
            audit.iter().any(|r| r["certificate_sha256"] == info.sha256),
            "{n}: certificate not in the audit log"
        );
    }
    // Every audit record of a burst request that is not the written certificate was never
    // released: at most the requests in flight at the kill.
    let audit = read_audit(&cp.audit_log);
    let burst_records = audit
        .iter()
        .filter(|r| r["source"].as_str().unwrap_or_default().contains("/burst-"))
        .count();
    assert!(burst_records >= burst.len());
    assert!(
        burst_records <= burst.len() + 4,
        "{burst_records} records for {} requests",
        burst.len()
    );
}
