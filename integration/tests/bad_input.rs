//! Bad input to `kubesign sign`: every case starts from real kubeadm output
//! (`examples/kubeadm-csr`) with file CAs initialised, breaks one thing, and asserts exit code 1,
//! an error that names the offending file and says what was expected, and that the certificate
//! directory, the kubeconfig directory, the CA directory and the audit log are byte-for-byte as
//! before (names included, so no temporary file may be left behind).

use std::path::{Path, PathBuf};

use integration::{
    Cluster, Kubeconfig, LEAVES, Leaf, Output, cert_info, csr_info, kubesign_bin,
    leftover_temp_files, openssl, openssl_bin, openssl_verify, pem_der, pem_encode, read,
    read_string, symlink, write,
};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

const CAS: integration::CaAlgorithms = ["ECDSA-P256", "ECDSA-P256", "ECDSA-P256"];

/// A copy of the committed kubeadm output with file CAs initialised, or `None` (skipped).
fn fixture() -> Option<Cluster> {
    let kubesign = kubesign_bin()?;
    openssl_bin()?;
    let c = Cluster::from_example(&kubesign);
    c.write_config(CAS, false);
    c.ca_init();
    Some(c)
}

fn d(p: &Path) -> String {
    p.display().to_string()
}

/// Runs `kubesign sign` (plus `extra`) on `c` with configuration `config` and asserts: exit code
/// 1, every needle on standard error, nothing on standard output, nothing changed anywhere.
#[track_caller]
fn rejected_with(c: &Cluster, config: &Path, extra: &[&str], needles: &[&str]) -> Output {
    let before = c.snapshot();
    let mut args = vec![
        "sign".to_owned(),
        "-c".into(),
        d(config),
        "--cert-dir".into(),
        d(&c.pki),
        "--kubeconfig-dir".into(),
        d(&c.kc),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = c.ks(&args);
    eprintln!("{out:?}");
    out.code(1).stderr_has(needles);
    assert!(
        out.stdout.trim().is_empty(),
        "a rejected run printed results\n{out:?}"
    );
    before.assert_same(
        &c.snapshot(),
        &format!("rejected `kubesign sign` (stderr: {})", out.stderr.trim()),
    );
    assert!(
        leftover_temp_files(&c.root).is_empty(),
        "temporary files left: {:?}",
        leftover_temp_files(&c.root)
    );
    out
}

/// [`rejected_with`] with the fixture's configuration; also requires "nothing was signed".
#[track_caller]
fn rejected(c: &Cluster, needles: &[&str]) -> Output {
    let out = rejected_with(c, &c.config, &[], needles);
    out.stderr_has(&["nothing was signed"]);
    out
}

/// A fresh P-256 key and a CSR for `cn`/`orgs` made with rcgen, after `customize`.
fn rcgen_request(
    cn: &str,
    orgs: &[&str],
    customize: impl FnOnce(&mut CertificateParams),
) -> (String, String) {
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generating a P-256 key");
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    customize(&mut params);
    let csr = params
        .serialize_request(&key)
        .expect("serializing the CSR")
        .pem()
        .expect("PEM");
    (key.serialize_pem(), csr)
}

/// Replaces `<pki>/<name>.key` and `.csr` with a crafted pair (the CSR made with that key).
fn replace_pair(c: &Cluster, name: &str, key_pem: &str, csr_pem: &str) {
    write(&c.pki.join(format!("{name}.key")), key_pem);
    write(&c.pki.join(format!("{name}.csr")), csr_pem);
}

/// Writes the kubeconfig's client-key-data to a scratch file and returns its path.
fn kubeconfig_key_file(c: &Cluster, conf: &str) -> PathBuf {
    let key = Kubeconfig::load(&c.kc.join(conf))
        .user_data("client-key-data")
        .expect("client-key-data");
    let p = c.scratch.join(format!("{conf}.key"));
    write(&p, key);
    p
}

#[test]
fn malformed_pem_in_a_csr() {
    let cases: [(&str, &[u8], &str); 5] = [
        (
            "apiserver.csr",
            b"-----BEGIN CERTIFICATE REQUEST-----\n!!!! this is not base64 !!!!\n-----END CERTIFICATE REQUEST-----\n",
            "not a valid PEM certificate request",
        ),
        ("apiserver-etcd-client.csr", b"-----BEGIN CERTIFICATE REQUEST-----\nMIIBIjAN\n", "no matching -----END CERTIFICATE REQUEST----- line"),
        ("etcd/peer.csr", b"", "not a PKCS#10 certificate request"),
        ("front-proxy-client.csr", b"hello, I am not a CSR\n", "not a PKCS#10 certificate request"),
        (
            "etcd/server.csr",
            b"-----BEGIN CERTIFICATE-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END CERTIFICATE-----\n",
            "expected \"CERTIFICATE REQUEST\"",
        ),
    ];
    for (file, contents, expected) in cases {
        let Some(c) = fixture() else { return };
        write(&c.pki.join(file), contents);
        rejected(&c, &[&d(&c.pki.join(file)), expected]);
    }
}

#[test]
fn csr_whose_signature_does_not_verify() {
    let Some(c) = fixture() else { return };
    let path = c.pki.join("apiserver-etcd-client.csr");
    let mut der = pem_der(&read(&path), "CERTIFICATE REQUEST");
    let at = der
        .windows(b"kube-apiserver-etcd-client".len())
        .position(|w| w == b"kube-apiserver-etcd-client")
        .expect("CN in the DER");
    der[at] = b'K';
    write(&path, pem_encode("CERTIFICATE REQUEST", &der));
    // openssl agrees the request is well-formed but its signature is wrong.
    let v = integration::openssl_stdin(&["req", "-noout", "-verify"], &read(&path));
    assert!(
        v.code != Some(0) || v.stderr.contains("verify failure"),
        "openssl accepted the altered CSR\n{v:?}"
    );
    rejected(
        &c,
        &[
            &d(&path),
            "signature does not verify with its own public key",
            "proof of possession failed",
        ],
    );
}

#[test]
fn csr_asking_to_be_a_ca() {
    let Some(c) = fixture() else { return };
    let (key, csr) = rcgen_request("front-proxy-client", &[], |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
    });
    assert!(
        csr_info(csr.as_bytes()).text.contains("CA:TRUE"),
        "the crafted CSR must request CA:TRUE"
    );
    replace_pair(&c, "front-proxy-client", &key, &csr);
    rejected(
        &c,
        &[
            &d(&c.pki.join("front-proxy-client.csr")),
            "basicConstraints CA:TRUE",
            "never CAs",
        ],
    );
}

