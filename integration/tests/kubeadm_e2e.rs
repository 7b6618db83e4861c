//! End to end with real kubeadm v1.35.4 and openssl: `kubeadm certs generate-csr`, `kubesign ca
//! init`, `kubesign sign`, then every certificate is checked with openssl against kubeadm's table,
//! `kubesign check` must agree, and kubeadm itself must accept the tree in external CA mode
//! (FINDINGS.md section 4). Also: the audit log, renewal, dry runs, and proof that the kubeadm
//! validation commands reject a tampered tree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use integration::{
    CA_FILES, CaAlgorithms, CertInfo, Cluster, ECDSA_P256, ECDSA_P384, KubeadmCase, Kubeconfig,
    LEAVES, Leaf, RSA2048, Snapshot, Tools, assert_phase_certs_ok, assert_phase_kubeconfig_ok,
    cert_info, csr_info, key_public_pem, kubeadm_phase_certs, kubeadm_phase_kubeconfig,
    leftover_temp_files, mode, now_unix, openssl, openssl_verify, openssl_verify_files, read,
    read_string, root, sha256_hex, write,
};

const RSA_CAS: CaAlgorithms = ["RSA-2048", "RSA-2048", "RSA-2048"];
const P256_CAS: CaAlgorithms = ["ECDSA-P256", "ECDSA-P256", "ECDSA-P256"];
const MIXED_CAS: CaAlgorithms = ["RSA-3072", "ECDSA-P384", "RSA-3072"];

const LEAF_VALIDITY: i64 = 8760 * 3600;
const CA_VALIDITY: i64 = 87600 * 3600;
const BACKDATE: i64 = 5 * 60;

/// The configured key algorithm of the CA whose certificate is `ca_file`.
fn ca_alg(algs: &CaAlgorithms, ca_file: &str) -> &'static str {
    match ca_file {
        "ca.crt" => algs[0],
        "etcd/ca.crt" => algs[1],
        "front-proxy-ca.crt" => algs[2],
        other => panic!("unknown CA file {other}"),
    }
}

/// What `openssl x509 -text` shows for a key of this kubeadm algorithm.
fn key_text(alg: &str) -> &'static [&'static str] {
    match alg {
        "RSA-2048" => &["rsaEncryption", "Public-Key: (2048 bit)"],
        "RSA-3072" => &["rsaEncryption", "Public-Key: (3072 bit)"],
        "ECDSA-P256" => &["id-ecPublicKey", "prime256v1"],
        "ECDSA-P384" => &["id-ecPublicKey", "secp384r1"],
        other => panic!("unknown algorithm {other}"),
    }
}

/// The signature algorithm a CA key of this type signs with (as Go's crypto/x509 chooses).
fn sig_alg(alg: &str) -> &'static str {
    match alg {
        "RSA-2048" | "RSA-3072" => "sha256WithRSAEncryption",
        "ECDSA-P256" => "ecdsa-with-SHA256",
        "ECDSA-P384" => "ecdsa-with-SHA384",
        other => panic!("unknown algorithm {other}"),
    }
}

/// SHA-1 of the subjectPublicKey bits: the key identifier Go (kubeadm) and openssl's `hash`
/// method compute.
fn sha1_key_id(der: &[u8]) -> String {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).expect("openssl's DER parses with x509-cert");
    let bits = cert
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes()
        .to_vec();
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &bits)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The CA certificates `ca init` wrote, as kubeadm would have written them.
fn check_ca_certs(
    c: &Cluster,
    algs: &CaAlgorithms,
    t0: i64,
    t1: i64,
) -> BTreeMap<&'static str, CertInfo> {
    let mut out = BTreeMap::new();
    for (file, cn) in CA_FILES {
        let path = c.cas.join(file);
        let info = cert_info(&read(&path));
        let alg = ca_alg(algs, file);
        assert_eq!(info.subject, format!("CN = {cn}"), "{file}");
        assert_eq!(info.issuer, info.subject, "{file}: self-signed");
        for needle in key_text(alg) {
            assert!(
                info.text.contains(needle),
                "{file}: configured {alg}, but the key is not {needle}:\n{}",
                info.text
            );
        }
        assert_eq!(info.signature_algorithm(), sig_alg(alg), "{file}");
        let bc = info
            .ext("X509v3 Basic Constraints")
            .expect("CA basicConstraints");
        assert!(bc.critical && bc.value == "CA:TRUE", "{file}: {bc:?}");
        let ku = info.ext("X509v3 Key Usage").expect("CA keyUsage");
        assert!(
            ku.critical && ku.value == "Digital Signature, Key Encipherment, Certificate Sign",
            "{file}: {ku:?}"
        );
        assert_eq!(
            info.ext("X509v3 Subject Alternative Name")
                .map(|e| e.value.clone()),
            Some(format!("DNS:{cn}")),
            "{file}"
        );
        assert_eq!(info.ski(), Some(sha1_key_id(&info.der)), "{file}: SKI");
        assert_eq!(info.aki(), info.ski(), "{file}: AKI of a self-signed CA");
        assert!(
            info.not_before >= t0 - BACKDATE - 1 && info.not_before <= t1 - BACKDATE,
            "{file}: notBefore"
        );
        assert_eq!(
            info.not_after - info.not_before,
            CA_VALIDITY + BACKDATE,
            "{file}: 10 years from issuance"
        );
        let v = openssl(&[
            "verify",
            "-x509_strict",
            "-CAfile",
            &path.display().to_string(),
            &path.display().to_string(),
        ]);
        v.ok().stdout_has(&[": OK"]);
        out.insert(file, info);
    }
    // Each CA has its own key.
    let keys: BTreeSet<_> = out.values().map(|i| i.public_key.clone()).collect();
    assert_eq!(keys.len(), 3, "the three CAs must have distinct keys");
    out
}

