//! End to end with CA keys in SoftHSM 2: real `kubeadm certs generate-csr`, `kubesign ca init`
//! generating the keys inside the token, `kubesign sign`, `check`, `renew`, `keys list`, and
//! `ca import` of a pki directory made by real kubeadm. Every certificate is verified by openssl
//! against the right CA, the token is inspected with OpenSC's `pkcs11-tool` (an independent
//! PKCS#11 client), the whole test directory is scanned for CA private keys, and kubeadm's own
//! offline external-CA validation (FINDINGS.md section 4) must accept the result.
//!
//! Each test has its own SoftHSM token directory and `SOFTHSM2_CONF`, passed only to the child
//! processes (kubesign, softhsm2-util, pkcs11-tool). Without SoftHSM, pkcs11-tool, kubeadm, openssl
//! or the kubesign binary the tests print SKIPPED, except under `CI=true`, where they fail.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use integration::softhsm::{
    CaEntry, SoftHsm, TokenObject, USER_PIN, cert_public_key, kubesign_config, private_keys_under,
    run_env, softhsm, verify_leaves,
};
use integration::{
    CA_FILES, Cluster, ECDSA_P256, ECDSA_P384, KubeadmCase, LEAVES, Output, RSA2048, Snapshot,
    Tools, assert_phase_certs_ok, assert_phase_kubeconfig_ok, cert_info,
    kubeadm_config_with_cert_dir, kubeadm_phase_certs, kubeadm_phase_kubeconfig, now_unix, openssl,
    openssl_verify_files, read, read_audit, read_string, root, run, write,
};

const TOKEN: &str = "kubesign";
/// kubernetes, etcd, front-proxy.
const ROLES: [&str; 3] = ["kubernetes", "etcd", "front-proxy"];
const OBJECTS: [&str; 3] = ["kubernetes-ca", "etcd-ca", "front-proxy-ca"];
const LEAF_VALIDITY: i64 = 8760 * 3600;

/// One test's world: the real tools, a kubeadm layout and its own SoftHSM.
struct World {
    tools: Tools,
    c: Cluster,
    hsm: SoftHsm,
}

impl World {
    fn new() -> Option<World> {
        let tools = Tools::e2e()?;
        softhsm()?;
        let c = Cluster::new(&tools.kubesign);
        let hsm = SoftHsm::new(&c.root.join("softhsm"));
        Some(World { tools, c, hsm })
    }

    /// kubesign with this test's SoftHSM in its environment (and `extra`).
    fn ks_env(&self, args: &[&str], extra: &[(&str, &OsStr)]) -> Output {
        run_env(
            &self.c.kubesign,
            args,
            Some(&self.c.root),
            &self.hsm.env_with(extra),
        )
    }

    fn ks(&self, args: &[&str]) -> Output {
        self.ks_env(args, &[])
    }

    /// `kubesign CMD -c CONFIG --cert-dir PKI --kubeconfig-dir KC EXTRA...`.
    fn ks_dirs(&self, config: &Path, cmd: &str, extra: &[&str]) -> Output {
        let config = config.display().to_string();
        let pki = self.c.pki.display().to_string();
        let kc = self.c.kc.display().to_string();
        let mut args = vec![
            cmd,
            "-c",
            &config,
            "--cert-dir",
            &pki,
            "--kubeconfig-dir",
            &kc,
        ];
        args.extend_from_slice(extra);
        self.ks(&args)
    }

    fn uri(&self, object: &str) -> String {
        self.hsm.key_uri(
            TOKEN,
            object,
            Path::new(integration::softhsm::SOFTHSM_MODULE),
            true,
        )
    }

    /// The CA certificate paths of `Cluster::write_config`: `cas/ca.crt`, `cas/etcd/ca.crt`,
    /// `cas/front-proxy-ca.crt`.
    fn ca_cert(&self, role: &str) -> PathBuf {
        self.c.cas.join(ca_file(role))
    }

    /// A configuration with all three CAs in the token, keys of `algs`.
    fn token_config(&self, algs: [&'static str; 3], backends: &str) -> String {
        let cas: Vec<CaEntry> = ROLES
            .iter()
            .zip(OBJECTS)
            .zip(algs)
            .map(|((role, object), algorithm)| CaEntry {
                role,
                key: self.uri(object),
                certificate: self.ca_cert(role),
                algorithm,
            })
            .collect();
        kubesign_config(&cas, &self.c.audit, backends)
    }

    fn private_keys(&self) -> BTreeMap<String, TokenObject> {
        self.hsm.private_keys(TOKEN)
    }
}

fn ca_file(role: &str) -> &'static str {
    match role {
        "kubernetes" => "ca.crt",
        "etcd" => "etcd/ca.crt",
        "front-proxy" => "front-proxy-ca.crt",
        other => panic!("unknown CA {other}"),
    }
}

fn ca_cn(role: &str) -> &'static str {
    match role {
        "kubernetes" => "kubernetes",
        "etcd" => "etcd-ca",
        "front-proxy" => "front-proxy-ca",
        other => panic!("unknown CA {other}"),
    }
}

/// What `openssl x509 -text` shows for a key of this kubeadm algorithm.
fn key_text(alg: &str) -> &'static [&'static str] {
    match alg {
        "RSA-2048" => &["rsaEncryption", "Public-Key: (2048 bit)"],
        "ECDSA-P256" => &["id-ecPublicKey", "prime256v1"],
        "ECDSA-P384" => &["id-ecPublicKey", "secp384r1"],
        other => panic!("unknown algorithm {other}"),
    }
}