#[test]
fn csr_with_an_extra_extension() {
    // (kubeadm name, CN, O, what to add to the request, the OID kubesign must name)
    type Case = (
        &'static str,
        &'static str,
        &'static [&'static str],
        Box<dyn FnOnce(&mut CertificateParams)>,
        &'static str,
    );
    let cases: [Case; 3] = [
        (
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            &["kubeadm:cluster-admins"],
            Box::new(|p: &mut CertificateParams| {
                p.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyCertSign,
                ]
            }),
            "2.5.29.15",
        ),
        (
            "etcd/healthcheck-client",
            "kube-etcd-healthcheck-client",
            &[],
            Box::new(|p: &mut CertificateParams| {
                p.custom_extensions = vec![CustomExtension::from_oid_content(
                    &[1, 3, 6, 1, 4, 1, 99999, 1],
                    vec![0x04, 0x02, 0x68, 0x69],
                )]
            }),
            "1.3.6.1.4.1.99999.1",
        ),
        (
            "apiserver",
            "kube-apiserver",
            &[],
            Box::new(|p: &mut CertificateParams| {
                p.subject_alt_names =
                    vec![SanType::DnsName("kubernetes".try_into().expect("DNS name"))];
                p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
            }),
            "2.5.29.37",
        ),
    ];
    for (name, cn, orgs, customize, oid) in cases {
        let Some(c) = fixture() else { return };
        let (key, csr) = rcgen_request(cn, orgs, customize);
        replace_pair(&c, name, &key, &csr);
        rejected(
            &c,
            &[
                &d(&c.pki.join(format!("{name}.csr"))),
                &format!("asks for extension {oid}"),
                "a kubeadm CSR carries only subjectAltName",
            ],
        );
    }
}