/// openssl verifies every leaf against its CA with each purpose kubeadm gives it, and rejects it
/// against the two other CAs and for the purpose it lacks (so the positive results mean
/// something). Batched: one openssl run per CA and purpose.
fn verify_chains_and_purposes(c: &Cluster, pems: &BTreeMap<&str, Vec<u8>>) {
    let dir = c.scratch.join(format!("leaves-{}", now_unix()));
    let file = |name: &str| dir.join(format!("{}.pem", name.replace('/', "_")));
    for (name, pem) in pems {
        write(&file(name), pem);
    }
    for (ca_file, _) in CA_FILES {
        let ca = c.pki.join(ca_file);
        let mine: Vec<Leaf> = LEAVES
            .iter()
            .copied()
            .filter(|l| l.ca_file == ca_file)
            .collect();
        for (purpose, has) in [
            ("sslserver", true),
            ("sslclient", true),
            ("sslserver", false),
            ("sslclient", false),
        ] {
            let leaves: Vec<PathBuf> = mine
                .iter()
                .filter(|l| {
                    (if purpose == "sslserver" {
                        l.server
                    } else {
                        l.client
                    }) == has
                })
                .map(|l| file(l.name))
                .collect();
            if leaves.is_empty() {
                continue;
            }
            let (ok, out) = openssl_verify_files(&ca, &leaves, Some(purpose));
            for (f, verified) in &ok {
                assert_eq!(
                    *verified,
                    has,
                    "{}: -purpose {purpose} against {ca_file}\n{out:?}",
                    f.display()
                );
            }
            if !has {
                out.stderr_has(&["unsuitable certificate purpose"]);
            }
        }
        let others: Vec<PathBuf> = LEAVES
            .iter()
            .filter(|l| l.ca_file != ca_file)
            .map(|l| file(l.name))
            .collect();
        let (ok, out) = openssl_verify_files(&ca, &others, None);
        for (f, verified) in &ok {
            assert!(
                !verified,
                "{} must not verify against {ca_file}\n{out:?}",
                f.display()
            );
        }
        assert_ne!(out.code, Some(0), "{out:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Everything about the 12 signed leaves, checked with openssl against kubeadm's table, the CSR
/// and the CA. `t0`/`t1` bracket the signing run. Returns each leaf's certificate.
fn check_leaves(
    c: &Cluster,
    case: &KubeadmCase,
    algs: &CaAlgorithms,
    t0: i64,
    t1: i64,
) -> BTreeMap<&'static str, CertInfo> {
    let cas: BTreeMap<&str, CertInfo> = CA_FILES
        .iter()
        .map(|(f, _)| (*f, cert_info(&read(&c.pki.join(f)))))
        .collect();
    let pems: BTreeMap<&str, Vec<u8>> = LEAVES
        .iter()
        .map(|l| (l.name, c.leaf_cert_pem(l)))
        .collect();
    verify_chains_and_purposes(c, &pems);

    let mut infos = BTreeMap::new();
    for leaf in LEAVES {
        let n = leaf.name;
        let pem = &pems[n];
        assert_eq!(
            integration::pem_blocks(pem)
                .iter()
                .map(|(l, _)| l.as_str())
                .collect::<Vec<_>>(),
            ["CERTIFICATE"],
            "{n}: exactly one certificate"
        );
        let info = cert_info(pem);
        let csr = csr_info(&read(&c.leaf_csr(&leaf)));
        let ca = &cas[leaf.ca_file];
        assert_eq!(info.issuer, ca.subject, "{n}: issuer");
        assert_eq!(
            info.signature_algorithm(),
            sig_alg(ca_alg(algs, leaf.ca_file)),
            "{n}: signature algorithm"
        );

        // Extensions: exactly kubeadm's, nothing else.
        let mut want_exts = vec![
            "X509v3 Authority Key Identifier",
            "X509v3 Basic Constraints",
            "X509v3 Extended Key Usage",
            "X509v3 Key Usage",
            "X509v3 Subject Key Identifier",
        ];
        if case.sans(n).is_some() {
            want_exts.push("X509v3 Subject Alternative Name");
        }
        want_exts.sort();
        let mut have_exts: Vec<&str> = info.extensions.iter().map(|e| e.name.as_str()).collect();
        have_exts.sort();
        assert_eq!(have_exts, want_exts, "{n}: extensions");
        let bc = info
            .ext("X509v3 Basic Constraints")
            .expect("basicConstraints");
        assert!(bc.critical, "{n}: basicConstraints must be critical");
        assert_eq!(bc.value, "CA:FALSE", "{n}");
        let ku = info.ext("X509v3 Key Usage").expect("keyUsage");
        assert!(ku.critical, "{n}: keyUsage must be critical");
        assert_eq!(
            ku.value, "Digital Signature, Key Encipherment",
            "{n}: key usage"
        );
        let eku = info
            .ext("X509v3 Extended Key Usage")
            .expect("extendedKeyUsage");
        assert_eq!(eku.value, leaf.eku_text(), "{n}: extended key usage");
        assert_eq!(
            info.ski(),
            Some(sha1_key_id(&info.der)),
            "{n}: SKI = SHA-1 of the public key"
        );
        assert_eq!(info.aki(), ca.ski(), "{n}: AKI must equal the CA's SKI");
        assert!(
            info.aki().is_some_and(|a| a.len() == 59),
            "{n}: AKI is a 20-byte key id"
        );

        // Names: the CSR's, which are kubeadm's.
        let want_subject = leaf.subject_for(case.node);
        assert_eq!(csr.subject, want_subject, "{n}: CSR subject (kubeadm)");
        assert_eq!(
            info.subject, csr.subject,
            "{n}: subject must equal the CSR subject"
        );
        assert_eq!(
            csr.sans().as_deref(),
            case.sans(n),
            "{n}: CSR SANs (kubeadm)"
        );
        assert_eq!(
            info.ext("X509v3 Subject Alternative Name")
                .map(|e| e.value.as_str()),
            csr.sans().as_deref(),
            "{n}: SANs must equal the CSR's"
        );
        if let Some(san) = info.ext("X509v3 Subject Alternative Name") {
            assert!(
                !san.critical,
                "{n}: SAN is not critical when the subject is set"
            );
        }

        // Key: the CSR's, which is NAME.key / client-key-data.
        assert!(
            info.text.contains(case.leaf_key),
            "{n}: leaf key type {}",
            case.leaf_key
        );
        assert_eq!(
            info.public_key, csr.public_key,
            "{n}: public key must be the CSR's"
        );
        assert_eq!(
            info.public_key,
            key_public_pem(&c.leaf_key_pem(&leaf)),
            "{n}: certificate must match its private key"
        );

        // Serial: 128 random bits.
        assert_eq!(
            info.serial.len(),
            32,
            "{n}: serial {} is not 16 bytes",
            info.serial
        );
        assert!(
            info.serial.chars().all(|ch| ch.is_ascii_hexdigit()),
            "{n}: serial {}",
            info.serial
        );
        assert_ne!(
            &info.serial[..2],
            "00",
            "{n}: serial {} has fewer than 128 significant bits",
            info.serial
        );

        // Validity: backdated 5 minutes, kubeadm's 8760h from issuance.
        assert!(
            info.not_before >= t0 - BACKDATE - 1 && info.not_before <= t1 - BACKDATE,
            "{n}: notBefore {} not 5 minutes before the run [{t0}, {t1}]",
            info.not_before
        );
        assert_eq!(
            info.not_after - info.not_before,
            LEAF_VALIDITY + BACKDATE,
            "{n}: notAfter must be issuance + 8760h"
        );
        assert!(info.not_after <= ca.not_after, "{n}: outlives its CA");

        if leaf.kubeconfig {
            let kc = Kubeconfig::load(&c.kc.join(n));
            assert_eq!(
                kc.cluster_data("certificate-authority-data").as_deref(),
                Some(read(&c.pki.join("ca.crt")).as_slice()),
                "{n}: certificate-authority-data must be exactly the bytes of ca.crt"
            );
            assert_eq!(
                mode(&c.kc.join(n)),
                0o600,
                "{n}: a kubeconfig holds a private key"
            );
        } else {
            assert_eq!(&read(&c.leaf_file(&leaf)), pem);
            assert_eq!(
                mode(&c.leaf_file(&leaf)) & 0o077,
                0o044,
                "{n}.crt permissions"
            );
        }
        infos.insert(n, info);
    }
    let serials: BTreeSet<_> = infos.values().map(|i| i.serial.clone()).collect();
    assert_eq!(serials.len(), 12, "serials must all differ");
    infos
}

/// The kubeconfigs before signing: full documents.
fn kubeconfigs(c: &Cluster) -> BTreeMap<&'static str, Kubeconfig> {
    LEAVES
        .iter()
        .filter(|l| l.kubeconfig)
        .map(|l| (l.name, Kubeconfig::load(&c.kc.join(l.name))))
        .collect()
}

/// Signing changed exactly client-certificate-data and certificate-authority-data.
fn check_kubeconfigs_only_filled(c: &Cluster, before: &BTreeMap<&'static str, Kubeconfig>) {
    for (name, old) in before {
        assert!(
            !old.user_has("client-certificate-data"),
            "{name}: kubeadm leaves client-certificate-data out"
        );
        let new = Kubeconfig::load(&c.kc.join(name));
        assert_eq!(
            new.user_data("client-key-data"),
            old.user_data("client-key-data"),
            "{name}: client-key-data changed"
        );
        let mut expected = old.clone();
        expected.set_user_data(
            "client-certificate-data",
            &new.user_data("client-certificate-data").expect("signed"),
        );
        expected.set_cluster_data("certificate-authority-data", &read(&c.pki.join("ca.crt")));
        assert_eq!(
            new, expected,
            "{name}: only client-certificate-data and certificate-authority-data may change"
        );
    }
}

/// `kubesign check` exits 0 and reports every certificate and CA ok.
fn check_command_ok(c: &Cluster) {
    let table = c.check(false);
    table.ok();
    assert!(!table.stdout.contains("!MISSING!"), "{table:?}");
    let out = c.check(true);
    out.ok();
    let v = out.json();
    let certs = v["certificates"].as_array().expect("certificates array");
    let names: BTreeSet<&str> = certs.iter().filter_map(|x| x["name"].as_str()).collect();
    assert_eq!(
        names,
        LEAVES.iter().map(|l| l.name).collect::<BTreeSet<_>>(),
        "{out:?}"
    );
    for cert in certs {
        assert_eq!(cert["status"], "ok", "{cert}");
        assert_eq!(cert["problems"].as_array().map(Vec::len), Some(0), "{cert}");
        assert_eq!(cert["externally_managed"], true, "{cert}");
        assert!(
            cert["residual_seconds"]
                .as_i64()
                .is_some_and(|s| s > LEAF_VALIDITY - 3600),
            "{cert}"
        );
    }
    let cas = v["certificate_authorities"]
        .as_array()
        .expect("certificate_authorities array");
    assert_eq!(cas.len(), 3, "{out:?}");
    for ca in cas {
        assert_eq!(ca["status"], "ok", "{ca}");
        assert_eq!(ca["externally_managed"], true, "{ca}");
    }
}

/// kubeadm's own external-CA validation (FINDINGS.md section 4, commands A and B) passes and
/// changes nothing. B needs root for `--rootfs`.
fn kubeadm_accepts(tools: &Tools, c: &Cluster, case: &KubeadmCase) {
    let before = Snapshot::of(&[&c.pki, &c.kc]);
    let a = kubeadm_phase_kubeconfig(&tools.kubeadm, case, &c.pki, &c.kc, &c.scratch);
    assert_phase_kubeconfig_ok(&a);
    before.assert_same(
        &Snapshot::of(&[&c.pki, &c.kc]),
        "kubeadm init phase kubeconfig all",
    );
    if root("kubeadm --rootfs (validation command B)").is_some() {
        let (b, rootfs) = kubeadm_phase_certs(&tools.kubeadm, case, &c.pki, &c.kc, &c.scratch);
        let etc = rootfs.join("etc/kubernetes");
        assert_phase_certs_ok(&b);
        // The copy inside the rootfs was not modified either (no sa.key, no CA key created).
        let pki_copy = Snapshot::of(&[&etc.join("pki")]);
        let original = Snapshot::of(&[&c.pki]);
        assert_eq!(
            pki_copy.0.values().collect::<Vec<_>>(),
            original.0.values().collect::<Vec<_>>(),
            "kubeadm init phase certs all modified the certificate directory"
        );
    }
    before.assert_same(&Snapshot::of(&[&c.pki, &c.kc]), "kubeadm validation");
}

/// The audit log: the CA records of `ca init`, then one record per issued certificate.
fn check_audit(
    c: &Cluster,
    infos: &BTreeMap<&'static str, CertInfo>,
    cas: &BTreeMap<&'static str, CertInfo>,
) {
    let records = c.audit_records();
    assert_eq!(
        records.len(),
        3 + 12,
        "audit log: 3 CA records and 12 certificates"
    );
    let text = read_string(&c.audit);
    assert!(
        !text.contains("-----BEGIN") && !text.contains("PRIVATE"),
        "the audit log holds key material"
    );
    for key in ["ca.key", "etcd-ca.key", "front-proxy-ca.key"] {
        let key_text = read_string(&c.cas.join(key));
        for line in key_text
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        {
            assert!(
                !text.contains(line),
                "the audit log contains CA key material from {key}"
            );
        }
    }
    for (rec, (file, cn)) in records[..3].iter().zip(CA_FILES) {
        let info = &cas[file];
        assert_eq!(rec["event"], "ca-created", "{rec}");
        assert_eq!(rec["subject"], format!("CN={cn}"), "{rec}");
        assert_eq!(
            rec["certificate_sha256"].as_str(),
            Some(info.sha256.as_str()),
            "{rec}"
        );
        assert_eq!(
            rec["serial"].as_str().unwrap_or_default(),
            info.serial.to_lowercase(),
            "{rec}"
        );
    }
    let mut seen = BTreeSet::new();
    for rec in &records[3..] {
        let profile = rec["profile"]
            .as_str()
            .unwrap_or_else(|| panic!("no profile: {rec}"));
        let leaf = Leaf::by_name(profile);
        let info = &infos[leaf.name];
        assert!(seen.insert(profile), "two records for {profile}");
        assert_eq!(rec["event"], "issued", "{rec}");
        assert_eq!(
            rec["serial"].as_str().unwrap_or_default(),
            info.serial.to_lowercase(),
            "{rec}"
        );
        assert_eq!(
            rec["certificate_sha256"].as_str(),
            Some(info.sha256.as_str()),
            "{rec}"
        );
        let subject_rfc4514 = {
            // openssl: "O = a, CN = b"; RFC 4514 lists the RDNs last first: "CN=b,O=a".
            let parts: Vec<String> = info
                .subject
                .split(", ")
                .map(|p| p.replace(" = ", "="))
                .collect();
            parts.into_iter().rev().collect::<Vec<_>>().join(",")
        };
        assert_eq!(
            rec["subject"].as_str(),
            Some(subject_rfc4514.as_str()),
            "{rec}"
        );
        let csr_path = c.leaf_csr(&leaf);
        assert_eq!(
            rec["source"].as_str(),
            Some(csr_path.display().to_string().as_str()),
            "{rec}"
        );
        let csr = csr_info(&read(&csr_path));
        assert_eq!(
            rec["source_sha256"].as_str(),
            Some(csr.sha256.as_str()),
            "{rec}: SHA-256 of the CSR DER"
        );
        let ca_role = match leaf.ca_file {
            "ca.crt" => "kubernetes",
            "etcd/ca.crt" => "etcd",
            _ => "front-proxy",
        };
        assert_eq!(rec["ca"], ca_role, "{rec}");
        assert_eq!(
            rec["key"].as_str(),
            Some(format!("file:{}", c.ca_key(leaf.ca_file).display()).as_str()),
            "{rec}"
        );
        let sans: Vec<String> = rec["sans"]
            .as_array()
            .expect("sans")
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        assert_eq!(
            sans.is_empty(),
            leaf.name != "apiserver" && leaf.name != "etcd/server" && leaf.name != "etcd/peer",
            "{rec}"
        );
        assert_eq!(
            rec["key_usage"],
            serde_json::json!(["digital signature", "key encipherment"]),
            "{rec}"
        );
    }
    assert_eq!(seen.len(), 12);
}

/// generate-csr, ca init, dry run, sign, and every check.
fn sign_and_check_everything(case: KubeadmCase, algs: CaAlgorithms, relative_config: bool) {
    let Some(tools) = Tools::e2e() else { return };
    let c = Cluster::new(&tools.kubesign);
    let gen_out = c.generate_csr(&tools.kubeadm, &case);
    assert!(
        gen_out.stdout.contains("generating keys and CSRs in"),
        "{gen_out:?}"
    );
    c.write_config(algs, relative_config);
    let t0 = now_unix();
    c.ca_init().stdout_has(&["created"]);
    let cas = check_ca_certs(&c, &algs, t0, now_unix());

    let before_kc = kubeconfigs(&c);
    let csrs_and_keys = Snapshot::of(&[&c.pki, &c.kc]);
    let t0 = now_unix();
    let out = c.sign();
    let t1 = now_unix();
    out.stderr_has(&["signed 12 certificates", "3 CA certificates copied"]);
    for leaf in LEAVES {
        let shown = if leaf.kubeconfig {
            format!("{}", c.kc.join(leaf.name).display())
        } else {
            format!("{}.crt", leaf.name)
        };
        assert!(
            out.stdout.contains(&shown),
            "sign output does not list {shown}\n{out:?}"
        );
    }

    // Nothing but the certificates, the CA certificates and the kubeconfigs changed.
    let after = Snapshot::of(&[&c.pki, &c.kc]);
    let mut changed = csrs_and_keys.changes(&after);
    changed.sort();
    let mut expected: Vec<String> = LEAVES
        .iter()
        .map(|l| {
            if l.kubeconfig {
                format!("changed {}", c.kc.join(l.name).display())
            } else {
                format!("added {}", c.pki.join(format!("{}.crt", l.name)).display())
            }
        })
        .chain(
            CA_FILES
                .iter()
                .map(|(f, _)| format!("added {}", c.pki.join(f).display())),
        )
        .collect();
    expected.sort();
    assert_eq!(changed, expected, "files touched by kubesign sign");
    assert!(
        leftover_temp_files(&c.root).is_empty(),
        "{:?}",
        leftover_temp_files(&c.root)
    );
    for (file, _) in CA_FILES {
        assert_eq!(
            read(&c.pki.join(file)),
            read(&c.cas.join(file)),
            "{file} must be a copy of the configured CA"
        );
        let key = file.replace(".crt", ".key");
        assert!(
            !c.pki.join(&key).exists(),
            "{key}: a CA key in the cert dir would end external CA mode"
        );
    }

    let infos = check_leaves(&c, &case, &algs, t0, t1);
    for (name, info) in &cas {
        assert!(
            infos.values().all(|i| i.serial != info.serial),
            "{name} serial reused"
        );
    }
    check_kubeconfigs_only_filled(&c, &before_kc);
    check_command_ok(&c);
    kubeadm_accepts(&tools, &c, &case);
    check_audit(&c, &infos, &cas);
}

#[test]
fn rsa2048_cluster_with_rsa2048_cas() {
    sign_and_check_everything(RSA2048, RSA_CAS, false);
}

#[test]
fn ecdsa_p256_cluster_with_ecdsa_p256_cas_and_relative_config_paths() {
    sign_and_check_everything(ECDSA_P256, P256_CAS, true);
}

#[test]
fn ecdsa_p384_cluster_with_mixed_rsa3072_and_p384_cas() {
    sign_and_check_everything(ECDSA_P384, MIXED_CAS, false);
}

#[test]
fn dry_run_writes_nothing_and_prints_the_plan() {
    let Some(tools) = Tools::e2e() else { return };
    let c = Cluster::kubeadm_ready(&tools, &ECDSA_P384, MIXED_CAS);
    let before = c.snapshot();
    let audit_lines = c.audit_records().len();

    let table = c.ks_dirs(&["sign"], &["--dry-run"]);
    table.ok().stderr_has(&[
        "dry run: 12 certificates would be signed",
        "nothing was signed or written",
    ]);
    for leaf in LEAVES {
        let shown = if leaf.kubeconfig {
            leaf.name.to_owned()
        } else {
            format!("{}.crt", leaf.name)
        };
        assert!(
            table.stdout.contains(&shown),
            "the plan does not list {shown}\n{table:?}"
        );
    }
    table.stdout_has(&[
        "DNS:etcd-peer.kubesign.test",
        "CN=system:node:cp-node-7,O=system:nodes",
        "serverAuth,clientAuth",
    ]);
    before.assert_same(&c.snapshot(), "sign --dry-run");

    let json = c.ks_dirs(&["sign"], &["--dry-run", "-o", "json"]);
    json.ok();
    let rows = json.json();
    let rows = rows.as_array().expect("a JSON array");
    assert_eq!(rows.len(), 12, "{json:?}");
    let names: BTreeSet<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(
        names,
        LEAVES.iter().map(|l| l.name).collect::<BTreeSet<_>>()
    );
    for r in rows {
        assert!(r.get("serial").is_none(), "a dry run has no serials: {r}");
        let leaf = Leaf::by_name(r["name"].as_str().unwrap_or_default());
        let want_ca = match leaf.ca_file {
            "ca.crt" => "kubernetes",
            "etcd/ca.crt" => "etcd",
            _ => "front-proxy",
        };
        assert_eq!(r["ca"], want_ca, "{r}");
        let sans = r["sans"].as_array().map_or(0, Vec::len);
        assert_eq!(sans > 0, ECDSA_P384.sans(leaf.name).is_some(), "{r}");
    }
    before.assert_same(&c.snapshot(), "sign --dry-run -o json");
    assert_eq!(c.audit_records().len(), audit_lines);
    assert!(!c.pki.join("ca.crt").exists());

    // The dry run consumed nothing: the real run signs all 12.
    c.sign().stderr_has(&["signed 12 certificates"]);
}

#[test]
fn renew_named_then_all_keeps_keys_and_names_with_new_serials() {
    let Some(tools) = Tools::e2e() else { return };
    let case = ECDSA_P256;
    let c = Cluster::kubeadm_ready(&tools, &case, RSA_CAS);
    let t0 = now_unix();
    c.sign();
    let first = check_leaves(&c, &case, &RSA_CAS, t0, now_unix());
    let keys_and_csrs: Vec<(String, Vec<u8>)> = LEAVES
        .iter()
        .flat_map(|l| {
            [
                (format!("{} key", l.name), c.leaf_key_pem(l)),
                (format!("{} csr", l.name), read(&c.leaf_csr(l))),
            ]
        })
        .collect();
    let audit_before = c.audit_records().len();

    // Only the named ones.
    let before = c.snapshot();
    let out = c.ks_dirs(&["renew"], &["-o", "json", "apiserver", "admin.conf"]);
    out.ok();
    let rows = out.json();
    let rows = rows.as_array().expect("array");
    assert_eq!(
        rows.iter()
            .filter_map(|r| r["name"].as_str())
            .collect::<Vec<_>>(),
        ["apiserver", "admin.conf"],
        "{out:?}"
    );
    let mut changed = before.changed_files(&c.snapshot());
    changed.sort();
    let mut want = vec![
        c.audit.display().to_string(),
        c.kc.join("admin.conf").display().to_string(),
        c.pki.join("apiserver.crt").display().to_string(),
    ];
    want.sort();
    assert_eq!(
        changed, want,
        "renew apiserver admin.conf touched other files"
    );
    assert!(
        before
            .changes(&c.snapshot())
            .iter()
            .all(|ch| ch.starts_with("changed")),
        "files added or removed"
    );
    for name in ["apiserver", "admin.conf"] {
        let leaf = Leaf::by_name(name);
        let new = cert_info(&c.leaf_cert_pem(&leaf));
        let old = &first[name];
        assert_ne!(new.serial, old.serial, "{name}: renewal needs a new serial");
        assert_eq!(new.public_key, old.public_key, "{name}: same key");
        assert_eq!(new.subject, old.subject, "{name}: same subject");
        assert_eq!(
            new.ext("X509v3 Subject Alternative Name"),
            old.ext("X509v3 Subject Alternative Name"),
            "{name}: same SANs"
        );
        assert!(new.not_before >= old.not_before);
        let row = rows.iter().find(|r| r["name"] == name).expect("row");
        assert_eq!(
            row["serial"].as_str().unwrap_or_default(),
            new.serial.to_lowercase()
        );
        for purpose in leaf.purposes() {
            openssl_verify(
                &c.pki.join(leaf.ca_file),
                &c.leaf_cert_pem(&leaf),
                purpose,
                &c.scratch,
            )
            .ok();
        }
    }
    let records = c.audit_records();
    assert_eq!(records.len(), audit_before + 2);
    for rec in &records[audit_before..] {
        let src = rec["source"].as_str().unwrap_or_default();
        assert!(
            src.starts_with("renew ")
                && (src.ends_with("apiserver.crt") || src.ends_with("admin.conf")),
            "{rec}"
        );
    }
    check_command_ok(&c);

    // Everything.
    let t0 = now_unix();
    let out = c.ks_dirs(&["renew"], &["-o", "json"]);
    let t1 = now_unix();
    out.ok();
    assert_eq!(out.json().as_array().map(Vec::len), Some(12), "{out:?}");
    let second = check_leaves(&c, &case, &RSA_CAS, t0, t1);
    for (name, new) in &second {
        let old = &first[name];
        assert_ne!(new.serial, old.serial, "{name}: renewal needs a new serial");
        assert!(
            first.values().all(|o| o.serial != new.serial),
            "{name}: serial reused"
        );
        assert_eq!(new.public_key, old.public_key, "{name}: same key");
        assert_eq!(new.subject, old.subject, "{name}: same subject");
        assert_eq!(
            new.ext("X509v3 Subject Alternative Name"),
            old.ext("X509v3 Subject Alternative Name"),
            "{name}: same SANs"
        );
    }
    let keys_and_csrs_after: Vec<(String, Vec<u8>)> = LEAVES
        .iter()
        .flat_map(|l| {
            [
                (format!("{} key", l.name), c.leaf_key_pem(l)),
                (format!("{} csr", l.name), read(&c.leaf_csr(l))),
            ]
        })
        .collect();
    assert!(
        keys_and_csrs == keys_and_csrs_after,
        "renew changed a private key or CSR"
    );
    assert_eq!(c.audit_records().len(), audit_before + 2 + 12);
    assert!(leftover_temp_files(&c.root).is_empty());
    check_command_ok(&c);
    kubeadm_accepts(&tools, &c, &case);
}

/// Signs `csr` with the CA `ca_crt`/`ca_key` using plain openssl and kubeadm's extensions.
fn openssl_sign(csr: &Path, ca_crt: &Path, ca_key: &Path, eku: &str, out: &Path, scratch: &Path) {
    let ext = scratch.join(format!(
        "ext-{}",
        sha256_hex(out.as_os_str().as_encoded_bytes())
    ));
    write(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={eku}\nauthorityKeyIdentifier=keyid\n"
        ),
    );
    let d = |p: &Path| p.display().to_string();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &d(csr),
        "-CA",
        &d(ca_crt),
        "-CAkey",
        &d(ca_key),
        "-set_serial",
        "0x1234567890abcdef",
        "-days",
        "365",
        "-copy_extensions",
        "copyall",
        "-extfile",
        &d(&ext),
        "-out",
        &d(out),
    ])
    .ok();
}

