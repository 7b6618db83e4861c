//! SoftHSM 2 for the PKCS#11 end-to-end tests, fault tests and benchmark: a token directory and
//! `SOFTHSM2_CONF` file per test, tokens initialised with `softhsm2-util`, objects inspected with
//! OpenSC's `pkcs11-tool` (an independent PKCS#11 client), the fault-injecting shim module
//! (`integration/pkcs11-shim`), commands run with an explicit environment, and the re-exec
//! pattern for in-process tests.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once, at `C_Initialize`, and the workspace forbids `unsafe` (so
//! no `std::env::set_var`): the configuration reaches SoftHSM only through the environment of a
//! child process — `kubesign`, `softhsm2-util`, `pkcs11-tool`, or this very test binary re-run for
//! one test ([`reexec`]). Nothing here touches the environment of the test process itself, so
//! tests stay independent and parallel-safe.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::{Output, require, workspace_root, write};

/// The SoftHSM 2 module (Debian package softhsm2).
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The security officer PIN of every test token.
pub const SO_PIN: &str = "87654321";
/// The user PIN of every test token.
pub const USER_PIN: &str = "12345678";
/// Set in a re-executed test process: the directory its parent prepared.
pub const CHILD_ENV: &str = "KUBESIGN_IT_PKCS11_CHILD";

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            let p = d.join(name);
            fs::metadata(&p).is_ok_and(|m| m.is_file())
        })
    })
}

fn find_softhsm() -> Result<(), String> {
    let mut missing = Vec::new();
    for tool in ["softhsm2-util", "pkcs11-tool"] {
        if !on_path(tool) {
            missing.push(tool.to_owned());
        }
    }
    if !Path::new(SOFTHSM_MODULE).is_file() {
        missing.push(SOFTHSM_MODULE.to_owned());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing {}: install with `apt-get install -y softhsm2 opensc` (scripts/testbed.sh does this)",
            missing.join(", ")
        ))
    }
}

/// SoftHSM 2 (module, `softhsm2-util`) and OpenSC's `pkcs11-tool`, or `None` after a SKIPPED
/// line (a panic under `CI=true`).
pub fn softhsm() -> Option<()> {
    static FOUND: OnceLock<Result<(), String>> = OnceLock::new();
    require(
        "SoftHSM 2 and pkcs11-tool",
        FOUND.get_or_init(find_softhsm).clone(),
    )
}

/// The cargo target directory: `CARGO_TARGET_DIR` (relative to the workspace) or
/// `<workspace>/target`, as for the kubesign binary.
pub fn target_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    if target.is_relative() {
        workspace_root().join(target)
    } else {
        target
    }
}

fn find_shim() -> Result<PathBuf, String> {
    let how = "build it with `cargo build -p pkcs11-shim` before `cargo test` (tests cannot build it: cargo \
               holds the build lock), or point KUBESIGN_PKCS11_SHIM at it";
    if let Some(p) = std::env::var_os("KUBESIGN_PKCS11_SHIM").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "KUBESIGN_PKCS11_SHIM={} is not a file; {how}",
                p.display()
            ))
        };
    }
    let target = target_dir();
    // The debug build first (what `cargo build -p pkcs11-shim` makes), then release.
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("libpkcs11_shim.so");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format!(
        "the fault-injecting PKCS#11 module is not at {}; {how}",
        target.join("debug/libpkcs11_shim.so").display()
    ))
}

/// The fault-injecting PKCS#11 module `libpkcs11_shim.so`, or `None` after a SKIPPED line.
pub fn shim_module() -> Option<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    require(
        "the pkcs11-shim module",
        FOUND.get_or_init(find_shim).clone(),
    )
}

/// Runs `program args...` with `env` added (and the variables kubesign reads implicitly, and
/// the host's SoftHSM and shim settings, removed), in `cwd` if given.
pub fn run_env<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    cwd: Option<&Path>,
    env: &[(OsString, OsString)],
) -> Output {
    crate::exec_with(
        program,
        args,
        crate::Exec {
            env: env.to_vec(),
            remove: vec![
                "SOFTHSM2_CONF",
                "KUBESIGN_SHIM_CONTROL",
                "KUBESIGN_SHIM_LOG",
                "KUBESIGN_SHIM_MODULE",
            ],
            cwd,
            stdin: None,
        },
    )
}