#[test]
fn rsa_1024_key() {
    let Some(c) = fixture() else { return };
    let (key, csr) = (
        c.pki.join("apiserver-etcd-client.key"),
        c.pki.join("apiserver-etcd-client.csr"),
    );
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:1024",
        "-nodes",
        "-keyout",
        &d(&key),
        "-out",
        &d(&csr),
        "-subj",
        "/CN=kube-apiserver-etcd-client",
    ])
    .ok();
    assert!(
        csr_info(&read(&csr))
            .text
            .contains("Public-Key: (1024 bit)")
    );
    rejected(
        &c,
        &[
            &d(&csr),
            "RSA key of 1024 bits is too small",
            "at least 2048 bits",
        ],
    );
}

#[test]
fn unknown_csr_file_names() {
    let cases = [
        (
            "pki/foo.csr",
            "unknown CSR file name \"foo\"",
            "apiserver, apiserver-kubelet-client, front-proxy-client",
        ),
        (
            "pki/etcd/ca.csr",
            "unknown CSR file name \"etcd/ca\"",
            "etcd/server, etcd/peer, etcd/healthcheck-client",
        ),
        (
            "kubeconfig/root.conf.csr",
            "unknown kubeconfig CSR file name",
            "admin.conf, super-admin.conf, kubelet.conf",
        ),
    ];
    for (file, problem, known) in cases {
        let Some(c) = fixture() else { return };
        let path = c.root.join(file);
        write(&path, read(&c.pki.join("apiserver.csr")));
        rejected_with(&c, &c.config, &[], &[&d(&path), problem, known]);
    }
}

#[test]
fn symlinks_are_refused() {
    // A symlinked CSR, key, kubeconfig, and a symlink where the certificate would be written.
    let cases = [
        "pki/apiserver.csr",
        "pki/apiserver.key",
        "kubeconfig/admin.conf",
        "pki/apiserver.crt",
    ];
    for file in cases {
        let Some(c) = fixture() else { return };
        let link = c.root.join(file);
        let target = c.scratch.join("elsewhere");
        if link.exists() {
            std::fs::rename(&link, &target).expect("moving the file away");
        } else {
            write(
                &target,
                b"the certificate must not be written through a symlink\n",
            );
        }
        symlink(&target, &link);
        let target_before = read(&target);
        rejected_with(&c, &c.config, &[], &[&d(&link), "is a symlink"]);
        assert_eq!(
            read(&target),
            target_before,
            "{file}: the symlink target changed"
        );
    }
}