/// The kubeadm validation commands are not vacuous: each rejects a tree with one wrong
/// certificate (and so does `kubesign check`).
#[test]
fn kubeadm_and_check_reject_a_tampered_tree() {
    let Some(tools) = Tools::e2e() else { return };
    let case = RSA2048;
    let c = Cluster::kubeadm_ready(&tools, &case, RSA_CAS);
    c.sign();
    let run_b = root("kubeadm --rootfs (validation command B)").is_some();
    let d = |p: &Path| p.display().to_string();

    // A rogue CA with the same name as the Kubernetes CA.
    let rogue_key = c.scratch.join("rogue.key");
    let rogue_crt = c.scratch.join("rogue.crt");
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &d(&rogue_key),
        "-out",
        &d(&rogue_crt),
        "-days",
        "30",
        "-subj",
        "/CN=kubernetes",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
    ])
    .ok();

    struct Tamper {
        what: &'static str,
        a_error: Option<&'static str>,
        b_error: &'static str,
        check_problem: (&'static str, &'static str),
    }
    let cases = [
        Tamper {
            what: "apiserver.crt signed by a rogue CA named kubernetes",
            a_error: Some("certificate API server is not signed by corresponding CA"),
            b_error: "certificate API server is not signed by corresponding CA",
            check_problem: (
                "apiserver",
                "signature does not verify with the kubernetes CA certificate",
            ),
        },
        Tamper {
            what: "etcd/server.crt signed by the Kubernetes CA",
            a_error: None,
            b_error: "certificate etcd/server not signed by CA certificate etcd/ca",
            check_problem: ("etcd/server", "is not the etcd CA"),
        },
        Tamper {
            what: "admin.conf trusting the etcd CA",
            a_error: Some("does not contain a trusted CA"),
            b_error: "does not contain a trusted CA",
            check_problem: (
                "admin.conf",
                "certificate-authority-data differs from ca.crt",
            ),
        },
    ];
    for (i, t) in cases.iter().enumerate() {
        let root_dir = c.scratch.join(format!("tampered-{i}"));
        let (pki, kc) = (root_dir.join("pki"), root_dir.join("kubeconfig"));
        integration::copy_tree(&c.pki, &pki);
        integration::copy_tree(&c.kc, &kc);
        match i {
            0 => openssl_sign(
                &pki.join("apiserver.csr"),
                &rogue_crt,
                &rogue_key,
                "serverAuth",
                &pki.join("apiserver.crt"),
                &c.scratch,
            ),
            1 => openssl_sign(
                &pki.join("etcd/server.csr"),
                &c.cas.join("ca.crt"),
                &c.cas.join("ca.key"),
                "serverAuth,clientAuth",
                &pki.join("etcd/server.crt"),
                &c.scratch,
            ),
            _ => {
                let mut k = Kubeconfig::load(&kc.join("admin.conf"));
                k.set_cluster_data(
                    "certificate-authority-data",
                    &read(&pki.join("etcd/ca.crt")),
                );
                k.save(&kc.join("admin.conf"));
            }
        }
        let before = Snapshot::of(&[&pki, &kc]);

        let a = kubeadm_phase_kubeconfig(&tools.kubeadm, &case, &pki, &kc, &c.scratch);
        match t.a_error {
            Some(e) => {
                a.code(1).stderr_has(&[e]);
            }
            None => assert_phase_kubeconfig_ok(&a),
        }
        if run_b {
            let (b, _) = kubeadm_phase_certs(&tools.kubeadm, &case, &pki, &kc, &c.scratch);
            b.code(1).stderr_has(&[t.b_error]);
        }
        before.assert_same(&Snapshot::of(&[&pki, &kc]), t.what);

        let check = c.ks(&[
            "check",
            "--cert-dir",
            &d(&pki),
            "--kubeconfig-dir",
            &d(&kc),
            "-c",
            &d(&c.config),
            "-o",
            "json",
        ]);
        check.code(3);
        let v = check.json();
        let bad: Vec<&serde_json::Value> = v["certificates"]
            .as_array()
            .expect("certificates")
            .iter()
            .filter(|x| x["status"] != "ok")
            .collect();
        assert_eq!(
            bad.len(),
            1,
            "{}: exactly one certificate is wrong\n{check:?}",
            t.what
        );
        assert_eq!(bad[0]["name"], t.check_problem.0, "{}", t.what);
        assert_eq!(bad[0]["status"], "invalid");
        let problems = bad[0]["problems"].to_string();
        assert!(
            problems.contains(t.check_problem.1),
            "{}: check reported {problems}",
            t.what
        );
    }
    // The untouched tree still passes: the failures above are the tampering.
    kubeadm_accepts(&tools, &c, &case);
}