/// One object as `pkcs11-tool --list-objects` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenObject {
    /// The header line, e.g. `Private Key Object; EC` or `Public Key Object; RSA 2048 bits`.
    pub class: String,
    /// `label:`.
    pub label: String,
    /// `ID:` (hex).
    pub id: String,
    /// `Usage:`.
    pub usage: String,
    /// `Access:` (e.g. `sensitive, always sensitive, never extractable, local`).
    pub access: String,
    /// `EC_POINT:` of an EC public key (hex of the DER OCTET STRING holding the SEC1 point).
    pub ec_point: String,
}

impl TokenObject {
    /// Whether this is a private key.
    pub fn is_private_key(&self) -> bool {
        self.class.starts_with("Private Key Object")
    }

    /// The comma-separated access flags.
    pub fn access_flags(&self) -> Vec<String> {
        self.access
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// Parses `pkcs11-tool --list-objects` output.
pub fn parse_objects(text: &str) -> Vec<TokenObject> {
    let mut out: Vec<TokenObject> = Vec::new();
    for line in text.lines() {
        if !line.starts_with(' ') && line.contains("Object") {
            out.push(TokenObject {
                class: line.trim().to_owned(),
                label: String::new(),
                id: String::new(),
                usage: String::new(),
                access: String::new(),
                ec_point: String::new(),
            });
            continue;
        }
        let Some(obj) = out.last_mut() else { continue };
        let t = line.trim();
        if let Some((k, v)) = t.split_once(':') {
            let v = v.trim().to_owned();
            match k.trim() {
                "label" => obj.label = v,
                "ID" => obj.id = v,
                "Usage" => obj.usage = v,
                "Access" => obj.access = v,
                "EC_POINT" => obj.ec_point = v,
                _ => {}
            }
        }
    }
    out
}

/// One test's SoftHSM: its own token directory, `SOFTHSM2_CONF` file and PIN file.
#[derive(Clone, Debug)]
pub struct SoftHsm {
    /// The directory holding everything below.
    pub dir: PathBuf,
    /// `directories.tokendir`.
    pub tokens: PathBuf,
    /// The `SOFTHSM2_CONF` file.
    pub conf: PathBuf,
    /// A file holding [`USER_PIN`], mode 0600 (for `pin-source=`).
    pub pin_file: PathBuf,
}

impl SoftHsm {
    /// Creates the token directory, configuration and PIN file under `dir`.
    pub fn new(dir: &Path) -> SoftHsm {
        let tokens = dir.join("tokens");
        fs::create_dir_all(&tokens)
            .unwrap_or_else(|e| panic!("creating {}: {e}", tokens.display()));
        let conf = dir.join("softhsm2.conf");
        write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        );
        let pin_file = dir.join("user.pin");
        write(&pin_file, format!("{USER_PIN}\n"));
        set_mode(&pin_file, 0o600);
        SoftHsm {
            dir: dir.to_owned(),
            tokens,
            conf,
            pin_file,
        }
    }

    /// The environment a process needs to see this SoftHSM: `SOFTHSM2_CONF`.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        vec![(
            OsString::from("SOFTHSM2_CONF"),
            self.conf.clone().into_os_string(),
        )]
    }

    /// [`SoftHsm::env`] plus `extra`.
    pub fn env_with(&self, extra: &[(&str, &OsStr)]) -> Vec<(OsString, OsString)> {
        let mut env = self.env();
        env.extend(
            extra
                .iter()
                .map(|(k, v)| (OsString::from(k), v.to_os_string())),
        );
        env
    }

    /// Initialises a token labelled `label` with [`SO_PIN`] and [`USER_PIN`].
    #[track_caller]
    pub fn init_token(&self, label: &str) {
        let out = run_env(
            Path::new("softhsm2-util"),
            &[
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                SO_PIN,
                "--pin",
                USER_PIN,
            ],
            None,
            &self.env(),
        );
        out.ok();
        assert!(
            out.stdout.contains("The token has been initialized"),
            "{out:?}"
        );
    }

    /// Runs `pkcs11-tool --module SOFTHSM --token-label LABEL [--login --pin PIN] args...`.
    pub fn tool(&self, token: &str, login: bool, args: &[&str]) -> Output {
        let mut all = vec!["--module", SOFTHSM_MODULE, "--token-label", token];
        if login {
            all.extend(["--login", "--pin", USER_PIN]);
        }
        all.extend_from_slice(args);
        run_env(Path::new("pkcs11-tool"), &all, None, &self.env())
    }

    /// Every object on the token, as `pkcs11-tool --login --list-objects` shows it.
    #[track_caller]
    pub fn objects(&self, token: &str) -> Vec<TokenObject> {
        let out = self.tool(token, true, &["--list-objects"]);
        out.ok();
        parse_objects(&out.stdout)
    }

    /// The private keys on the token, by label.
    #[track_caller]
    pub fn private_keys(&self, token: &str) -> BTreeMap<String, TokenObject> {
        self.objects(token)
            .into_iter()
            .filter(TokenObject::is_private_key)
            .map(|o| (o.label.clone(), o))
            .collect()
    }

    /// Generates a key pair in the token with `pkcs11-tool --keypairgen` (`key_type` e.g.
    /// `EC:prime256v1` or `rsa:2048`), with `extra` flags such as `--extractable`.
    #[track_caller]
    pub fn keypairgen(
        &self,
        token: &str,
        label: &str,
        id_hex: &str,
        key_type: &str,
        extra: &[&str],
    ) {
        let mut args = vec![
            "--keypairgen",
            "--key-type",
            key_type,
            "--label",
            label,
            "--id",
            id_hex,
            "--usage-sign",
        ];
        args.extend_from_slice(extra);
        self.tool(token, true, &args).ok();
    }

    /// Asserts that the public key object labelled `label` on the token is `spki_pem` (a PEM
    /// SubjectPublicKeyInfo, e.g. a certificate's key as openssl prints it). RSA keys are read
    /// with `pkcs11-tool --read-object` and converted by openssl; EC keys are compared by their
    /// `CKA_EC_POINT` as `pkcs11-tool --list-objects` prints it (OpenSC 0.23's `--read-object`
    /// fails on P-384 keys with "cannot create EVP_PKEY").
    #[track_caller]
    pub fn assert_public_key(&self, token: &str, label: &str, spki_pem: &str, scratch: &Path) {
        let public: Vec<TokenObject> = self
            .objects(token)
            .into_iter()
            .filter(|o| o.class.starts_with("Public Key Object") && o.label == label)
            .collect();
        assert_eq!(
            public.len(),
            1,
            "one public key {label:?} on {token}: {public:?}"
        );
        let object = &public[0];
        if object.class.starts_with("Public Key Object; EC") {
            let spki = crate::pem_der(spki_pem.as_bytes(), "PUBLIC KEY");
            let hex: String = object.ec_point.to_lowercase();
            // DER OCTET STRING (04, one length byte for P-256/P-384) around the SEC1 point.
            let point = hex.get(4..).unwrap_or_default();
            let want: String = spki[spki.len().saturating_sub(point.len() / 2)..]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert!(
                point.len() == 130 || point.len() == 194,
                "{label}: unexpected EC_POINT {hex}"
            );
            assert_eq!(
                point, want,
                "{label}: the token's EC point is not the expected key's"
            );
            return;
        }
        let der = scratch.join(format!("pubkey-{token}-{label}.der"));
        self.tool(
            token,
            false,
            &[
                "--read-object",
                "--type",
                "pubkey",
                "--label",
                label,
                "--output-file",
                &der.display().to_string(),
            ],
        )
        .ok();
        let out = crate::openssl(&[
            OsStr::new("pkey"),
            OsStr::new("-pubin"),
            OsStr::new("-inform"),
            OsStr::new("DER"),
            OsStr::new("-in"),
            der.as_os_str(),
            OsStr::new("-pubout"),
        ]);
        out.ok();
        let _ = fs::remove_file(&der);
        assert_eq!(out.stdout, spki_pem, "{label}: the token's public key");
    }

    /// A `pkcs11:` key URI for `object` on `token` through `module`, with the PIN from
    /// [`SoftHsm::pin_file`] (or, with `pin_source: false`, no PIN in the URI).
    pub fn key_uri(&self, token: &str, object: &str, module: &Path, pin_source: bool) -> String {
        let mut uri = format!(
            "pkcs11:token={token};object={object};type=private?module-path={}",
            module.display()
        );
        if pin_source {
            uri.push_str(&format!("&pin-source={}", self.pin_file.display()));
        }
        uri
    }
}