#[test]
fn existing_certificates_need_force() {
    let Some(c) = fixture() else { return };
    // A certificate that is already there (here: someone else's).
    let crt = c.pki.join("apiserver.crt");
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &d(&c.pki.join("apiserver.key")),
        "-subj",
        "/CN=kube-apiserver",
        "-days",
        "1",
        "-out",
        &d(&crt),
    ])
    .ok();
    rejected(
        &c,
        &[
            &d(&crt),
            "already exists",
            "refusing to overwrite",
            "--force",
        ],
    );

    // --force replaces it with a kubesign certificate.
    c.ks_dirs(&["sign"], &["--force"]).ok();
    openssl_verify(&c.pki.join("ca.crt"), &read(&crt), "sslserver", &c.scratch).ok();
    c.check(false).ok();

    // Signing again: every certificate and kubeconfig is reported at once.
    let mut needles: Vec<String> = LEAVES
        .iter()
        .map(|l| {
            if l.kubeconfig {
                d(&c.kc.join(l.name))
            } else {
                d(&c.pki.join(format!("{}.crt", l.name)))
            }
        })
        .collect();
    needles.push("client-certificate-data is already set".into());
    needles.push("already exists; refusing to overwrite it".into());
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    rejected(&c, &needles);

    // --force re-signs all of them with new serials.
    let old: Vec<String> = LEAVES
        .iter()
        .map(|l| cert_info(&c.leaf_cert_pem(l)).serial)
        .collect();
    c.ks_dirs(&["sign"], &["--force"]).ok();
    let new: Vec<String> = LEAVES
        .iter()
        .map(|l| cert_info(&c.leaf_cert_pem(l)).serial)
        .collect();
    for ((l, o), n) in LEAVES.iter().zip(&old).zip(&new) {
        assert_ne!(o, n, "{}: --force did not re-sign", l.name);
    }
    c.check(false).ok();
}

#[test]
fn ca_key_that_does_not_match_its_certificate() {
    let Some(c) = fixture() else { return };
    let (a, b) = (c.cas.join("ca.key"), c.cas.join("front-proxy-ca.key"));
    let (ka, kb) = (read(&a), read(&b));
    write(&a, &kb);
    write(&b, &ka);
    rejected_with(
        &c,
        &c.config,
        &[],
        &[
            &d(&a),
            &d(&c.cas.join("ca.crt")),
            "kubernetes CA",
            "does not belong to the CA certificate",
        ],
    );
    // `ca init` refuses the pair as well and changes nothing.
    let before = c.snapshot();
    c.ks(&["ca", "init", "-c", &d(&c.config)])
        .code(1)
        .stderr_has(&["does not belong to the CA certificate"]);
    before.assert_same(&c.snapshot(), "ca init with a mismatched key");
}

/// Each cause is printed once. Today several errors print their cause twice, e.g. `...: RSA key
/// of 1024 bits is too small: ...: RSA key of 1024 bits is too small: ...`: the error types
/// format their source into their own message *and* return it from `source()`, and the CLI
/// prints the whole chain (`{e:#}`).
#[test]
fn error_causes_are_not_repeated() {
    let mut repeated = Vec::new();
    let mut check = |out: &Output, phrase: &str| {
        if out.stderr.matches(phrase).count() != 1 {
            repeated.push(format!(
                "{phrase:?} appears {} times in: {}",
                out.stderr.matches(phrase).count(),
                out.stderr.trim()
            ));
        }
    };
    // Malformed PEM.
    let Some(c) = fixture() else { return };
    write(
        &c.pki.join("apiserver.csr"),
        b"-----BEGIN CERTIFICATE REQUEST-----\n%%%%\n-----END CERTIFICATE REQUEST-----\n",
    );
    check(&rejected(&c, &["apiserver.csr"]), "invalid Base64 encoding");
    // A key below the policy.
    let Some(c) = fixture() else { return };
    let (key, csr) = (
        c.pki.join("apiserver-etcd-client.key"),
        c.pki.join("apiserver-etcd-client.csr"),
    );
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:1024",
        "-nodes",
        "-keyout",
        &d(&key),
        "-out",
        &d(&csr),
        "-subj",
        "/CN=kube-apiserver-etcd-client",
    ])
    .ok();
    check(
        &rejected(&c, &["apiserver-etcd-client.csr"]),
        "is too small",
    );
    // A CA key that is not the CA certificate's.
    let Some(c) = fixture() else { return };
    let (a, b) = (c.cas.join("etcd-ca.key"), c.cas.join("front-proxy-ca.key"));
    let (ka, kb) = (read(&a), read(&b));
    write(&a, &kb);
    write(&b, &ka);
    check(
        &rejected_with(&c, &c.config, &[], &["etcd-ca.key"]),
        "does not belong to the CA certificate",
    );
    // An audit log in a directory that does not exist.
    let Some(c) = fixture() else { return };
    let config = c.scratch.join("kubesign.yaml");
    write(
        &config,
        read_string(&c.config).replace(&d(&c.audit), &d(&c.scratch.join("nope/audit.jsonl"))),
    );
    check(
        &rejected_with(&c, &config, &[], &["nope/audit.jsonl"]),
        "No such file or directory",
    );
    assert!(
        repeated.is_empty(),
        "repeated causes:\n  {}",
        repeated.join("\n  ")
    );
}