/// The serial in the audit log and in `sign -o json` must be the certificate's serial number
/// as everyone else prints it (openssl, kubectl, Go): the integer in hex, without the DER sign
/// octet. With a random 128-bit serial, about half of all certificates have the top bit set and
/// are encoded with a leading 00 octet.
#[test]
fn audit_and_output_serials_are_the_certificate_serials() {
    let Some(tools) = Tools::e2e() else { return };
    let c = Cluster::kubeadm_ready(&tools, &ECDSA_P256, P256_CAS);
    let out = c.ks_dirs(&["sign"], &["-o", "json"]);
    out.ok();
    let rows = out.json();
    let mut mismatches = Vec::new();
    for row in rows.as_array().expect("array") {
        let leaf = Leaf::by_name(row["name"].as_str().unwrap_or_default());
        let serial = cert_info(&c.leaf_cert_pem(&leaf)).serial.to_lowercase();
        if row["serial"].as_str() != Some(serial.as_str()) {
            mismatches.push(format!(
                "sign -o json {}: {} but the certificate's serial is {serial}",
                leaf.name, row["serial"]
            ));
        }
    }
    let by_sha: BTreeMap<String, String> = LEAVES
        .iter()
        .map(|l| cert_info(&c.leaf_cert_pem(l)))
        .chain(
            CA_FILES
                .iter()
                .map(|(f, _)| cert_info(&read(&c.cas.join(f)))),
        )
        .map(|i| (i.sha256.clone(), i.serial.to_lowercase()))
        .collect();
    for rec in c.audit_records() {
        let serial = &by_sha[rec["certificate_sha256"].as_str().unwrap_or_default()];
        if rec["serial"].as_str() != Some(serial.as_str()) {
            mismatches.push(format!(
                "audit {}: {} but the certificate's serial is {serial}",
                rec["profile"], rec["serial"]
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "serials with a DER sign octet:\n  {}",
        mismatches.join("\n  ")
    );
}