/// Sets permission bits.
pub fn set_mode(p: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(p, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
    }
    #[cfg(not(unix))]
    let _ = (p, mode);
}

/// One CA in a kubesign configuration written by [`kubesign_config`].
#[derive(Clone, Debug)]
pub struct CaEntry {
    /// `kubernetes`, `etcd` or `front-proxy`.
    pub role: &'static str,
    /// The key URI.
    pub key: String,
    /// The CA certificate path.
    pub certificate: PathBuf,
    /// `keyAlgorithm`.
    pub algorithm: &'static str,
}

/// A kubesign configuration with `cas`, the audit log at `audit`, and `backends` (YAML placed
/// under `backends:`, indented by the caller with two spaces, or empty).
pub fn kubesign_config(cas: &[CaEntry], audit: &Path, backends: &str) -> String {
    let mut text =
        String::from("apiVersion: kubesign.dev/v1alpha1\nkind: SignerConfiguration\ncas:\n");
    for ca in cas {
        text.push_str(&format!(
            "  {}:\n    key: \"{}\"\n    certificate: {}\n    keyAlgorithm: {}\n",
            ca.role,
            ca.key,
            ca.certificate.display(),
            ca.algorithm
        ));
    }
    text.push_str(&format!("audit:\n  path: {}\n", audit.display()));
    if !backends.is_empty() {
        text.push_str("backends:\n");
        text.push_str(backends);
        if !backends.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

/// In a process re-executed by [`reexec`]: the directory its parent prepared.
pub fn child_dir() -> Option<PathBuf> {
    std::env::var_os(CHILD_ENV).map(PathBuf::from)
}

/// Re-runs this test binary for the one test `name` (libtest's name, e.g. `token_removal`) with
/// `env` and [`CHILD_ENV`]=`dir`, prints its output, and asserts that the test ran and passed.
#[track_caller]
pub fn reexec(name: &str, dir: &Path, env: &[(OsString, OsString)]) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args([
        name,
        "--exact",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, dir)
    .env_remove("SOFTHSM2_CONF")
    .env_remove("KUBESIGN_SHIM_CONTROL")
    .env_remove("KUBESIGN_SHIM_LOG")
    .env_remove("KUBESIGN_SHIM_MODULE")
    .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("re-running the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success(),
        "test {name} failed in its child process (output above)"
    );
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "test {name} did not run in its child process"
    );
}

// ------------------------------------------------------------------------------------------------
// Checking a signed kubeadm tree and the disk, with openssl.
// ------------------------------------------------------------------------------------------------

/// Checks the 12 certificates of a signed kubeadm tree with openssl: each verifies (with every
/// purpose kubeadm gives it) against the CA certificate in `pki` that kubeadm's table names and
/// against neither of the other two; issuer, subject, SANs and public key are the CA's and the
/// CSR's; usages and key identifiers are kubeadm's; serials differ. Returns each leaf's
/// certificate by name.
#[track_caller]
pub fn verify_leaves(
    c: &crate::Cluster,
    case: &crate::KubeadmCase,
) -> BTreeMap<&'static str, crate::CertInfo> {
    use crate::{
        CA_FILES, LEAVES, cert_info, csr_info, key_public_pem, openssl_verify_files, read,
    };
    let dir = tempfile::Builder::new()
        .prefix("leaves-")
        .tempdir_in(&c.scratch)
        .expect("a scratch directory");
    let file = |name: &str| dir.path().join(format!("{}.pem", name.replace('/', "_")));
    let mut infos = BTreeMap::new();
    let cas: BTreeMap<&str, crate::CertInfo> = CA_FILES
        .iter()
        .map(|(f, _)| (*f, cert_info(&read(&c.pki.join(f)))))
        .collect();
    for leaf in LEAVES {
        let n = leaf.name;
        let pem = c.leaf_cert_pem(&leaf);
        write(&file(n), &pem);
        let info = cert_info(&pem);
        let csr = csr_info(&read(&c.leaf_csr(&leaf)));
        let ca = &cas[leaf.ca_file];
        assert_eq!(info.issuer, ca.subject, "{n}: issuer");
        assert_eq!(info.subject, leaf.subject_for(case.node), "{n}: subject");
        assert_eq!(info.subject, csr.subject, "{n}: subject = CSR subject");
        assert_eq!(info.public_key, csr.public_key, "{n}: key = CSR key");
        assert_eq!(
            info.public_key,
            key_public_pem(&c.leaf_key_pem(&leaf)),
            "{n}: the certificate matches the private key kubeadm wrote"
        );
        assert_eq!(
            info.ext("X509v3 Subject Alternative Name")
                .map(|e| e.value.as_str()),
            case.sans(n),
            "{n}: SANs"
        );
        assert_eq!(
            info.ext("X509v3 Basic Constraints")
                .map(|e| (e.critical, e.value.as_str())),
            Some((true, "CA:FALSE")),
            "{n}: basicConstraints"
        );
        assert_eq!(
            info.ext("X509v3 Key Usage")
                .map(|e| (e.critical, e.value.as_str())),
            Some((true, "Digital Signature, Key Encipherment")),
            "{n}: keyUsage"
        );
        assert_eq!(
            info.ext("X509v3 Extended Key Usage")
                .map(|e| e.value.as_str()),
            Some(leaf.eku_text()),
            "{n}: extendedKeyUsage"
        );
        assert!(info.aki().is_some(), "{n}: no AKI");
        assert_eq!(info.aki(), ca.ski(), "{n}: AKI = the CA's SKI");
        assert!(info.not_after <= ca.not_after, "{n}: outlives its CA");
        infos.insert(n, info);
    }
    for (ca_file, _) in CA_FILES {
        let ca = c.pki.join(ca_file);
        for purpose in ["sslserver", "sslclient"] {
            let mine: Vec<PathBuf> = LEAVES
                .iter()
                .filter(|l| l.ca_file == ca_file && l.purposes().contains(&purpose))
                .map(|l| file(l.name))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let (ok, out) = openssl_verify_files(&ca, &mine, Some(purpose));
            for (f, verified) in ok {
                assert!(
                    verified,
                    "{} does not verify against {ca_file} for {purpose}\n{out:?}",
                    f.display()
                );
            }
        }
        let others: Vec<PathBuf> = LEAVES
            .iter()
            .filter(|l| l.ca_file != ca_file)
            .map(|l| file(l.name))
            .collect();
        let (ok, out) = openssl_verify_files(&ca, &others, None);
        for (f, verified) in ok {
            assert!(
                !verified,
                "{} must not verify against {ca_file}\n{out:?}",
                f.display()
            );
        }
    }
    let serials: std::collections::BTreeSet<&str> =
        infos.values().map(|i| i.serial.as_str()).collect();
    assert_eq!(serials.len(), 12, "serials must all differ");
    infos
}