#[test]
fn audit_log_that_cannot_be_written() {
    let Some(c) = fixture() else { return };
    let audit_dir = c.scratch.join("audit-is-a-directory");
    std::fs::create_dir_all(&audit_dir).expect("mkdir");
    let audit_link = c.scratch.join("audit-link.jsonl");
    symlink(&c.audit, &audit_link);
    let cases = [
        (
            c.scratch.join("no-such-dir/audit.jsonl"),
            "cannot open the audit log for appending",
        ),
        (audit_dir.clone(), "the audit log is not a regular file"),
        (audit_link.clone(), "the audit log is not a regular file"),
    ];
    let config_text = read_string(&c.config);
    for (i, (audit, expected)) in cases.iter().enumerate() {
        let config = c.scratch.join(format!("kubesign-{i}.yaml"));
        let audit_line = format!("  path: {}\n", d(&c.audit));
        assert!(config_text.contains(&audit_line));
        write(
            &config,
            config_text.replace(&audit_line, &format!("  path: {}\n", d(audit))),
        );
        let out = rejected_with(
            &c,
            &config,
            &[],
            &[&d(audit), expected, "nothing was signed"],
        );
        assert!(!out.stderr.contains("signed 12"), "{out:?}");
        for leaf in LEAVES.iter().filter(|l| !l.kubeconfig) {
            assert!(
                !c.leaf_file(leaf).exists(),
                "{} written although the audit log is unusable",
                leaf.name
            );
        }
        for leaf in LEAVES.iter().filter(|l| l.kubeconfig) {
            assert!(
                !Kubeconfig::load(&c.leaf_file(leaf)).user_has("client-certificate-data"),
                "{} signed",
                leaf.name
            );
        }
        assert!(
            !c.scratch.join("no-such-dir").exists(),
            "kubesign created the audit log's directory"
        );
        assert_eq!(
            std::fs::read_dir(&audit_dir)
                .map(|d| d.count())
                .unwrap_or(1),
            0,
            "something was written into {}",
            d(&audit_dir)
        );
    }
}

#[test]
fn csr_key_that_does_not_match_the_private_key() {
    // A cert-dir key replaced by another key of the same type.
    let Some(c) = fixture() else { return };
    let key = c.pki.join("apiserver-etcd-client.key");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &d(&key),
    ])
    .ok();
    rejected(
        &c,
        &[
            &d(&c.pki.join("apiserver-etcd-client.csr")),
            "public key does not match",
            &d(&key),
        ],
    );

    // A kubeconfig whose client-key-data is another key.
    let Some(c) = fixture() else { return };
    let other = c.scratch.join("other.key");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &d(&other),
    ])
    .ok();
    let conf = c.kc.join("admin.conf");
    let mut k = Kubeconfig::load(&conf);
    k.set_user_data("client-key-data", &read(&other));
    k.save(&conf);
    rejected(
        &c,
        &[
            &d(&c.kc.join("admin.conf.csr")),
            "public key does not match",
            &d(&conf),
        ],
    );
}