fn sig_alg(alg: &str) -> &'static str {
    match alg {
        "RSA-2048" => "sha256WithRSAEncryption",
        "ECDSA-P256" => "ecdsa-with-SHA256",
        "ECDSA-P384" => "ecdsa-with-SHA384",
        other => panic!("unknown algorithm {other}"),
    }
}

/// The CA key algorithm kubeadm uses for a config (its encryptionAlgorithm).
fn kubeadm_alg(case: &KubeadmCase) -> &'static str {
    match case.leaf_key {
        "rsaEncryption" => "RSA-2048",
        "prime256v1" => "ECDSA-P256",
        "secp384r1" => "ECDSA-P384",
        other => panic!("unknown key {other}"),
    }
}

/// The rows of a `-o json` command output, by CA.
fn rows_by_ca(out: &Output) -> BTreeMap<String, serde_json::Value> {
    out.json()
        .as_array()
        .unwrap_or_else(|| panic!("expected a JSON array\n{out:?}"))
        .iter()
        .map(|r| (r["ca"].as_str().unwrap_or_default().to_owned(), r.clone()))
        .collect()
}

/// A key generated in the token that never left it, as pkcs11-tool shows it: sensitive, always
/// sensitive, never extractable, local.
#[track_caller]
fn assert_never_left_the_token(key: &TokenObject) {
    let flags = key.access_flags();
    for want in [
        "sensitive",
        "always sensitive",
        "never extractable",
        "local",
    ] {
        assert!(
            flags.iter().any(|f| f == want),
            "{}: access lacks {want:?}: {key:?}",
            key.label
        );
    }
    assert!(
        !flags.iter().any(|f| f == "extractable"),
        "{}: extractable: {key:?}",
        key.label
    );
}

/// A key kubesign generated: [`assert_never_left_the_token`], and allowed to sign and nothing
/// else.
#[track_caller]
fn assert_generated_in_token(key: &TokenObject) {
    assert_never_left_the_token(key);
    assert!(key.usage.contains("sign"), "{key:?}");
    for no in ["decrypt", "unwrap", "derive"] {
        assert!(
            !key.usage.contains(no),
            "{}: usage {no}: {key:?}",
            key.label
        );
    }
}