/// A private key found on disk.
#[derive(Clone, Debug)]
pub struct KeyOnDisk {
    /// The file it is in.
    pub file: PathBuf,
    /// Where in the file: `PEM` or the kubeconfig field `client-key-data`.
    pub how: &'static str,
    /// Its public key, PEM, as openssl derives it.
    pub public_key: String,
}

/// Every private key under `root`, in any file: PEM blocks whose label ends in `PRIVATE KEY`
/// (PKCS#8, SEC1, PKCS#1), also inside base64 `client-key-data` of kubeconfigs. Files that are not
/// text (SoftHSM's object store) hold no PEM and are skipped by content, not by name.
pub fn private_keys_under(root: &Path) -> Vec<KeyOnDisk> {
    use base64::Engine;
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries =
            fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
            let path = entry.path();
            let ft = entry.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            if !ft.is_file() {
                continue;
            }
            let bytes = crate::read(&path);
            let text = String::from_utf8_lossy(&bytes);
            let mut pems: Vec<(&'static str, Vec<u8>)> = Vec::new();
            if text.contains("-----BEGIN") {
                pems.push(("PEM", bytes.clone()));
            }
            for line in text.lines() {
                if let Some(v) = line.trim().strip_prefix("client-key-data:") {
                    let v = v.trim().trim_matches('"');
                    if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(v) {
                        pems.push(("client-key-data", decoded));
                    }
                }
            }
            for (how, pem) in pems {
                for (label, der) in crate::pem_blocks(&pem) {
                    if !label.ends_with("PRIVATE KEY") {
                        continue;
                    }
                    let block = crate::pem_encode(&label, &der);
                    let public_key = crate::key_public_pem(block.as_bytes());
                    out.push(KeyOnDisk {
                        file: path.clone(),
                        how,
                        public_key,
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

/// The public key (PEM) of a certificate file, as openssl prints it.
#[track_caller]
pub fn cert_public_key(cert: &Path) -> String {
    crate::cert_info(&crate::read(cert)).public_key
}

/// The lines of a shim log (`C_Login rv=160`, `C_Sign injected=179`, ...), empty when the file
/// does not exist.
pub fn shim_log_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}