#[test]
fn csr_with_a_subject_or_sans_kubeadm_would_not_ask_for() {
    struct Case {
        file: &'static str,
        key: &'static str,
        subj: &'static str,
        san: Option<&'static str>,
        expected: &'static [&'static str],
    }
    let cases = [
        Case {
            file: "pki/apiserver.csr",
            key: "pki/apiserver.key",
            subj: "/CN=foo",
            san: Some("DNS:kubernetes"),
            expected: &["subject CN is \"foo\"", "\"kube-apiserver\""],
        },
        Case {
            file: "pki/apiserver.csr",
            key: "pki/apiserver.key",
            subj: "/CN=kube-apiserver",
            san: Some("DNS:kubernetes,email:root@example.com"),
            expected: &["email:root@example.com", "only DNS names and IP addresses"],
        },
        Case {
            file: "pki/etcd/peer.csr",
            key: "pki/etcd/peer.key",
            subj: "/CN=node-1",
            san: Some("DNS:node-1,URI:spiffe://cluster.local/ns/kube-system/sa/admin"),
            expected: &[
                "URI:spiffe://cluster.local/ns/kube-system/sa/admin",
                "only DNS names and IP addresses",
            ],
        },
        Case {
            file: "kubeconfig/admin.conf.csr",
            key: "admin.conf",
            subj: "/O=system:nodes/CN=kubernetes-admin",
            san: None,
            expected: &[
                "subject O is [\"system:nodes\"]",
                "O=kubeadm:cluster-admins or O=system:masters",
            ],
        },
        Case {
            file: "kubeconfig/kubelet.conf.csr",
            key: "kubelet.conf",
            subj: "/O=system:nodes/CN=system:node:",
            san: None,
            expected: &["expected system:node:<node name>"],
        },
        Case {
            file: "pki/etcd/server.csr",
            key: "pki/etcd/server.key",
            subj: "/CN=node-1",
            san: None,
            expected: &["needs subject alternative names"],
        },
        Case {
            file: "kubeconfig/super-admin.conf.csr",
            key: "super-admin.conf",
            subj: "/O=kubeadm:cluster-admins/CN=kubernetes-super-admin",
            san: None,
            expected: &["O=system:masters"],
        },
    ];
    for case in cases {
        let Some(c) = fixture() else { return };
        let key = if case.key.ends_with(".conf") {
            kubeconfig_key_file(&c, case.key)
        } else {
            c.root.join(case.key)
        };
        let csr = c.root.join(case.file);
        let mut args = vec![
            "req".to_owned(),
            "-new".into(),
            "-key".into(),
            d(&key),
            "-subj".into(),
            case.subj.into(),
            "-out".into(),
            d(&csr),
        ];
        if let Some(san) = case.san {
            args.extend(["-addext".into(), format!("subjectAltName={san}")]);
        }
        openssl(&args).ok();
        let mut needles = vec![d(&csr)];
        needles.extend(case.expected.iter().map(|s| s.to_string()));
        rejected(&c, &needles.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

#[test]
fn expired_ca_certificate() {
    let Some(c) = fixture() else { return };
    // The same CA key, but its certificate expired yesterday.
    let crt = c.cas.join("ca.crt");
    let (csr, ext) = (c.scratch.join("ca.csr"), c.scratch.join("ca.ext"));
    openssl(&[
        "req",
        "-new",
        "-key",
        &d(&c.cas.join("ca.key")),
        "-subj",
        "/CN=kubernetes",
        "-out",
        &d(&csr),
    ])
    .ok();
    write(
        &ext,
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,digitalSignature,keyEncipherment,keyCertSign\n",
    );
    std::fs::remove_file(&crt).expect("removing the CA certificate");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &d(&csr),
        "-key",
        &d(&c.cas.join("ca.key")),
        "-days",
        "-1",
        "-extfile",
        &d(&ext),
        "-out",
        &d(&crt),
    ])
    .ok();
    assert!(
        openssl(&["x509", "-in", &d(&crt), "-noout", "-checkend", "0"]).code == Some(1),
        "the CA certificate must be expired"
    );
    rejected_with(&c, &c.config, &[], &[&d(&crt), "expired"]);
}

