//! Proof on a real control plane (issue #5): real `kubeadm certs generate-csr` output signed by
//! kubesign with the CA keys in SoftHSM, served by a real etcd and a real kube-apiserver on
//! 127.0.0.1 (see `integration::control_plane`). Every identity kubeadm asks for must
//! authenticate as itself, every server certificate must verify for its clients, and a
//! certificate from the wrong CA must be refused: kubeadm's profiles, end to end.
//!
//! The tests run one at a time (each starts its own etcd and kube-apiserver; the machines have
//! two cores).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use integration::control_plane::{
    CaKeys, ControlPlane, ControlPlaneOptions, ControlPlaneTools, ControllerManagerOptions,
    NODE_NAME, SOFTHSM_MODULE, TOKEN_LABEL, exec,
};
use integration::{
    Kubeconfig, Output, cert_info, openssl, openssl_verify, pem_der, read, read_string, write,
};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn start(opts: ControlPlaneOptions) -> Option<ControlPlane> {
    let tools = ControlPlaneTools::find(&opts)?;
    Some(ControlPlane::start(&tools, opts).unwrap_or_else(|e| panic!("{e:?}")))
}

/// `kubectl auth whoami -o json` with `local/<conf>`: (username, groups).
#[track_caller]
fn whoami(cp: &ControlPlane, conf: &Path) -> (String, Vec<String>) {
    let out = cp.kubectl_with(conf, &["auth", "whoami", "-o", "json"]);
    out.ok();
    user_info(&out.json()["status"]["userInfo"], &out)
}