/// `keys list -o json` row attributes, as a set.
fn attributes(row: &serde_json::Value) -> BTreeSet<String> {
    row["attributes"]
        .as_array()
        .unwrap_or_else(|| panic!("no attributes: {row}"))
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

/// The CA certificates `ca init` made: kubeadm's CA subject, self-signed, the configured key type,
/// and the public key of the key in the token (read back by pkcs11-tool).
fn check_token_ca_certs(w: &World, algs: [&str; 3], in_token: [bool; 3]) {
    for ((role, alg), token) in ROLES.iter().zip(algs).zip(in_token) {
        let path = w.ca_cert(role);
        let info = cert_info(&read(&path));
        assert_eq!(info.subject, format!("CN = {}", ca_cn(role)), "{role}");
        assert_eq!(info.issuer, info.subject, "{role}: self-signed");
        for needle in key_text(alg) {
            assert!(
                info.text.contains(needle),
                "{role}: not {alg}:\n{}",
                info.text
            );
        }
        assert_eq!(info.signature_algorithm(), sig_alg(alg), "{role}");
        let bc = info
            .ext("X509v3 Basic Constraints")
            .expect("basicConstraints");
        assert!(bc.critical && bc.value == "CA:TRUE", "{role}: {bc:?}");
        openssl(&[
            "verify",
            "-x509_strict",
            "-CAfile",
            &path.display().to_string(),
            &path.display().to_string(),
        ])
        .ok()
        .stdout_has(&[": OK"]);
        if token {
            let object = OBJECTS[ROLES.iter().position(|r| r == role).unwrap()];
            // The CA certificate's key is the token's object.
            w.hsm
                .assert_public_key(TOKEN, object, &info.public_key, &w.c.scratch);
        }
    }
}

/// `kubesign check` exits 0 and reports all 12 certificates and 3 CAs ok.
fn check_ok(w: &World, config: &Path) {
    let table = w.ks_dirs(config, "check", &[]);
    table.ok();
    assert!(!table.stdout.contains("!MISSING!"), "{table:?}");
    let out = w.ks_dirs(config, "check", &["-o", "json"]);
    out.ok();
    let v = out.json();
    let certs = v["certificates"].as_array().expect("certificates");
    let names: BTreeSet<&str> = certs.iter().filter_map(|x| x["name"].as_str()).collect();
    assert_eq!(
        names,
        LEAVES.iter().map(|l| l.name).collect::<BTreeSet<_>>(),
        "{out:?}"
    );
    for cert in certs {
        assert_eq!(cert["status"], "ok", "{cert}");
        assert_eq!(cert["problems"].as_array().map(Vec::len), Some(0), "{cert}");
        assert!(
            cert["residual_seconds"]
                .as_i64()
                .is_some_and(|s| s > LEAF_VALIDITY - 3600),
            "{cert}"
        );
    }
    let cas = v["certificate_authorities"].as_array().expect("CAs");
    assert_eq!(cas.len(), 3, "{out:?}");
    for ca in cas {
        assert_eq!(ca["status"], "ok", "{ca}");
        assert_eq!(ca["externally_managed"], true, "{ca}");
    }
}

/// kubeadm's offline external-CA validation: command A always, B (chroot) as root.
fn kubeadm_accepts(w: &World, case: &KubeadmCase) {
    let before = Snapshot::of(&[&w.c.pki, &w.c.kc]);
    let a = kubeadm_phase_kubeconfig(&w.tools.kubeadm, case, &w.c.pki, &w.c.kc, &w.c.scratch);
    assert_phase_kubeconfig_ok(&a);
    if root("kubeadm --rootfs (validation command B)").is_some() {
        let (b, rootfs) =
            kubeadm_phase_certs(&w.tools.kubeadm, case, &w.c.pki, &w.c.kc, &w.c.scratch);
        assert_phase_certs_ok(&b);
        let _ = std::fs::remove_dir_all(rootfs);
    }
    before.assert_same(&Snapshot::of(&[&w.c.pki, &w.c.kc]), "kubeadm validation");
}

/// No private key anywhere under the test directory belongs to a CA in `token_cas`; the keys
/// that exist are leaf keys (and, for `file_cas`, exactly the configured key file).
fn no_ca_key_on_disk(w: &World, token_cas: &[&str], file_cas: &[(&str, PathBuf)]) {
    let keys = private_keys_under(&w.c.root);
    let leaf_keys: BTreeSet<String> = LEAVES
        .iter()
        .map(|l| cert_info(&w.c.leaf_cert_pem(l)).public_key)
        .collect();
    assert_eq!(leaf_keys.len(), 12);
    for role in token_cas {
        let ca_key = cert_public_key(&w.c.pki.join(ca_file(role)));
        let found: Vec<&Path> = keys
            .iter()
            .filter(|k| k.public_key == ca_key)
            .map(|k| k.file.as_path())
            .collect();
        assert!(
            found.is_empty(),
            "the {role} CA's private key is on disk: {found:?}"
        );
    }
    for (role, path) in file_cas {
        let ca_key = cert_public_key(&w.c.pki.join(ca_file(role)));
        let found: Vec<&Path> = keys
            .iter()
            .filter(|k| k.public_key == ca_key)
            .map(|k| k.file.as_path())
            .collect();
        assert_eq!(
            found,
            [path.as_path()],
            "the {role} CA key lives only in its file"
        );
    }
    let file_ca_keys: BTreeSet<String> = file_cas
        .iter()
        .map(|(role, _)| cert_public_key(&w.c.pki.join(ca_file(role))))
        .collect();
    let on_disk: BTreeSet<String> = keys
        .iter()
        .map(|k| k.public_key.clone())
        .filter(|k| !file_ca_keys.contains(k))
        .collect();
    assert_eq!(
        on_disk, leaf_keys,
        "the only other private keys on disk are the 12 leaf keys kubeadm wrote"
    );
    let in_kubeconfigs = keys.iter().filter(|k| k.how == "client-key-data").count();
    assert!(in_kubeconfigs >= 5, "{keys:?}");
}

/// The issued records of the audit log, by certificate SHA-256.
fn issued_records(audit: &Path) -> BTreeMap<String, serde_json::Value> {
    read_audit(audit)
        .into_iter()
        .filter(|r| r["event"] == "issued")
        .map(|r| {
            (
                r["certificate_sha256"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                r,
            )
        })
        .collect()
}

/// Generate-csr, ca init in the token, sign, verify, check, kubeadm validation, renew.
fn token_cas_sign_a_kubeadm_directory(case: KubeadmCase, algs: [&'static str; 3]) {
    let Some(w) = World::new() else { return };
    w.hsm.init_token(TOKEN);
    w.c.generate_csr(&w.tools.kubeadm, &case);
    write(
        &w.c.config,
        w.token_config(algs, "  pkcs11:\n    sessions: 2\n"),
    );
    let config = w.c.config.display().to_string();

    // ca init: three keys generated inside the token, three CA certificates.
    let init = w.ks(&["ca", "init", "-c", &config, "-o", "json"]);
    init.ok();
    let rows = rows_by_ca(&init);
    for (role, alg) in ROLES.iter().zip(algs) {
        assert_eq!(rows[*role]["status"], "created", "{init:?}");
        assert_eq!(rows[*role]["algorithm"], alg, "{init:?}");
    }
    check_token_ca_certs(&w, algs, [true; 3]);
    let keys = w.private_keys();
    assert_eq!(
        keys.keys().map(String::as_str).collect::<Vec<_>>(),
        ["etcd-ca", "front-proxy-ca", "kubernetes-ca"],
        "exactly the three CA keys in the token"
    );
    for key in keys.values() {
        assert_generated_in_token(key);
    }
    assert!(
        !read_string(&w.c.config).contains(USER_PIN),
        "the configuration names a pin-source, never the PIN"
    );

    // keys list: the token's view through kubesign.
    let list = w.ks(&["keys", "list", "-c", &config, "-o", "json"]);
    list.ok();
    let rows = rows_by_ca(&list);
    assert_eq!(rows.len(), 3, "{list:?}");
    for ((role, object), alg) in ROLES.iter().zip(OBJECTS).zip(algs) {
        let row = &rows[*role];
        assert_eq!(row["backend"], "pkcs11", "{row}");
        assert_eq!(row["matches_certificate"], "yes", "{row}");
        assert_eq!(row["algorithm"], alg, "{row}");
        let location = row["location"].as_str().unwrap_or_default();
        assert!(
            location.contains(&format!("token={TOKEN} object={object}")),
            "{row}"
        );
        let attrs = attributes(row);
        for want in [
            "sign=true",
            "extractable=false",
            "sensitive=true",
            "always-sensitive=true",
            "never-extractable=true",
            "local=true",
        ] {
            assert!(attrs.contains(want), "{role}: no {want}: {row}");
        }
    }
    assert!(!list.stdout.contains(USER_PIN), "{list:?}");

    // ca init again: idempotent, nothing changes on disk or in the token.
    let before = Snapshot::of(&[&w.c.cas, &w.c.audit]);
    let objects_before = w.hsm.objects(TOKEN);
    let again = w.ks(&["ca", "init", "-c", &config, "-o", "json"]);
    again.ok();
    for role in ROLES {
        assert_eq!(rows_by_ca(&again)[role]["status"], "exists", "{again:?}");
    }
    before.assert_same(&Snapshot::of(&[&w.c.cas, &w.c.audit]), "a second ca init");
    assert_eq!(w.hsm.objects(TOKEN), objects_before, "a second ca init");

    // sign
    let t0 = now_unix();
    let out = w.ks_dirs(&w.c.config, "sign", &[]);
    out.ok()
        .stderr_has(&["signed 12 certificates", "3 CA certificates copied"]);
    for (file, _) in CA_FILES {
        assert_eq!(
            read(&w.c.pki.join(file)),
            read(&w.c.cas.join(file)),
            "{file}"
        );
        assert!(
            !w.c.pki.join(file.replace(".crt", ".key")).exists(),
            "{file}"
        );
    }
    let infos = verify_leaves(&w.c, &case);
    for leaf in LEAVES {
        let alg = algs[ROLES
            .iter()
            .position(|r| ca_file(r) == leaf.ca_file)
            .unwrap()];
        assert_eq!(
            infos[leaf.name].signature_algorithm(),
            sig_alg(alg),
            "{}: signed by the {alg} key",
            leaf.name
        );
        assert!(
            infos[leaf.name].not_before >= t0 - 5 * 60 - 1,
            "{}",
            leaf.name
        );
    }
    check_ok(&w, &w.c.config);
    kubeadm_accepts(&w, &case);

    // The audit log: 3 CAs, 12 certificates, each naming its key URI and never the PIN.
    let records = read_audit(&w.c.audit);
    assert_eq!(records.len(), 15, "3 CA records and 12 issued");
    assert!(!read_string(&w.c.audit).contains(USER_PIN));
    let issued = issued_records(&w.c.audit);
    assert_eq!(issued.len(), 12);
    for leaf in LEAVES {
        let info = &infos[leaf.name];
        let rec = issued
            .get(&info.sha256)
            .unwrap_or_else(|| panic!("{}: no audit record", leaf.name));
        let role = ROLES.iter().find(|r| ca_file(r) == leaf.ca_file).unwrap();
        assert_eq!(rec["ca"], *role, "{rec}");
        let object = OBJECTS[ROLES.iter().position(|r| r == role).unwrap()];
        // The key URI as kubesign prints it (normalised, redacted), and the backend's identity.
        let key = rec["key"].as_str().unwrap_or_default();
        assert!(
            key.starts_with(&format!(
                "pkcs11:token={TOKEN};object={object};type=private?"
            )),
            "{rec}"
        );
        assert!(
            rec["key_detail"]
                .as_str()
                .is_some_and(|d| d.contains(&format!("token={TOKEN} object={object}"))),
            "{rec}"
        );
        assert_eq!(
            rec["serial"].as_str().unwrap_or_default(),
            info.serial.to_lowercase(),
            "{rec}"
        );
    }

    // renew: new serials, same keys, still verifying; audit +12.
    let renewed = w.ks_dirs(&w.c.config, "renew", &[]);
    renewed.ok().stderr_has(&["renewed 12 certificates"]);
    let after = verify_leaves(&w.c, &case);
    for leaf in LEAVES {
        let (old, new) = (&infos[leaf.name], &after[leaf.name]);
        assert_ne!(old.serial, new.serial, "{}: a new serial", leaf.name);
        assert_eq!(
            old.public_key, new.public_key,
            "{}: the same key",
            leaf.name
        );
        assert_eq!(old.subject, new.subject, "{}", leaf.name);
    }
    check_ok(&w, &w.c.config);
    assert_eq!(read_audit(&w.c.audit).len(), 27, "12 renewal records");
    assert_eq!(issued_records(&w.c.audit).len(), 24);

    // Not a single CA private key on disk; only kubeadm's leaf keys.
    no_ca_key_on_disk(&w, &ROLES, &[]);
}

#[test]
fn p256_rsa2048_p384_cas_in_one_token_sign_an_ecdsa_p384_cluster() {
    token_cas_sign_a_kubeadm_directory(ECDSA_P384, ["ECDSA-P256", "RSA-2048", "ECDSA-P384"]);
}

#[test]
fn p384_p256_rsa2048_cas_in_one_token_sign_an_rsa2048_cluster() {
    token_cas_sign_a_kubeadm_directory(RSA2048, ["ECDSA-P384", "ECDSA-P256", "RSA-2048"]);
}

/// kubernetes and front-proxy CAs in SoftHSM (PIN from `backends.pkcs11.pinEnv`), etcd CA in a
/// file.
#[test]
fn mixed_token_and_file_cas() {
    let Some(w) = World::new() else { return };
    w.hsm.init_token(TOKEN);
    let case = ECDSA_P256;
    w.c.generate_csr(&w.tools.kubeadm, &case);
    let module = Path::new(integration::softhsm::SOFTHSM_MODULE);
    let etcd_key = w.c.cas.join("etcd-ca.key");
    let algs = ["ECDSA-P256", "RSA-2048", "ECDSA-P384"];
    let cas = vec![
        CaEntry {
            role: "kubernetes",
            key: w.hsm.key_uri(TOKEN, "kubernetes-ca", module, false),
            certificate: w.ca_cert("kubernetes"),
            algorithm: algs[0],
        },
        CaEntry {
            role: "etcd",
            key: format!("file:{}", etcd_key.display()),
            certificate: w.ca_cert("etcd"),
            algorithm: algs[1],
        },
        CaEntry {
            role: "front-proxy",
            key: w.hsm.key_uri(TOKEN, "front-proxy-ca", module, false),
            certificate: w.ca_cert("front-proxy"),
            algorithm: algs[2],
        },
    ];
    write(
        &w.c.config,
        kubesign_config(
            &cas,
            &w.c.audit,
            "  pkcs11:\n    pinEnv: KUBESIGN_TEST_PKCS11_PIN\n    sessions: 2\n",
        ),
    );
    let config = w.c.config.display().to_string();
    let pin = [("KUBESIGN_TEST_PKCS11_PIN", OsStr::new(USER_PIN))];

    // Without the PIN variable the token keys cannot be used, and nothing is created.
    let no_pin = w.ks(&["ca", "init", "-c", &config]);
    no_pin
        .code(1)
        .stderr_has(&["KUBESIGN_TEST_PKCS11_PIN", "is not set"]);
    assert!(!w.ca_cert("kubernetes").exists(), "{no_pin:?}");
    assert!(!etcd_key.exists(), "{no_pin:?}");
    assert!(w.private_keys().is_empty());

    let init = w.ks_env(&["ca", "init", "-c", &config, "-o", "json"], &pin);
    init.ok();
    for role in ROLES {
        assert_eq!(rows_by_ca(&init)[role]["status"], "created", "{init:?}");
    }
    check_token_ca_certs(&w, algs, [true, false, true]);
    let keys = w.private_keys();
    assert_eq!(
        keys.keys().map(String::as_str).collect::<Vec<_>>(),
        ["front-proxy-ca", "kubernetes-ca"],
        "the etcd CA is not in the token"
    );
    keys.values().for_each(assert_generated_in_token);
    assert!(etcd_key.is_file());
    assert_eq!(
        integration::mode(&etcd_key) & 0o077,
        0,
        "the file key is private"
    );

    let list = w.ks_env(&["keys", "list", "-c", &config, "-o", "json"], &pin);
    list.ok();
    let rows = rows_by_ca(&list);
    assert_eq!(rows["etcd"]["backend"], "file", "{list:?}");
    assert!(
        attributes(&rows["etcd"]).contains("on-disk=true"),
        "{list:?}"
    );
    for role in ["kubernetes", "front-proxy"] {
        assert_eq!(rows[role]["backend"], "pkcs11", "{list:?}");
        assert!(attributes(&rows[role]).contains("never-extractable=true"));
        assert_eq!(rows[role]["matches_certificate"], "yes");
    }
    assert_eq!(rows["etcd"]["matches_certificate"], "yes");

    let sign = run_env(
        &w.c.kubesign,
        &[
            "sign",
            "-c",
            &config,
            "--cert-dir",
            &w.c.pki.display().to_string(),
            "--kubeconfig-dir",
            &w.c.kc.display().to_string(),
        ],
        Some(&w.c.root),
        &w.hsm.env_with(&pin),
    );
    sign.ok().stderr_has(&["signed 12 certificates"]);
    let infos = verify_leaves(&w.c, &case);
    for leaf in LEAVES {
        let want = match leaf.ca_file {
            "etcd/ca.crt" => sig_alg(algs[1]),
            "ca.crt" => sig_alg(algs[0]),
            _ => sig_alg(algs[2]),
        };
        assert_eq!(
            infos[leaf.name].signature_algorithm(),
            want,
            "{}",
            leaf.name
        );
    }
    check_ok(&w, &w.c.config);
    kubeadm_accepts(&w, &case);
    no_ca_key_on_disk(&w, &["kubernetes", "front-proxy"], &[("etcd", etcd_key)]);
}

/// `ca init` refuses a key it did not create (a key ceremony's) unless told to adopt it, never
/// creates a second key, and is idempotent.
#[test]
fn ca_init_adopts_an_existing_token_key_only_with_adopt() {
    let Some(w) = World::new() else { return };
    w.hsm.init_token(TOKEN);
    // The key ceremony: a P-256 key made by another PKCS#11 client.
    w.hsm.keypairgen(
        TOKEN,
        "kubernetes-ca",
        "c0",
        "EC:prime256v1",
        &["--sensitive"],
    );
    let ceremony_public: Vec<TokenObject> = w
        .hsm
        .objects(TOKEN)
        .into_iter()
        .filter(|o| o.label == "kubernetes-ca" && o.class.starts_with("Public Key"))
        .collect();
    assert_eq!(ceremony_public.len(), 1);
    let cas = vec![
        CaEntry {
            role: "kubernetes",
            key: w.uri("kubernetes-ca"),
            certificate: w.ca_cert("kubernetes"),
            algorithm: "ECDSA-P256",
        },
        CaEntry {
            role: "front-proxy",
            key: w.uri("front-proxy-ca"),
            certificate: w.ca_cert("front-proxy"),
            algorithm: "RSA-2048",
        },
    ];
    write(&w.c.config, kubesign_config(&cas, &w.c.audit, ""));
    let config = w.c.config.display().to_string();

    let objects = w.hsm.objects(TOKEN);
    let refused = w.ks(&["ca", "init", "-c", &config]);
    refused
        .code(1)
        .stderr_has(&["a key already exists at", "kubernetes-ca", "--adopt"]);
    assert!(!w.c.cas.exists(), "nothing written: {refused:?}");
    assert!(!w.c.audit.exists(), "nothing audited: {refused:?}");
    assert_eq!(w.hsm.objects(TOKEN), objects, "no key created");

    let adopted = w.ks(&["ca", "init", "-c", &config, "--adopt", "-o", "json"]);
    adopted.ok();
    let rows = rows_by_ca(&adopted);
    assert_eq!(rows["kubernetes"]["status"], "adopted", "{adopted:?}");
    assert_eq!(rows["front-proxy"]["status"], "created", "{adopted:?}");
    // The CA certificate carries the ceremony's key.
    w.hsm.assert_public_key(
        TOKEN,
        "kubernetes-ca",
        &cert_public_key(&w.ca_cert("kubernetes")),
        &w.c.scratch,
    );
    assert!(
        w.hsm.objects(TOKEN).contains(&ceremony_public[0]),
        "the ceremony's public key object is untouched"
    );
    let keys = w.private_keys();
    assert_eq!(
        keys.keys().map(String::as_str).collect::<Vec<_>>(),
        ["front-proxy-ca", "kubernetes-ca"],
        "no second kubernetes-ca key"
    );
    assert_never_left_the_token(&keys["kubernetes-ca"]);
    assert_generated_in_token(&keys["front-proxy-ca"]);
    let records = read_audit(&w.c.audit);
    assert_eq!(records.len(), 2, "two CA certificates recorded");

    // Idempotent, with or without --adopt.
    let before = Snapshot::of(&[&w.c.cas, &w.c.audit]);
    let objects = w.hsm.objects(TOKEN);
    for extra in [&[][..], &["--adopt"][..]] {
        let mut args = vec!["ca", "init", "-c", &config, "-o", "json"];
        args.extend_from_slice(extra);
        let out = w.ks(&args);
        out.ok();
        for role in ["kubernetes", "front-proxy"] {
            assert_eq!(rows_by_ca(&out)[role]["status"], "exists", "{out:?}");
        }
        before.assert_same(&Snapshot::of(&[&w.c.cas, &w.c.audit]), "ca init again");
        assert_eq!(w.hsm.objects(TOKEN), objects);
    }

    // Adopting a key of another type than configured is refused.
    w.hsm
        .keypairgen(TOKEN, "etcd-ca", "e0", "EC:prime256v1", &["--sensitive"]);
    let etcd_only = w.c.root.join("etcd-only.yaml");
    write(
        &etcd_only,
        kubesign_config(
            &[CaEntry {
                role: "etcd",
                key: w.uri("etcd-ca"),
                certificate: w.ca_cert("etcd"),
                algorithm: "RSA-2048",
            }],
            &w.c.audit,
            "",
        ),
    );
    let mismatch = w.ks(&[
        "ca",
        "init",
        "-c",
        &etcd_only.display().to_string(),
        "--adopt",
    ]);
    mismatch.code(1).stderr_has(&["ECDSA-P256", "RSA-2048"]);
    assert!(!w.ca_cert("etcd").exists(), "{mismatch:?}");

    // A certificate without its key is never paired with a new key.
    let orphan = w.c.root.join("orphan.yaml");
    write(
        &orphan,
        kubesign_config(
            &[CaEntry {
                role: "kubernetes",
                key: w.uri("no-such-key"),
                certificate: w.ca_cert("kubernetes"),
                algorithm: "ECDSA-P256",
            }],
            &w.c.audit,
            "",
        ),
    );
    let objects = w.hsm.objects(TOKEN);
    w.ks(&["ca", "init", "-c", &orphan.display().to_string(), "--adopt"])
        .code(1)
        .stderr_has(&["exists but the key", "no-such-key"]);
    assert_eq!(w.hsm.objects(TOKEN), objects, "no key created");
}

/// Real kubeadm makes the three CAs (certificates and keys) in a pki directory.
fn kubeadm_made_cas(w: &World, case: &KubeadmCase) {
    let cfg = w.c.scratch.join("kubeadm-cas.yaml");
    write(
        &cfg,
        kubeadm_config_with_cert_dir(case, &w.c.pki.display().to_string()),
    );
    for phase in ["ca", "etcd-ca", "front-proxy-ca"] {
        let out = run(
            &w.tools.kubeadm,
            &[
                OsStr::new("init"),
                OsStr::new("phase"),
                OsStr::new("certs"),
                OsStr::new(phase),
                OsStr::new("--config"),
                cfg.as_os_str(),
            ],
        );
        out.ok().stdout_has(&["[certs] Generating"]);
    }
    for (file, cn) in CA_FILES {
        let info = cert_info(&read(&w.c.pki.join(file)));
        assert_eq!(info.subject, format!("CN = {cn}"), "kubeadm's {file}");
        let key = w.c.pki.join(file.replace(".crt", ".key"));
        assert_eq!(
            integration::key_public_pem(&read(&key)),
            info.public_key,
            "kubeadm's {file} and its key"
        );
    }
}

/// `ca import --remove-source`: kubeadm's CA keys move into the token, the source files are
/// overwritten and removed, the directory is in external CA mode, and new certificates verify
/// against the original CA certificates. With `importedKeys: Refuse`, nothing happens.
fn import_kubeadm_cas(case: KubeadmCase) {
    let Some(w) = World::new() else { return };
    w.hsm.init_token(TOKEN);
    kubeadm_made_cas(&w, &case);
    let alg = kubeadm_alg(&case);

    // The originals, and a second hard link to each key file: after removal the link shows what
    // was left in the file's blocks.
    let originals = w.c.scratch.join("original");
    let links = w.c.scratch.join("links");
    std::fs::create_dir_all(&links).unwrap();
    let mut key_len = BTreeMap::new();
    for (file, _) in CA_FILES {
        write(&originals.join(file), read(&w.c.pki.join(file)));
        let key = w.c.pki.join(file.replace(".crt", ".key"));
        let link = links.join(file.replace('/', "_").replace(".crt", ".key"));
        std::fs::hard_link(&key, &link).unwrap();
        key_len.insert(file, read(&key).len());
    }

    write(&w.c.config, w.token_config([alg; 3], ""));
    let refuse = w.c.root.join("refuse.yaml");
    write(
        &refuse,
        w.token_config([alg; 3], "  pkcs11:\n    importedKeys: Refuse\n"),
    );
    let from = w.c.pki.display().to_string();

    // importedKeys: Refuse: refused, nothing changes anywhere.
    let before = Snapshot::of(&[&w.c.pki, &w.c.cas, &links]);
    let refused = w.ks(&[
        "ca",
        "import",
        "-c",
        &refuse.display().to_string(),
        "--from",
        &from,
        "--remove-source",
    ]);
    refused
        .code(1)
        .stderr_has(&["importing keys is refused by the imported-key policy"]);
    before.assert_same(
        &Snapshot::of(&[&w.c.pki, &w.c.cas, &links]),
        "a refused import",
    );
    // The audit log may have been opened (it must be writable before anything is imported),
    // but records nothing.
    assert!(
        !w.c.audit.exists() || read_audit(&w.c.audit).is_empty(),
        "a refused import is not audited"
    );
    assert!(w.hsm.objects(TOKEN).is_empty(), "nothing in the token");

    // The default (Warn): imported, proved, sources destroyed.
    let imported = w.ks(&[
        "ca",
        "import",
        "-c",
        &w.c.config.display().to_string(),
        "--from",
        &from,
        "--remove-source",
        "-o",
        "json",
    ]);
    imported
        .ok()
        .stderr_has(&["was not generated in the token"]);
    let rows = rows_by_ca(&imported);
    for (role, (file, _)) in ROLES.iter().zip(CA_FILES) {
        let row = &rows[*role];
        assert_eq!(row["status"], "imported, source removed", "{imported:?}");
        assert_eq!(row["algorithm"], alg, "{row}");
        assert_eq!(
            row["from"].as_str(),
            Some(
                w.c.pki
                    .join(file.replace(".crt", ".key"))
                    .display()
                    .to_string()
                    .as_str()
            ),
            "{row}"
        );
    }
    for (file, _) in CA_FILES {
        let key = w.c.pki.join(file.replace(".crt", ".key"));
        assert!(!key.exists(), "{} still exists", key.display());
        let link = links.join(file.replace('/', "_").replace(".crt", ".key"));
        let left = read(&link);
        assert_eq!(
            left.len(),
            key_len[file],
            "{file}: the file keeps its length"
        );
        assert!(
            left.iter().all(|b| *b == 0),
            "{file}: the key file was removed without being overwritten"
        );
        assert_eq!(
            read(&w.c.pki.join(file)),
            read(&originals.join(file)),
            "{file}: the CA certificate stays"
        );
        assert_eq!(
            read(&w.c.cas.join(file)),
            read(&originals.join(file)),
            "{file}: copied to the configured path"
        );
    }

    // Audited: one key-imported record per CA, naming its certificate.
    let records = read_audit(&w.c.audit);
    assert_eq!(records.len(), 3, "{records:?}");
    for (rec, (file, _)) in records.iter().zip(CA_FILES) {
        assert_eq!(rec["event"], "key-imported", "{rec}");
        assert_eq!(
            rec["certificate_sha256"].as_str(),
            Some(cert_info(&read(&originals.join(file))).sha256.as_str()),
            "{rec}"
        );
    }

    // In the token: sensitive, not extractable, and marked as imported.
    let keys = w.private_keys();
    assert_eq!(
        keys.keys().map(String::as_str).collect::<Vec<_>>(),
        ["etcd-ca", "front-proxy-ca", "kubernetes-ca"]
    );
    for (role, object) in ROLES.iter().zip(OBJECTS) {
        let key = &keys[object];
        let flags = key.access_flags();
        assert!(flags.iter().any(|f| f == "sensitive"), "{key:?}");
        for no in [
            "extractable",
            "always sensitive",
            "never extractable",
            "local",
        ] {
            assert!(!flags.iter().any(|f| f == no), "{object}: {no}: {key:?}");
        }
        // The token's key is the original CA's.
        w.hsm.assert_public_key(
            TOKEN,
            object,
            &cert_public_key(&originals.join(ca_file(role))),
            &w.c.scratch,
        );
    }
    let list = w.ks(&[
        "keys",
        "list",
        "-c",
        &w.c.config.display().to_string(),
        "-o",
        "json",
    ]);
    list.ok().stderr_has(&["was not generated in the token"]);
    for (role, row) in rows_by_ca(&list) {
        let attrs = attributes(&row);
        for want in [
            "sensitive=true",
            "extractable=false",
            "always-sensitive=false",
            "local=false",
        ] {
            assert!(attrs.contains(want), "{role}: {want}: {row}");
        }
        assert_eq!(row["matches_certificate"], "yes", "{row}");
    }

    // The pki directory is now in kubeadm's external CA mode: sign a fresh generate-csr into it
    // with the imported keys.
    w.c.generate_csr(&w.tools.kubeadm, &case);
    let sign = w.ks_dirs(&w.c.config, "sign", &[]);
    sign.ok().stderr_has(&["signed 12 certificates"]);
    let infos = verify_leaves(&w.c, &case);
    for (file, _) in CA_FILES {
        assert_eq!(
            read(&w.c.pki.join(file)),
            read(&originals.join(file)),
            "{file}"
        );
        let mine: Vec<PathBuf> = LEAVES
            .iter()
            .filter(|l| l.ca_file == file)
            .map(|l| {
                let p =
                    w.c.scratch
                        .join(format!("{}.pem", l.name.replace('/', "_")));
                write(&p, w.c.leaf_cert_pem(l));
                p
            })
            .collect();
        let (ok, out) = openssl_verify_files(&originals.join(file), &mine, None);
        assert!(
            ok.values().all(|v| *v),
            "verifies against the original {file}\n{out:?}"
        );
    }
    assert_eq!(infos.len(), 12);
    check_ok(&w, &w.c.config);
    kubeadm_accepts(&w, &case);
    no_ca_key_on_disk(&w, &ROLES, &[]);
    assert!(!read_string(&w.c.audit).contains(USER_PIN));
}

#[test]
fn ca_import_moves_kubeadm_rsa2048_cas_into_the_token() {
    import_kubeadm_cas(RSA2048);
}

#[test]
fn ca_import_moves_kubeadm_p384_cas_into_the_token() {
    import_kubeadm_cas(ECDSA_P384);
}

/// An extractable key can leave the token: refused by default, usable only when the policy is
/// relaxed.
#[test]
fn an_extractable_key_is_refused_unless_the_policy_allows_it() {
    let Some(w) = World::new() else { return };
    w.hsm.init_token(TOKEN);
    w.hsm.keypairgen(
        TOKEN,
        "kubernetes-ca",
        "0e",
        "EC:prime256v1",
        &["--extractable"],
    );
    let key = &w.private_keys()["kubernetes-ca"];
    assert!(
        key.access_flags().iter().any(|f| f == "extractable"),
        "pkcs11-tool made an extractable key: {key:?}"
    );
    let entry = |algorithm| {
        vec![CaEntry {
            role: "kubernetes",
            key: w.uri("kubernetes-ca"),
            certificate: w.ca_cert("kubernetes"),
            algorithm,
        }]
    };
    write(
        &w.c.config,
        kubesign_config(&entry("ECDSA-P256"), &w.c.audit, ""),
    );
    let config = w.c.config.display().to_string();
    for args in [
        vec!["ca", "init", "-c", &config, "--adopt"],
        vec!["keys", "list", "-c", &config],
    ] {
        let out = w.ks(&args);
        out.code(1).stderr_has(&[
            "CKA_EXTRACTABLE=true",
            "refused by the key policy",
            "warn or allow",
        ]);
        assert!(!w.ca_cert("kubernetes").exists(), "{out:?}");
    }

    let lenient = w.c.root.join("lenient.yaml");
    write(
        &lenient,
        kubesign_config(
            &entry("ECDSA-P256"),
            &w.c.audit,
            "  pkcs11:\n    extractableKeys: Warn\n",
        ),
    );
    let lenient = lenient.display().to_string();
    let adopted = w.ks(&["ca", "init", "-c", &lenient, "--adopt", "-o", "json"]);
    adopted.ok().stderr_has(&["CKA_EXTRACTABLE=true"]);
    assert_eq!(rows_by_ca(&adopted)["kubernetes"]["status"], "adopted");
    let list = w.ks(&["keys", "list", "-c", &lenient, "-o", "json"]);
    list.ok();
    let row = &rows_by_ca(&list)["kubernetes"];
    assert!(attributes(row).contains("extractable=true"), "{row}");
    assert_eq!(row["matches_certificate"], "yes");
    // Still refused under the default policy, certificate or not.
    w.ks(&["keys", "list", "-c", &config])
        .code(1)
        .stderr_has(&["CKA_EXTRACTABLE=true"]);
}

/// A refusal by a key policy must say which configuration setting changes it: the CLI user
/// writes `backends.pkcs11.extractableKeys` / `importedKeys`, not a Rust API field.
#[test]
fn policy_refusals_name_the_configuration_setting() {
    let Some(w) = World::new() else { return };
    w.hsm.init_token(TOKEN);
    w.hsm.keypairgen(
        TOKEN,
        "kubernetes-ca",
        "0e",
        "EC:prime256v1",
        &["--extractable"],
    );
    let cas = vec![CaEntry {
        role: "kubernetes",
        key: w.uri("kubernetes-ca"),
        certificate: w.ca_cert("kubernetes"),
        algorithm: "ECDSA-P256",
    }];
    write(&w.c.config, kubesign_config(&cas, &w.c.audit, ""));
    let extractable = w.ks(&["keys", "list", "-c", &w.c.config.display().to_string()]);
    extractable.code(1);

    kubeadm_made_cas(&w, &ECDSA_P256);
    let refuse = w.c.root.join("refuse.yaml");
    let cas = vec![CaEntry {
        role: "etcd",
        key: w.uri("etcd-ca"),
        certificate: w.ca_cert("etcd"),
        algorithm: "ECDSA-P256",
    }];
    write(
        &refuse,
        kubesign_config(&cas, &w.c.audit, "  pkcs11:\n    importedKeys: Refuse\n"),
    );
    let imported = w.ks(&[
        "ca",
        "import",
        "-c",
        &refuse.display().to_string(),
        "--from",
        &w.c.pki.display().to_string(),
    ]);
    imported.code(1);

    extractable.stderr_has(&["backends.pkcs11.extractableKeys"]);
    imported.stderr_has(&["backends.pkcs11.importedKeys"]);
}

/// Using a token prints nothing at error level when nothing is wrong.
#[test]
fn token_commands_print_no_spurious_errors() {
    let Some(w) = World::new() else { return };
    w.hsm.init_token(TOKEN);
    write(
        &w.c.config,
        w.token_config(["ECDSA-P256", "RSA-2048", "ECDSA-P384"], ""),
    );
    let config = w.c.config.display().to_string();
    w.ks(&["ca", "init", "-c", &config]).ok();
    let list = w.ks(&["keys", "list", "-c", &config]);
    list.ok();
    let errors: Vec<&str> = list
        .stderr
        .lines()
        .filter(|l| l.contains("ERROR"))
        .collect();
    assert!(
        errors.is_empty(),
        "`kubesign keys list` succeeded but logged {} error lines, e.g. {:?}",
        errors.len(),
        errors.first()
    );
}