#[test]
fn kubeconfig_with_a_client_certificate_already() {
    let Some(c) = fixture() else { return };
    let conf = c.kc.join("scheduler.conf");
    let mut k = Kubeconfig::load(&conf);
    k.set_user_data("client-certificate-data", &read(&c.cas.join("ca.crt")));
    k.save(&conf);
    rejected(
        &c,
        &[
            &d(&conf),
            "client-certificate-data is already set",
            "refusing to overwrite it",
            "--force",
        ],
    );
}

/// Several problems in different CSRs and targets: all reported by one run.
#[test]
fn several_problems_reported_at_once() {
    let Some(c) = fixture() else { return };
    write(
        &c.pki.join("apiserver.csr"),
        b"-----BEGIN CERTIFICATE REQUEST-----\n%%%%\n-----END CERTIFICATE REQUEST-----\n",
    );
    let fp = c.pki.join("front-proxy-client");
    openssl(&[
        "req",
        "-new",
        "-key",
        &d(&fp.with_extension("key")),
        "-subj",
        "/CN=front-proxy",
        "-out",
        &d(&fp.with_extension("csr")),
    ])
    .ok();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &d(&c.pki.join("etcd/peer.key")),
    ])
    .ok();
    write(
        &c.pki.join("etcd/server.crt"),
        read(&c.cas.join("etcd/ca.crt")),
    );
    let conf = c.kc.join("admin.conf");
    let mut k = Kubeconfig::load(&conf);
    k.set_user_data("client-certificate-data", b"not even PEM");
    k.save(&conf);
    let out = rejected(
        &c,
        &[
            &d(&c.pki.join("apiserver.csr")),
            "not a valid PEM certificate request",
            &d(&fp.with_extension("csr")),
            "subject CN is \"front-proxy\"",
            &d(&c.pki.join("etcd/peer.csr")),
            "public key does not match",
            &d(&c.pki.join("etcd/server.crt")),
            "already exists",
            &d(&conf),
            "client-certificate-data is already set",
        ],
    );
    assert!(out.stderr.lines().count() >= 5, "{out:?}");
}

/// Problems found while listing the directories (unknown name, symlink) and problems inside
/// CSRs are reported together too: an operator fixes everything after one run.
#[test]
fn listing_problems_and_csr_problems_reported_at_once() {
    let Some(c) = fixture() else { return };
    write(&c.pki.join("foo.csr"), read(&c.pki.join("apiserver.csr")));
    write(
        &c.pki.join("apiserver.csr"),
        b"-----BEGIN CERTIFICATE REQUEST-----\n%%%%\n-----END CERTIFICATE REQUEST-----\n",
    );
    let conf = c.kc.join("admin.conf");
    let mut k = Kubeconfig::load(&conf);
    k.set_user_data("client-certificate-data", b"x");
    k.save(&conf);
    rejected_with(
        &c,
        &c.config,
        &[],
        &[
            &d(&c.pki.join("foo.csr")),
            "unknown CSR file name",
            &d(&c.pki.join("apiserver.csr")),
            "not a valid PEM certificate request",
            &d(&conf),
            "client-certificate-data is already set",
        ],
    );
}

#[test]
fn fixture_signs_cleanly() {
    // The baseline every case above breaks: unmodified, it signs and checks.
    let Some(c) = fixture() else { return };
    c.sign();
    c.check(false).ok();
    for l in LEAVES {
        let leaf = Leaf::by_name(l.name);
        for p in leaf.purposes() {
            openssl_verify(
                &c.pki.join(leaf.ca_file),
                &c.leaf_cert_pem(&leaf),
                p,
                &c.scratch,
            )
            .ok();
        }
    }
}