#[track_caller]
fn user_info(info: &serde_json::Value, out: &Output) -> (String, Vec<String>) {
    let name = info["username"]
        .as_str()
        .unwrap_or_else(|| panic!("no username\n{out:?}"))
        .to_owned();
    let groups = info["groups"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (name, groups)
}

#[track_caller]
fn assert_identity(cp: &ControlPlane, conf: &str, user: &str, group: Option<&str>) {
    let (name, groups) = whoami(cp, &cp.local_kubeconfig(conf));
    assert_eq!(name, user, "{conf} authenticates as the wrong user");
    if let Some(g) = group {
        assert!(
            groups.iter().any(|x| x == g),
            "{conf}: {user} is not in {g}: {groups:?}"
        );
    }
    assert!(
        groups.iter().any(|x| x == "system:authenticated"),
        "{conf}: {groups:?}"
    );
}

#[track_caller]
fn can_i(cp: &ControlPlane, conf: &str, args: &[&str]) -> bool {
    let mut a = vec!["auth", "can-i"];
    a.extend_from_slice(args);
    let out = cp.kubectl_as(conf, &a);
    match out.stdout.trim() {
        "yes" => true,
        "no" => false,
        _ => panic!("unexpected can-i answer\n{out:?}"),
    }
}

/// A copy of local/admin.conf whose client certificate and key are `cert`/`key`.
fn kubeconfig_with_client(cp: &ControlPlane, name: &str, cert: &Path, key: &Path) -> PathBuf {
    let mut kc = Kubeconfig::load(&cp.admin_conf);
    kc.set_user_data("client-certificate-data", &read(cert));
    kc.set_user_data("client-key-data", &read(key));
    let p = cp.root.join(name);
    kc.save(&p);
    p
}

fn serial_of(pem: &[u8]) -> String {
    cert_info(pem).serial
}

/// A SelfSubjectReview POSTed over openssl s_client with a client certificate and
/// front-proxy headers: the HTTP status code and the response body.
fn front_proxy_review(cp: &ControlPlane, client: &str) -> (u16, String, Output) {
    let body = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
    let request = format!(
        "POST /apis/authentication.k8s.io/v1/selfsubjectreviews HTTP/1.1\r\n\
         Host: 127.0.0.1:{port}\r\n\
         X-Remote-User: jane@front-proxy\r\n\
         X-Remote-Group: kubesign:front-proxied\r\n\
         Content-Type: application/json\r\n\
         Accept: application/json\r\n\
         Content-Length: {len}\r\n\
         Connection: close\r\n\r\n{body}",
        port = cp.apiserver_port,
        len = body.len(),
    );
    let out = ControlPlane::https_request(
        cp.apiserver_port,
        &cp.pki("ca.crt"),
        &cp.pki(&format!("{client}.crt")),
        &cp.pki(&format!("{client}.key")),
        &request,
    );
    let status = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line\n{out:?}"));
    // The JSON document in the body (robust against chunked transfer encoding).
    let body = match (out.stdout.find('{'), out.stdout.rfind('}')) {
        (Some(a), Some(b)) if a < b => out.stdout[a..=b].to_owned(),
        _ => String::new(),
    };
    (status, body, out)
}

/// The token's objects as OpenSC's pkcs11-tool (an independent PKCS#11 client) lists them.
fn token_objects(cp: &ControlPlane) -> Output {
    let conf = cp.softhsm_conf.as_ref().expect("SoftHSM control plane");
    let pin = std::fs::read_to_string(cp.pin_file.as_ref().expect("pin file")).expect("pin");
    exec(
        Path::new("pkcs11-tool"),
        &[
            "--module",
            SOFTHSM_MODULE,
            "--token-label",
            TOKEN_LABEL,
            "--login",
            "--pin",
            pin.trim(),
            "--list-objects",
        ],
        &[("SOFTHSM2_CONF", conf.as_os_str())],
        None,
        None,
    )
}

/// The test: ECDSA-P256 leaves, ECDSA-P256 CAs in SoftHSM. Every kubeadm identity and server
/// certificate does its job, and the wrong CA is refused everywhere.
#[test]
fn softhsm_cas_serve_a_real_control_plane() {
    let _one = one_at_a_time();
    let Some(cp) = start(ControlPlaneOptions::default()) else {
        return;
    };

    // The CA keys are in the token, nowhere on disk: external CA mode for kubeadm.
    for key in ["ca.key", "etcd/ca.key", "front-proxy-ca.key"] {
        assert!(
            !cp.pki(key).exists(),
            "{key} must not exist in the cert dir"
        );
    }
    let on_disk: Vec<_> = walk(&cp.ca_dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
        .collect();
    assert!(on_disk.is_empty(), "CA key files on disk: {on_disk:?}");
    let objects = token_objects(&cp);
    objects.ok();
    let blocks = object_blocks(&objects.stdout);
    for (label, ca) in [
        ("kubernetes-ca", "ca.crt"),
        ("etcd-ca", "etcd/ca.crt"),
        ("front-proxy-ca", "front-proxy-ca.crt"),
    ] {
        let with_label = |kind: &str| {
            blocks
                .iter()
                .find(|b| b.starts_with(kind) && b.contains(&format!("label:      {label}\n")))
                .unwrap_or_else(|| panic!("no {kind} {label} in the token\n{objects:?}"))
        };
        let private = with_label("Private Key Object");
        assert!(
            private.contains("sensitive, always sensitive, never extractable, local"),
            "{label} must be generated in the token and never extractable\n{private}"
        );
        // The CA certificate in the cert dir certifies the token's key: its EC point (the
        // last 65 bytes of the P-256 SubjectPublicKeyInfo) is the token's CKA_EC_POINT.
        let spki = pem_der(
            cert_info(&read(&cp.pki(ca))).public_key.as_bytes(),
            "PUBLIC KEY",
        );
        let point: String = spki[spki.len() - 65..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let public = with_label("Public Key Object");
        assert!(
            public.contains(&point),
            "{ca} does not certify the token's {label} key\n{public}"
        );
    }

    // kube-apiserver is ready and serves exactly the kubesign-issued apiserver.crt.
    cp.kubectl(&["get", "--raw", "/readyz"])
        .ok()
        .stdout_has(&["ok"]);
    let served = ControlPlane::served_certificate(cp.apiserver_port).expect("apiserver cert");
    assert_eq!(
        cert_info(served.as_bytes()).der,
        cert_info(&read(&cp.pki("apiserver.crt"))).der,
        "kube-apiserver does not serve pki/apiserver.crt"
    );

    // Every kubeconfig identity authenticates as kubeadm intends.
    assert_identity(
        &cp,
        "admin.conf",
        "kubernetes-admin",
        Some("kubeadm:cluster-admins"),
    );
    let ns = cp.kubectl(&["get", "namespaces", "-o", "name"]);
    ns.ok()
        .stdout_has(&["namespace/default", "namespace/kube-system"]);
    assert_identity(
        &cp,
        "super-admin.conf",
        "kubernetes-super-admin",
        Some("system:masters"),
    );
    assert!(can_i(&cp, "super-admin.conf", &["*", "*"]));
    assert_identity(&cp, "scheduler.conf", "system:kube-scheduler", None);
    assert!(can_i(
        &cp,
        "scheduler.conf",
        &["create", "pods", "--subresource=binding"]
    ));
    assert!(!can_i(&cp, "scheduler.conf", &["list", "secrets", "-A"]));
    assert_identity(
        &cp,
        "controller-manager.conf",
        "system:kube-controller-manager",
        None,
    );
    assert!(can_i(
        &cp,
        "controller-manager.conf",
        &[
            "create",
            "serviceaccounts",
            "--subresource=token",
            "-n",
            "kube-system"
        ]
    ));
    let node_user = format!("system:node:{NODE_NAME}");
    assert_identity(&cp, "kubelet.conf", &node_user, Some("system:nodes"));

    // The Node authorizer and NodeRestriction recognise the kubelet identity: it may register
    // its own Node object and no other.
    let kubelet = cp.local_kubeconfig("kubelet.conf");
    let node = |name: &str| {
        format!("{{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{{\"name\":\"{name}\"}}}}")
    };
    cp.kubectl_stdin(
        &kubelet,
        &["create", "-f", "-"],
        Some(node(NODE_NAME).as_bytes()),
    )
    .ok();
    let other = cp.kubectl_stdin(
        &kubelet,
        &["create", "-f", "-"],
        Some(node("some-other-node").as_bytes()),
    );
    assert_ne!(other.code, Some(0), "{other:?}");
    assert!(other.stderr.contains("Forbidden"), "{other:?}");

    // The front proxy: front-proxy-client (front-proxy CA, CN in --requestheader-allowed-names)
    // may assert a user; a client certificate from the Kubernetes CA may not (its headers are
    // ignored and it is authenticated as itself).
    let (status, body, out) = front_proxy_review(&cp, "front-proxy-client");
    assert_eq!(status, 201, "{out:?}");
    let review: serde_json::Value = serde_json::from_str(&body).expect("JSON review");
    let (user, groups) = user_info(&review["status"]["userInfo"], &out);
    assert_eq!(user, "jane@front-proxy", "{out:?}");
    assert!(
        groups.contains(&"kubesign:front-proxied".to_owned()),
        "{out:?}"
    );
    let (status, body, out) = front_proxy_review(&cp, "apiserver-kubelet-client");
    assert_eq!(status, 201, "{out:?}");
    let review: serde_json::Value = serde_json::from_str(&body).expect("JSON review");
    let (user, _) = user_info(&review["status"]["userInfo"], &out);
    assert_eq!(user, "kube-apiserver-kubelet-client", "{out:?}");

    // The apiserver refuses a client certificate from the etcd CA.
    let wrong = kubeconfig_with_client(
        &cp,
        "etcd-client.conf",
        &cp.pki("etcd/healthcheck-client.crt"),
        &cp.pki("etcd/healthcheck-client.key"),
    );
    let out = cp.kubectl_with(&wrong, &["auth", "whoami"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("Unauthorized"), "{out:?}");

    // etcd: both etcd-CA client certificates are accepted (etcdctl verifies etcd/server.crt for
    // 127.0.0.1 against etcd/ca.crt), the apiserver's data is there, and a client certificate
    // from another CA is refused in the TLS handshake.
    for client in ["apiserver-etcd-client", "etcd/healthcheck-client"] {
        cp.etcdctl(client, &["endpoint", "health"])
            .ok()
            .stdout_has(&["is healthy"]);
    }
    cp.etcdctl(
        "etcd/healthcheck-client",
        &["get", "/registry/namespaces/kube-system", "--keys-only"],
    )
    .ok()
    .stdout_has(&["/registry/namespaces/kube-system"]);
    // (The client sees "unknown certificate authority" or, when the TLS 1.3 alert races its
    // first write, "broken pipe": etcd's log says why.)
    let rejections = || {
        read_string(&cp.log_file("etcd"))
            .lines()
            .filter(|l| {
                l.contains("rejected connection on client endpoint")
                    && l.contains("x509: certificate signed by unknown authority")
            })
            .count()
    };
    let before = rejections();
    let refused = cp.etcdctl(
        "front-proxy-client",
        &["endpoint", "health", "--command-timeout=3s"],
    );
    assert_ne!(refused.code, Some(0), "{refused:?}");
    assert!(
        rejections() > before,
        "etcd did not log the rejected client certificate\n{refused:?}"
    );
    let served = ControlPlane::served_certificate(cp.etcd_client_port).expect("etcd cert");
    assert_eq!(
        cert_info(served.as_bytes()).der,
        cert_info(&read(&cp.pki("etcd/server.crt"))).der
    );

    // etcd's peer port serves etcd/peer.crt (verified for 127.0.0.1 against etcd/ca.crt) and
    // takes etcd/peer.crt as a client certificate.
    let peer = ControlPlane::https_request(
        cp.etcd_peer_port,
        &cp.pki("etcd/ca.crt"),
        &cp.pki("etcd/peer.crt"),
        &cp.pki("etcd/peer.key"),
        &format!(
            "GET /version HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            cp.etcd_peer_port
        ),
    );
    peer.ok().stdout_has(&["HTTP/1.1 200", "etcdserver"]);
    let served = ControlPlane::served_certificate(cp.etcd_peer_port).expect("etcd peer cert");
    assert_eq!(
        cert_info(served.as_bytes()).der,
        cert_info(&read(&cp.pki("etcd/peer.crt"))).der
    );
}

/// `kubesign renew` while the control plane runs (RSA-2048 leaves and CAs in SoftHSM): after a
/// restart kube-apiserver serves the renewed certificate (same key, new serial) and clients,
/// which verify it against ca.crt, still work; a renewed admin.conf works without a restart.
#[test]
fn renewed_apiserver_certificate_is_served_after_restart() {
    let _one = one_at_a_time();
    let Some(mut cp) = start(ControlPlaneOptions {
        leaf_algorithm: "RSA-2048",
        ca_algorithm: "RSA-2048",
        ca_keys: CaKeys::SoftHsm,
    }) else {
        return;
    };
    let crt = cp.pki("apiserver.crt");
    let before = cert_info(&read(&crt));
    let served = ControlPlane::served_certificate(cp.apiserver_port).expect("served");
    assert_eq!(serial_of(served.as_bytes()), before.serial);
    assert!(
        before.signature_algorithm().contains("RSA"),
        "{}",
        before.text
    );

    let out = cp.kubesign_dirs("renew", &["apiserver"]);
    out.ok();
    let after = cert_info(&read(&crt));
    assert_ne!(
        after.serial, before.serial,
        "renew did not change the serial"
    );
    assert_eq!(
        after.public_key, before.public_key,
        "renew must keep the key"
    );
    assert_eq!(after.subject, before.subject);
    assert_eq!(
        after.ext("X509v3 Subject Alternative Name"),
        before.ext("X509v3 Subject Alternative Name")
    );
    openssl_verify(&cp.pki("ca.crt"), &read(&crt), "sslserver", &cp.root).ok();

    let old_pid = cp.apiserver_pid();
    let t = Instant::now();
    cp.restart_apiserver().unwrap_or_else(|e| panic!("{e:?}"));
    eprintln!(
        "kube-apiserver restarted in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert_ne!(cp.apiserver_pid(), old_pid);
    let served = ControlPlane::served_certificate(cp.apiserver_port).expect("served");
    assert_eq!(
        serial_of(served.as_bytes()),
        after.serial,
        "kube-apiserver does not serve the renewed certificate"
    );
    assert_identity(
        &cp,
        "admin.conf",
        "kubernetes-admin",
        Some("kubeadm:cluster-admins"),
    );
    cp.kubectl(&["get", "namespaces"]).ok();

    // A renewed client certificate works at once: the apiserver trusts ca.crt, not a serial.
    let admin = cp.kubeconfig_dir.join("admin.conf");
    let old_admin = Kubeconfig::load(&admin)
        .user_data("client-certificate-data")
        .expect("admin cert");
    cp.kubesign_dirs("renew", &["admin.conf"]).ok();
    let new_admin = Kubeconfig::load(&admin)
        .user_data("client-certificate-data")
        .expect("admin cert");
    assert_ne!(serial_of(&old_admin), serial_of(&new_admin));
    cp.refresh_local_kubeconfigs().expect("local kubeconfigs");
    assert_identity(
        &cp,
        "admin.conf",
        "kubernetes-admin",
        Some("kubeadm:cluster-admins"),
    );
}

/// The harness's kube-controller-manager: CA keys in files, kcm's own csrsigning controller
/// with the Kubernetes CA key file (what kubeadm does without an external CA). A
/// kube-apiserver-client CSR is approved and signed, and the certificate authenticates.
#[test]
fn controller_manager_signs_with_a_file_ca_key() {
    let _one = one_at_a_time();
    let opts = ControlPlaneOptions {
        ca_keys: CaKeys::File,
        ..ControlPlaneOptions::default()
    };
    let Some(tools) = ControlPlaneTools::find(&opts) else {
        return;
    };
    if tools.require_controller_manager().is_none() {
        return;
    }
    let mut cp = ControlPlane::start(&tools, opts).unwrap_or_else(|e| panic!("{e:?}"));
    let ca_key = cp.ca_key_file("kubernetes-ca");
    assert!(ca_key.is_file(), "{} missing", ca_key.display());
    let ca_crt = cp.pki("ca.crt");
    cp.start_controller_manager(&ControllerManagerOptions {
        signing: Some((ca_crt.clone(), ca_key)),
        ..ControllerManagerOptions::controllers(&["csrsigning"])
    })
    .unwrap_or_else(|e| panic!("{e:?}"));

    let key = cp.root.join("jane.key");
    let csr = cp.root.join("jane.csr");
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/O=kubesign:testers/CN=jane",
        "-keyout",
        &key.display().to_string(),
        "-out",
        &csr.display().to_string(),
    ])
    .ok();
    let object = serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": "jane"},
        "spec": {
            "request": STANDARD.encode(read(&csr)),
            "signerName": "kubernetes.io/kube-apiserver-client",
            "expirationSeconds": 3600,
            "usages": ["digital signature", "client auth"],
        }
    });
    cp.kubectl_stdin(
        &cp.admin_conf,
        &["create", "-f", "-"],
        Some(object.to_string().as_bytes()),
    )
    .ok();
    cp.kubectl(&["certificate", "approve", "jane"]).ok();
    let deadline = Instant::now() + Duration::from_secs(60);
    let issued = loop {
        let out = cp.kubectl(&["get", "csr", "jane", "-o", "jsonpath={.status.certificate}"]);
        out.ok();
        if !out.stdout.trim().is_empty() {
            break STANDARD
                .decode(out.stdout.trim())
                .expect("status.certificate is base64");
        }
        assert!(
            Instant::now() < deadline,
            "kube-controller-manager did not sign the CSR in 60 s\n{}",
            cp.log_tails()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    openssl_verify(&ca_crt, &issued, "sslclient", &cp.root).ok();
    let crt = cp.root.join("jane.crt");
    write(&crt, &issued);
    let jane = kubeconfig_with_client(&cp, "jane.conf", &crt, &key);
    let (user, groups) = whoami(&cp, &jane);
    assert_eq!(user, "jane");
    assert!(
        groups.contains(&"kubesign:testers".to_owned()),
        "{groups:?}"
    );
}

/// pkcs11-tool --list-objects output, one block per object.
fn object_blocks(text: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    for line in text.lines() {
        if !line.starts_with(' ') || blocks.is_empty() {
            blocks.push(String::new());
        }
        if let Some(b) = blocks.last_mut() {
            b.push_str(line);
            b.push('\n');
        }
    }
    blocks
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
