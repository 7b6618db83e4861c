//! End-to-end test helpers: locating the real components (the `kubesign` binary, kubeadm,
//! openssl) and skipping or failing loudly when one is missing, running commands, temporary
//! kubeadm trees, byte-exact directory snapshots, and openssl-based certificate inspection.
//!
//! Nothing here re-implements what kubesign does: certificates are inspected with openssl (the
//! independent verifier) and expectations come from kubeadm's table as measured in
//! `testdata/kubeadm/FINDINGS.md`, not from `signer-api`.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_yaml::Value;

pub mod bench;
pub mod control_plane;
pub mod kms_fault_proxy;
pub mod softhsm;

// ------------------------------------------------------------------------------------------------
// Components: found, skipped, or a loud failure in CI.
// ------------------------------------------------------------------------------------------------

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Whether the tests run in CI (`CI=true`), where a missing component is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
        .unwrap_or(false)
}

/// The one place that decides what happens when a component a test needs is unavailable.
///
/// `found` is the component or why it is unavailable (including how to get it). In CI
/// (`CI=true`) a missing component panics with that message; elsewhere the test is skipped with a
/// `SKIPPED: <test>: <component>: <why>` line written straight to the process's standard error
/// (not through the test harness's capture, so it is visible in a normal `cargo test` run) and
/// `None` is returned: the caller returns early.
pub fn require<T>(component: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(why) => {
            let test = std::thread::current()
                .name()
                .unwrap_or("<unnamed test>")
                .to_owned();
            if in_ci() {
                panic!("{test}: {component} is required when CI=true but is unavailable: {why}");
            }
            let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {component}: {why}");
            None
        }
    }
}

pub(crate) fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

fn find_kubesign() -> Result<PathBuf, String> {
    let how = "build it with `cargo build -p cli --bin kubesign` before `cargo test` (tests cannot build it: \
               cargo holds the build lock), or point KUBESIGN_BIN at it";
    if let Some(p) = std::env::var_os("KUBESIGN_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(format!(
                "KUBESIGN_BIN={} is not an executable file; {how}",
                p.display()
            ))
        };
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
    let p = target.join("debug").join("kubesign");
    if is_executable(&p) {
        Ok(p)
    } else {
        Err(format!(
            "the kubesign binary is not at {}; {how}",
            p.display()
        ))
    }
}

/// What `scripts/testbed.sh paths` prints (once per process).
pub(crate) fn testbed_paths() -> &'static Result<Vec<PathBuf>, String> {
    static PATHS: OnceLock<Result<Vec<PathBuf>, String>> = OnceLock::new();
    PATHS.get_or_init(|| {
        let script = workspace_root().join("scripts/testbed.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("paths")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {} paths: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} paths failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| PathBuf::from(l.trim()))
            .collect())
    })
}

fn find_kubeadm() -> Result<PathBuf, String> {
    let how = "run `scripts/testbed.sh` (builds kubeadm v1.35.4 into ~/.cache/kubesign) or set KUBEADM=/path/to/kubeadm";
    let path = match std::env::var_os("KUBEADM").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => {
            let paths = testbed_paths()
                .as_ref()
                .map_err(|e| format!("{e}; {how}"))?;
            let first = paths.iter().find(|p| p.ends_with("kubeadm"));
            match first {
                Some(p) => p.clone(),
                None => {
                    return Err(format!(
                        "`scripts/testbed.sh paths` printed no kubeadm path; {how}"
                    ));
                }
            }
        }
    };
    if !is_executable(&path) {
        return Err(format!("kubeadm is not at {}; {how}", path.display()));
    }
    let out = Command::new(&path)
        .args(["version", "-o", "short"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{} does not run ({e}); {how}", path.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`{} version` failed: {}; {how}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(path)
}

fn find_openssl() -> Result<PathBuf, String> {
    let how = "install it (`apt-get install openssl`; scripts/testbed.sh does this)";
    match Command::new("openssl")
        .arg("version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => Ok(PathBuf::from("openssl")),
        Ok(o) => Err(format!(
            "`openssl version` failed: {}; {how}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("openssl is not on PATH ({e}); {how}")),
    }
}

fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The `kubesign` binary under test (`KUBESIGN_BIN`, else `$CARGO_TARGET_DIR/debug/kubesign`,
/// else `<workspace>/target/debug/kubesign`), or `None` after a SKIPPED line.
pub fn kubesign_bin() -> Option<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    require(
        "the kubesign binary",
        FOUND.get_or_init(find_kubesign).clone(),
    )
}

/// The real kubeadm (`KUBEADM`, else what `scripts/testbed.sh paths` prints), or `None` after a
/// SKIPPED line.
pub fn kubeadm_bin() -> Option<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    require("kubeadm", FOUND.get_or_init(find_kubeadm).clone())
}

/// openssl on PATH, or `None` after a SKIPPED line.
pub fn openssl_bin() -> Option<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    require("openssl", FOUND.get_or_init(find_openssl).clone())
}

/// Root privileges (for `kubeadm --rootfs`, which chroots), or `None` after a SKIPPED line.
pub fn root(purpose: &str) -> Option<()> {
    let found = match effective_uid() {
        Some(0) => Ok(()),
        Some(uid) => Err(format!(
            "{purpose} needs root (running as uid {uid}); run the tests as root, e.g. in the CI container"
        )),
        None => Err(format!(
            "{purpose} needs root and the effective uid cannot be read from /proc/self/status"
        )),
    };
    require("root privileges", found)
}

/// Every real component the kubeadm end-to-end tests need.
#[derive(Clone, Debug)]
pub struct Tools {
    /// The kubesign binary.
    pub kubesign: PathBuf,
    /// kubeadm.
    pub kubeadm: PathBuf,
}

impl Tools {
    /// kubesign, kubeadm and openssl, or `None` (after a SKIPPED line) when one is missing.
    pub fn e2e() -> Option<Tools> {
        let kubesign = kubesign_bin()?;
        let kubeadm = kubeadm_bin()?;
        openssl_bin()?;
        Some(Tools { kubesign, kubeadm })
    }
}

// ------------------------------------------------------------------------------------------------
// Running commands.
// ------------------------------------------------------------------------------------------------

/// The result of a finished command.
#[derive(Clone)]
pub struct Output {
    /// The command line, for messages.
    pub cmd: String,
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Standard output, raw.
    pub stdout_bytes: Vec<u8>,
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "$ {}\nexit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n",
            self.cmd, self.code, self.stdout, self.stderr
        )
    }
}

impl Output {
    /// Asserts exit code `want` and returns self.
    #[track_caller]
    pub fn code(&self, want: i32) -> &Self {
        assert_eq!(self.code, Some(want), "unexpected exit code\n{self:?}");
        self
    }

    /// Asserts success (exit code 0).
    #[track_caller]
    pub fn ok(&self) -> &Self {
        self.code(0)
    }

    /// Asserts standard error contains every needle.
    #[track_caller]
    pub fn stderr_has(&self, needles: &[&str]) -> &Self {
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "stderr does not contain {n:?}\n{self:?}"
            );
        }
        self
    }

    /// Asserts standard output contains every needle.
    #[track_caller]
    pub fn stdout_has(&self, needles: &[&str]) -> &Self {
        for n in needles {
            assert!(
                self.stdout.contains(n),
                "stdout does not contain {n:?}\n{self:?}"
            );
        }
        self
    }

    /// Standard output parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{self:?}"))
    }
}

/// How to run a command in a test: variables to add and to remove, a working directory, input.
#[derive(Debug, Default, Clone)]
pub struct Exec<'a> {
    /// Added to the child's environment.
    pub env: Vec<(OsString, OsString)>,
    /// Removed from the child's environment (besides the ones every run removes).
    pub remove: Vec<&'a str>,
    /// The working directory.
    pub cwd: Option<&'a Path>,
    /// Fed to standard input (otherwise /dev/null).
    pub stdin: Option<&'a [u8]>,
}

/// Runs `program args...` as `how` says and waits for it. The variables kubesign and kubectl read
/// implicitly (KUBESIGN_CONFIG, KUBESIGN_LOG_LEVEL, RUST_LOG, KUBECONFIG) are always removed so
/// the host cannot leak in. The one place every test helper starts processes through.
pub fn exec_with<S: AsRef<OsStr>>(program: &Path, args: &[S], how: Exec<'_>) -> Output {
    let line = std::iter::once(program.as_os_str())
        .chain(args.iter().map(AsRef::as_ref))
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove("KUBESIGN_CONFIG")
        .env_remove("KUBESIGN_LOG_LEVEL")
        .env_remove("RUST_LOG")
        .env_remove("KUBECONFIG")
        .stdin(if how.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in &how.remove {
        cmd.env_remove(name);
    }
    for (name, value) in &how.env {
        cmd.env(name, value);
    }
    if let Some(d) = how.cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{line}`: {e}"));
    if let Some(input) = how.stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        // A program may exit before reading everything (openssl after a failed handshake).
        let _ = pipe.write_all(input);
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for `{line}`: {e}"));
    Output {
        cmd: line,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout_bytes: out.stdout,
    }
}

/// Runs `program args...` in `cwd` (if given) with `stdin` fed in, and waits for it.
pub fn run_in<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    cwd: Option<&Path>,
    stdin: Option<&[u8]>,
) -> Output {
    exec_with(
        program,
        args,
        Exec {
            cwd,
            stdin,
            ..Exec::default()
        },
    )
}

/// Runs `program args...`.
pub fn run<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> Output {
    run_in(program, args, None, None)
}

/// Runs openssl.
pub fn openssl<S: AsRef<OsStr>>(args: &[S]) -> Output {
    run(Path::new("openssl"), args)
}

/// Runs openssl with `input` on standard input.
pub fn openssl_stdin<S: AsRef<OsStr>>(args: &[S], input: &[u8]) -> Output {
    run_in(Path::new("openssl"), args, None, Some(input))
}

// ------------------------------------------------------------------------------------------------
// Files, snapshots, PEM, hashes, time.
// ------------------------------------------------------------------------------------------------

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads a file, panicking with its name.
#[track_caller]
pub fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Reads a text file, panicking with its name.
#[track_caller]
pub fn read_string(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Writes a file (creating parent directories), panicking with its name.
#[track_caller]
pub fn write(p: &Path, contents: impl AsRef<[u8]>) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
    }
    fs::write(p, contents).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
}

/// Permission bits of a file.
pub fn mode(p: &Path) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::symlink_metadata(p)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0)
    }
    #[cfg(not(unix))]
    {
        let _ = p;
        0
    }
}

/// Copies a directory tree: files with their permission bits, symlinks as symlinks.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
    let entries = fs::read_dir(from).unwrap_or_else(|e| panic!("listing {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("listing {}: {e}", from.display()));
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let ft = entry
            .file_type()
            .unwrap_or_else(|e| panic!("stat {}: {e}", src.display()));
        if ft.is_dir() {
            copy_tree(&src, &dst);
        } else if ft.is_symlink() {
            let target =
                fs::read_link(&src).unwrap_or_else(|e| panic!("readlink {}: {e}", src.display()));
            symlink(&target, &dst);
        } else {
            fs::copy(&src, &dst)
                .unwrap_or_else(|e| panic!("copying {} to {}: {e}", src.display(), dst.display()));
        }
    }
}

/// Creates a symlink at `link` pointing to `target`.
pub fn symlink(target: &Path, link: &Path) {
    #[cfg(unix)]
    std::os::unix::fs::symlink(target, link)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
    #[cfg(not(unix))]
    panic!(
        "symlinks are only supported on unix ({} -> {})",
        link.display(),
        target.display()
    );
}

/// A byte-exact picture of a directory tree: every entry's relative path mapped to its type,
/// permission bits and content hash (or symlink target). Names are part of the picture, so a
/// leftover temporary file shows up as a difference.
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot(pub BTreeMap<String, String>);

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.0 {
            writeln!(f, "  {k}: {v}")?;
        }
        Ok(())
    }
}

impl Snapshot {
    /// Snapshots every path in `roots` (a missing root is recorded as missing).
    pub fn of(roots: &[&Path]) -> Snapshot {
        let mut map = BTreeMap::new();
        for root in roots {
            snap(root, &root.display().to_string(), &mut map);
        }
        Snapshot(map)
    }

    /// The paths that were added, removed or changed between `self` and `after`.
    pub fn changes(&self, after: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            match after.0.get(k) {
                None => out.push(format!("removed {k}")),
                Some(w) if w != v => out.push(format!("changed {k}")),
                _ => {}
            }
        }
        for k in after.0.keys() {
            if !self.0.contains_key(k) {
                out.push(format!("added {k}"));
            }
        }
        out
    }

    /// Asserts `after` equals `self`, listing every difference.
    #[track_caller]
    pub fn assert_same(&self, after: &Snapshot, context: &str) {
        let changes = self.changes(after);
        assert!(
            changes.is_empty(),
            "{context}: the tree changed:\n  {}",
            changes.join("\n  ")
        );
    }

    /// The files (relative paths, prefixed by their root) that changed content.
    pub fn changed_files(&self, after: &Snapshot) -> Vec<String> {
        let mut v: Vec<String> = self
            .0
            .iter()
            .filter(|(k, v)| after.0.get(*k).is_some_and(|w| w != *v))
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }
}

fn snap(path: &Path, name: &str, map: &mut BTreeMap<String, String>) {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => {
            map.insert(name.to_owned(), "missing".into());
            return;
        }
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        map.insert(name.to_owned(), format!("symlink -> {target}"));
    } else if ft.is_dir() {
        map.insert(name.to_owned(), format!("dir {:o}", mode(path)));
        let mut entries: Vec<_> = fs::read_dir(path)
            .unwrap_or_else(|e| panic!("listing {}: {e}", path.display()))
            .map(|e| {
                e.unwrap_or_else(|e| panic!("listing {}: {e}", path.display()))
                    .file_name()
            })
            .collect();
        entries.sort();
        for e in entries {
            snap(
                &path.join(&e),
                &format!("{name}/{}", e.to_string_lossy()),
                map,
            );
        }
    } else {
        map.insert(
            name.to_owned(),
            format!(
                "file {:o} {} bytes sha256 {}",
                mode(path),
                meta.len(),
                sha256_hex(&read(path))
            ),
        );
    }
}

/// Every file under `root` whose name starts with `.kubesign-` (kubesign's temporary files).
pub fn leftover_temp_files(root: &Path) -> Vec<String> {
    Snapshot::of(&[root])
        .0
        .keys()
        .filter(|k| {
            k.rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with(".kubesign-") || n.contains(".tmp"))
        })
        .cloned()
        .collect()
}

/// Decodes every PEM block: (label, DER).
#[track_caller]
pub fn pem_blocks(text: &[u8]) -> Vec<(String, Vec<u8>)> {
    let text = String::from_utf8_lossy(text);
    let mut out = Vec::new();
    let mut label: Option<String> = None;
    let mut body = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(l) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            label = Some(l.to_owned());
            body.clear();
        } else if let Some(l) = line
            .strip_prefix("-----END ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            let begin = label
                .take()
                .unwrap_or_else(|| panic!("PEM END {l} without BEGIN"));
            assert_eq!(begin, l, "PEM labels do not match");
            let der = STANDARD
                .decode(&body)
                .unwrap_or_else(|e| panic!("PEM block {l}: bad base64: {e}"));
            out.push((begin, der));
        } else if label.is_some() {
            body.push_str(line);
        }
    }
    out
}

/// The DER of the single PEM block labelled `label`.
#[track_caller]
pub fn pem_der(text: &[u8], label: &str) -> Vec<u8> {
    let blocks: Vec<_> = pem_blocks(text)
        .into_iter()
        .filter(|(l, _)| l == label)
        .collect();
    assert_eq!(blocks.len(), 1, "expected exactly one {label} PEM block");
    blocks
        .into_iter()
        .next()
        .map(|(_, d)| d)
        .unwrap_or_default()
}

/// Encodes DER as PEM with 64-column lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses openssl's `-dateopt iso_8601` form, `2026-11-29 18:05:42Z`, to Unix seconds.
#[track_caller]
pub fn parse_iso_utc(s: &str) -> i64 {
    fn bad<T>(s: &str) -> T {
        panic!("not an ISO 8601 UTC time: {s:?}")
    }
    let s = s.trim();
    let (date, time) = s
        .trim_end_matches('Z')
        .split_once([' ', 'T'])
        .unwrap_or_else(|| bad(s));
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().unwrap_or_else(|_| bad(s)))
        .collect();
    let t: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().unwrap_or_else(|_| bad(s)))
        .collect();
    if d.len() != 3 || t.len() != 3 {
        bad::<()>(s);
    }
    days_from_civil(d[0], d[1], d[2]) * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]
}

// ------------------------------------------------------------------------------------------------
// kubeadm's certificate table, as measured (FINDINGS.md), independent of signer-api.
// ------------------------------------------------------------------------------------------------

/// One certificate `kubeadm certs generate-csr` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// kubeadm's name: `apiserver`, `etcd/server`, `admin.conf`.
    pub name: &'static str,
    /// Whether it lives in a kubeconfig (else `<cert-dir>/<name>.crt`).
    pub kubeconfig: bool,
    /// The signing CA's certificate, relative to the cert dir.
    pub ca_file: &'static str,
    /// serverAuth.
    pub server: bool,
    /// clientAuth.
    pub client: bool,
    /// The subject as `openssl -subject` prints it; `{node}` stands for the node name.
    pub subject: &'static str,
}

const fn leaf(
    name: &'static str,
    kubeconfig: bool,
    ca_file: &'static str,
    server: bool,
    client: bool,
    subject: &'static str,
) -> Leaf {
    Leaf {
        name,
        kubeconfig,
        ca_file,
        server,
        client,
        subject,
    }
}

/// The 12 certificates of a control plane node, from FINDINGS.md section 2.
pub const LEAVES: [Leaf; 12] = [
    leaf(
        "apiserver",
        false,
        "ca.crt",
        true,
        false,
        "CN = kube-apiserver",
    ),
    leaf(
        "apiserver-kubelet-client",
        false,
        "ca.crt",
        false,
        true,
        "O = kubeadm:cluster-admins, CN = kube-apiserver-kubelet-client",
    ),
    leaf(
        "apiserver-etcd-client",
        false,
        "etcd/ca.crt",
        false,
        true,
        "CN = kube-apiserver-etcd-client",
    ),
    leaf(
        "front-proxy-client",
        false,
        "front-proxy-ca.crt",
        false,
        true,
        "CN = front-proxy-client",
    ),
    leaf(
        "etcd/server",
        false,
        "etcd/ca.crt",
        true,
        true,
        "CN = {node}",
    ),
    leaf("etcd/peer", false, "etcd/ca.crt", true, true, "CN = {node}"),
    leaf(
        "etcd/healthcheck-client",
        false,
        "etcd/ca.crt",
        false,
        true,
        "CN = kube-etcd-healthcheck-client",
    ),
    leaf(
        "admin.conf",
        true,
        "ca.crt",
        false,
        true,
        "O = kubeadm:cluster-admins, CN = kubernetes-admin",
    ),
    leaf(
        "super-admin.conf",
        true,
        "ca.crt",
        false,
        true,
        "O = system:masters, CN = kubernetes-super-admin",
    ),
    leaf(
        "kubelet.conf",
        true,
        "ca.crt",
        false,
        true,
        "O = system:nodes, CN = system:node:{node}",
    ),
    leaf(
        "controller-manager.conf",
        true,
        "ca.crt",
        false,
        true,
        "CN = system:kube-controller-manager",
    ),
    leaf(
        "scheduler.conf",
        true,
        "ca.crt",
        false,
        true,
        "CN = system:kube-scheduler",
    ),
];

/// The three CA certificate files, relative to the cert dir, with their CN.
pub const CA_FILES: [(&str, &str); 3] = [
    ("ca.crt", "kubernetes"),
    ("etcd/ca.crt", "etcd-ca"),
    ("front-proxy-ca.crt", "front-proxy-ca"),
];

impl Leaf {
    /// The leaf by kubeadm name.
    #[track_caller]
    pub fn by_name(name: &str) -> Leaf {
        LEAVES
            .into_iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no leaf {name}"))
    }

    /// The extended key usage line as `openssl x509 -text` prints it.
    pub fn eku_text(&self) -> &'static str {
        match (self.server, self.client) {
            (true, true) => "TLS Web Server Authentication, TLS Web Client Authentication",
            (true, false) => "TLS Web Server Authentication",
            _ => "TLS Web Client Authentication",
        }
    }

    /// The openssl verify purposes the certificate must pass.
    pub fn purposes(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.server {
            v.push("sslserver");
        }
        if self.client {
            v.push("sslclient");
        }
        v
    }

    /// The expected subject for a node name.
    pub fn subject_for(&self, node: &str) -> String {
        self.subject.replace("{node}", node)
    }

    /// The CSR kubeadm wrote, relative to the cert dir or kubeconfig dir.
    pub fn csr_file(&self) -> String {
        format!("{}.csr", self.name)
    }
}

/// One of the kubeadm configurations in `testdata/kubeadm/`, with what FINDINGS.md measured.
#[derive(Clone, Copy, Debug)]
pub struct KubeadmCase {
    /// File name under testdata/kubeadm.
    pub file: &'static str,
    /// nodeRegistration.name.
    pub node: &'static str,
    /// The leaf public key type as `openssl -text` prints it (`rsaEncryption`, `secp384r1`...).
    pub leaf_key: &'static str,
    /// apiserver SANs as openssl prints them.
    pub apiserver_sans: &'static str,
    /// etcd/server SANs.
    pub etcd_server_sans: &'static str,
    /// etcd/peer SANs.
    pub etcd_peer_sans: &'static str,
}

const DEFAULT_APISERVER_SANS: &str = "DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, \
     DNS:kubernetes.default.svc.cluster.local, DNS:node-1, IP Address:10.96.0.1, IP Address:198.51.100.10";
const DEFAULT_ETCD_SANS: &str = "DNS:localhost, DNS:node-1, IP Address:198.51.100.10, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1";

/// rsa2048.yaml.
pub const RSA2048: KubeadmCase = KubeadmCase {
    file: "rsa2048.yaml",
    node: "node-1",
    leaf_key: "rsaEncryption",
    apiserver_sans: DEFAULT_APISERVER_SANS,
    etcd_server_sans: DEFAULT_ETCD_SANS,
    etcd_peer_sans: DEFAULT_ETCD_SANS,
};

/// ecdsa-p256.yaml.
pub const ECDSA_P256: KubeadmCase = KubeadmCase {
    file: "ecdsa-p256.yaml",
    node: "node-1",
    leaf_key: "prime256v1",
    apiserver_sans: DEFAULT_APISERVER_SANS,
    etcd_server_sans: DEFAULT_ETCD_SANS,
    etcd_peer_sans: DEFAULT_ETCD_SANS,
};

/// ecdsa-p384.yaml.
pub const ECDSA_P384: KubeadmCase = KubeadmCase {
    file: "ecdsa-p384.yaml",
    node: "cp-node-7",
    leaf_key: "secp384r1",
    apiserver_sans: "DNS:api.kubesign.test, DNS:cp-node-7, DNS:k8s-api.kubesign.test, DNS:kubernetes, \
         DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.corp.kubesign.test, \
         IP Address:10.112.0.1, IP Address:198.51.100.20, IP Address:127.0.0.10, IP Address:FD00:0:0:0:0:0:0:10",
    etcd_server_sans: "DNS:cp-node-7, DNS:etcd.kubesign.test, DNS:localhost, IP Address:198.51.100.20, \
         IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, IP Address:127.0.0.20",
    etcd_peer_sans: "DNS:cp-node-7, DNS:etcd-peer.kubesign.test, DNS:localhost, IP Address:198.51.100.20, \
         IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, IP Address:127.0.0.21",
};

impl KubeadmCase {
    /// The config file.
    pub fn path(&self) -> PathBuf {
        workspace_root().join("testdata/kubeadm").join(self.file)
    }

    /// The expected SANs of a leaf (`None`: no SAN extension).
    pub fn sans(&self, leaf: &str) -> Option<&'static str> {
        match leaf {
            "apiserver" => Some(self.apiserver_sans),
            "etcd/server" => Some(self.etcd_server_sans),
            "etcd/peer" => Some(self.etcd_peer_sans),
            _ => None,
        }
    }
}

// ------------------------------------------------------------------------------------------------
// A kubeadm tree with kubesign configured, in its own temporary directory.
// ------------------------------------------------------------------------------------------------

/// The CA key algorithms of a kubesign configuration: kubernetes, etcd, front-proxy.
pub type CaAlgorithms = [&'static str; 3];

/// A temporary directory holding a kubeadm cert dir (`pki`), kubeconfig dir (`kubeconfig`), the
/// CA keys and certificates (`cas`, outside the kubeadm tree), the kubesign configuration and
/// audit log, and a scratch dir for test files.
pub struct Cluster {
    _tmp: tempfile::TempDir,
    /// The temporary directory.
    pub root: PathBuf,
    /// The kubeadm certificate directory.
    pub pki: PathBuf,
    /// The kubeadm kubeconfig directory.
    pub kc: PathBuf,
    /// Where the CA keys and certificates live.
    pub cas: PathBuf,
    /// The kubesign configuration file.
    pub config: PathBuf,
    /// The audit log.
    pub audit: PathBuf,
    /// Scratch space outside every tree under test.
    pub scratch: PathBuf,
    /// The kubesign binary.
    pub kubesign: PathBuf,
}

impl Cluster {
    /// An empty layout.
    pub fn new(kubesign: &Path) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("kubesign-it-")
            .tempdir()
            .expect("creating a temporary directory");
        // Canonical, so that paths kubesign prints compare equal to ours.
        let root = fs::canonicalize(tmp.path()).expect("canonicalizing the temporary directory");
        let scratch = root.join("scratch");
        fs::create_dir_all(&scratch).expect("creating the scratch directory");
        Cluster {
            pki: root.join("pki"),
            kc: root.join("kubeconfig"),
            cas: root.join("cas"),
            config: root.join("kubesign.yaml"),
            audit: root.join("audit.jsonl"),
            scratch,
            root,
            kubesign: kubesign.to_owned(),
            _tmp: tmp,
        }
    }

    /// A copy of `examples/kubeadm-csr` (real kubeadm v1.35.4 output for rsa2048.yaml).
    pub fn from_example(kubesign: &Path) -> Cluster {
        let c = Cluster::new(kubesign);
        let ex = workspace_root().join("examples/kubeadm-csr");
        copy_tree(&ex.join("pki"), &c.pki);
        copy_tree(&ex.join("kubeconfig"), &c.kc);
        c
    }

    /// Runs the real `kubeadm certs generate-csr` into `pki` and `kubeconfig` (never
    /// /etc/kubernetes: `--kubeconfig-dir` is always passed).
    pub fn generate_csr(&self, kubeadm: &Path, case: &KubeadmCase) -> Output {
        let out = run(
            kubeadm,
            &[
                OsStr::new("certs"),
                OsStr::new("generate-csr"),
                OsStr::new("--config"),
                case.path().as_os_str(),
                OsStr::new("--cert-dir"),
                self.pki.as_os_str(),
                OsStr::new("--kubeconfig-dir"),
                self.kc.as_os_str(),
            ],
        );
        out.ok();
        out
    }

    /// Writes the kubesign configuration with file CA keys under `cas` and the audit log at
    /// `audit`. With `relative`, paths are written relative to the configuration file.
    pub fn write_config(&self, algs: CaAlgorithms, relative: bool) {
        let p = |rel: &str| {
            if relative {
                rel.to_owned()
            } else {
                self.root.join(rel).display().to_string()
            }
        };
        let text = format!(
            "apiVersion: kubesign.dev/v1alpha1\nkind: SignerConfiguration\ncas:\n  kubernetes:\n    key: file:{}\n    certificate: {}\n    keyAlgorithm: {}\n  etcd:\n    key: file:{}\n    certificate: {}\n    keyAlgorithm: {}\n  front-proxy:\n    key: file:{}\n    certificate: {}\n    keyAlgorithm: {}\naudit:\n  path: {}\n",
            p("cas/ca.key"),
            p("cas/ca.crt"),
            algs[0],
            p("cas/etcd-ca.key"),
            p("cas/etcd/ca.crt"),
            algs[1],
            p("cas/front-proxy-ca.key"),
            p("cas/front-proxy-ca.crt"),
            algs[2],
            p("audit.jsonl"),
        );
        write(&self.config, text);
    }

    /// The CA key file of a CA certificate (`ca.crt` -> `cas/ca.key`).
    pub fn ca_key(&self, ca_file: &str) -> PathBuf {
        match ca_file {
            "ca.crt" => self.cas.join("ca.key"),
            "etcd/ca.crt" => self.cas.join("etcd-ca.key"),
            "front-proxy-ca.crt" => self.cas.join("front-proxy-ca.key"),
            other => panic!("unknown CA file {other}"),
        }
    }

    /// Runs kubesign with `args`.
    pub fn ks<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        run_in(&self.kubesign, args, Some(&self.root), None)
    }

    /// Common arguments: `-c CONFIG --cert-dir PKI --kubeconfig-dir KC`.
    pub fn dirs(&self) -> Vec<String> {
        vec![
            "-c".into(),
            self.config.display().to_string(),
            "--cert-dir".into(),
            self.pki.display().to_string(),
            "--kubeconfig-dir".into(),
            self.kc.display().to_string(),
        ]
    }

    /// `kubesign <cmd> -c CONFIG --cert-dir PKI --kubeconfig-dir KC <extra...>`.
    pub fn ks_dirs(&self, cmd: &[&str], extra: &[&str]) -> Output {
        let mut args: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        args.extend(self.dirs());
        args.extend(extra.iter().map(|s| s.to_string()));
        self.ks(&args)
    }

    /// `kubesign ca init`, asserted to succeed.
    pub fn ca_init(&self) -> Output {
        let out = self.ks(&["ca", "init", "-c", &self.config.display().to_string()]);
        out.ok();
        out
    }

    /// `kubesign sign`, asserted to succeed.
    pub fn sign(&self) -> Output {
        let out = self.ks_dirs(&["sign"], &[]);
        out.ok();
        out
    }

    /// `kubesign check -c CONFIG` on both directories.
    pub fn check(&self, json: bool) -> Output {
        self.ks_dirs(&["check"], if json { &["-o", "json"] } else { &[] })
    }

    /// Generates CSRs with real kubeadm, writes the configuration, initialises the CAs.
    pub fn kubeadm_ready(tools: &Tools, case: &KubeadmCase, algs: CaAlgorithms) -> Cluster {
        let c = Cluster::new(&tools.kubesign);
        c.generate_csr(&tools.kubeadm, case);
        c.write_config(algs, false);
        c.ca_init();
        c
    }

    /// A snapshot of the kubeadm tree, the CA directory and the audit log.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::of(&[&self.pki, &self.kc, &self.cas, &self.audit, &self.config])
    }

    /// A path in the kubeadm tree: `pki/<name>.crt` or `kubeconfig/<name>`.
    pub fn leaf_file(&self, leaf: &Leaf) -> PathBuf {
        if leaf.kubeconfig {
            self.kc.join(leaf.name)
        } else {
            self.pki.join(format!("{}.crt", leaf.name))
        }
    }

    /// The CSR kubeadm wrote for `leaf`.
    pub fn leaf_csr(&self, leaf: &Leaf) -> PathBuf {
        if leaf.kubeconfig {
            self.kc.join(leaf.csr_file())
        } else {
            self.pki.join(leaf.csr_file())
        }
    }

    /// The leaf certificate's PEM (from the .crt, or the kubeconfig's client-certificate-data).
    pub fn leaf_cert_pem(&self, leaf: &Leaf) -> Vec<u8> {
        if leaf.kubeconfig {
            Kubeconfig::load(&self.kc.join(leaf.name))
                .user_data("client-certificate-data")
                .unwrap_or_else(|| panic!("{}: no client-certificate-data", leaf.name))
        } else {
            read(&self.pki.join(format!("{}.crt", leaf.name)))
        }
    }

    /// The leaf's private key PEM (NAME.key or client-key-data).
    pub fn leaf_key_pem(&self, leaf: &Leaf) -> Vec<u8> {
        if leaf.kubeconfig {
            Kubeconfig::load(&self.kc.join(leaf.name))
                .user_data("client-key-data")
                .unwrap_or_else(|| panic!("{}: no client-key-data", leaf.name))
        } else {
            read(&self.pki.join(format!("{}.key", leaf.name)))
        }
    }

    /// The audit log's records.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        read_audit(&self.audit)
    }
}

/// The records of a JSON-lines audit log (each line must be one JSON object).
#[track_caller]
pub fn read_audit(path: &Path) -> Vec<serde_json::Value> {
    read_string(path)
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("{} line {}: not JSON ({e}): {l}", path.display(), i + 1)
            });
            assert!(
                v.is_object(),
                "{} line {}: not a JSON object",
                path.display(),
                i + 1
            );
            v
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Kubeconfig files as kubeadm writes them: one cluster, one user, one context.
// ------------------------------------------------------------------------------------------------

/// A kubeadm kubeconfig, read with serde_yaml.
#[derive(Clone, Debug, PartialEq)]
pub struct Kubeconfig {
    /// The document.
    pub doc: Value,
}

impl Kubeconfig {
    /// Reads a kubeconfig.
    #[track_caller]
    pub fn load(path: &Path) -> Kubeconfig {
        let doc: Value = serde_yaml::from_slice(&read(path))
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
        for list in ["users", "clusters", "contexts"] {
            let n = doc
                .get(list)
                .and_then(Value::as_sequence)
                .map_or(0, Vec::len);
            assert_eq!(
                n,
                1,
                "{}: expected exactly one entry in {list}",
                path.display()
            );
        }
        Kubeconfig { doc }
    }

    fn entry(&self, list: &str, inner: &str) -> Option<&serde_yaml::Mapping> {
        self.doc
            .get(list)?
            .as_sequence()?
            .first()?
            .get(inner)?
            .as_mapping()
    }

    fn entry_mut(&mut self, list: &str, inner: &str) -> &mut serde_yaml::Mapping {
        self.doc
            .get_mut(list)
            .and_then(Value::as_sequence_mut)
            .and_then(|s| s.first_mut())
            .and_then(|e| e.get_mut(inner))
            .and_then(Value::as_mapping_mut)
            .unwrap_or_else(|| panic!("kubeconfig has no {list}[0].{inner} mapping"))
    }

    fn data(&self, list: &str, inner: &str, field: &str) -> Option<Vec<u8>> {
        let v = self.entry(list, inner)?.get(field)?.as_str()?;
        Some(
            STANDARD
                .decode(v.trim())
                .unwrap_or_else(|e| panic!("{field} is not base64: {e}")),
        )
    }

    /// A base64 field of the user (`client-certificate-data`, `client-key-data`), decoded.
    pub fn user_data(&self, field: &str) -> Option<Vec<u8>> {
        self.data("users", "user", field)
    }

    /// A base64 field of the cluster (`certificate-authority-data`), decoded.
    pub fn cluster_data(&self, field: &str) -> Option<Vec<u8>> {
        self.data("clusters", "cluster", field)
    }

    /// Whether the user mapping has `field` at all.
    pub fn user_has(&self, field: &str) -> bool {
        self.entry("users", "user")
            .is_some_and(|m| m.contains_key(field))
    }

    /// Sets a user field to base64 of `bytes`.
    pub fn set_user_data(&mut self, field: &str, bytes: &[u8]) {
        self.entry_mut("users", "user")
            .insert(field.into(), STANDARD.encode(bytes).into());
    }

    /// Sets a cluster field to base64 of `bytes`.
    pub fn set_cluster_data(&mut self, field: &str, bytes: &[u8]) {
        self.entry_mut("clusters", "cluster")
            .insert(field.into(), STANDARD.encode(bytes).into());
    }

    /// Writes the document.
    pub fn save(&self, path: &Path) {
        write(
            path,
            serde_yaml::to_string(&self.doc).expect("serializing a kubeconfig"),
        );
    }
}

// ------------------------------------------------------------------------------------------------
// openssl inspection.
// ------------------------------------------------------------------------------------------------

/// One X.509 extension as `openssl -text` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext {
    /// e.g. `X509v3 Key Usage`.
    pub name: String,
    /// Marked critical.
    pub critical: bool,
    /// The value lines, joined with a space.
    pub value: String,
}

/// The extensions in `openssl x509 -text` or `openssl req -text` output.
pub fn parse_extensions(text: &str) -> Vec<Ext> {
    let mut out: Vec<Ext> = Vec::new();
    let mut lines = text.lines();
    let mut header_indent = None;
    for l in lines.by_ref() {
        let t = l.trim_start();
        if t.starts_with("X509v3 extensions:") || t.starts_with("Requested Extensions:") {
            header_indent = Some(l.len() - t.len() + 4);
            break;
        }
    }
    let Some(indent) = header_indent else {
        return out;
    };
    for l in lines {
        let t = l.trim_start();
        let ind = l.len() - t.len();
        if t.is_empty() {
            continue;
        }
        if ind < indent {
            break;
        }
        if ind == indent {
            let (name, rest) = t.split_once(':').unwrap_or((t, ""));
            out.push(Ext {
                name: name.trim().to_owned(),
                critical: rest.trim() == "critical",
                value: String::new(),
            });
        } else if let Some(last) = out.last_mut() {
            if !last.value.is_empty() {
                last.value.push(' ');
            }
            last.value.push_str(t.trim_end());
        }
    }
    out
}

/// What openssl says about a certificate.
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// `openssl x509 -noout -text`.
    pub text: String,
    /// The subject (`O = x, CN = y`).
    pub subject: String,
    /// The issuer.
    pub issuer: String,
    /// The serial, uppercase hex as `-serial` prints it.
    pub serial: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// The extensions, in order.
    pub extensions: Vec<Ext>,
    /// The public key, PEM (`-pubkey`).
    pub public_key: String,
    /// SHA-256 of the DER, lowercase hex.
    pub sha256: String,
    /// The DER.
    pub der: Vec<u8>,
}

impl CertInfo {
    /// The extension named `name` (e.g. `X509v3 Key Usage`).
    pub fn ext(&self, name: &str) -> Option<&Ext> {
        self.extensions.iter().find(|e| e.name == name)
    }

    /// The signature algorithm (`sha256WithRSAEncryption`, `ecdsa-with-SHA384`).
    pub fn signature_algorithm(&self) -> String {
        self.text
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Signature Algorithm:")
                    .map(|s| s.trim().to_owned())
            })
            .unwrap_or_default()
    }

    /// The subject key identifier (uppercase hex with colons).
    pub fn ski(&self) -> Option<String> {
        self.ext("X509v3 Subject Key Identifier")
            .map(|e| e.value.clone())
    }

    /// The authority key identifier's key id (uppercase hex with colons).
    pub fn aki(&self) -> Option<String> {
        self.ext("X509v3 Authority Key Identifier")
            .map(|e| e.value.trim_start_matches("keyid:").trim().to_owned())
    }
}

fn field(out: &Output, prefix: &str) -> String {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no {prefix} line\n{out:?}"))
}

/// Splits openssl output that has `-pubkey` before `-text`: (fields and public key, text).
fn split_pubkey(out: &Output) -> (String, String) {
    const END: &str = "-----END PUBLIC KEY-----\n";
    let at = out
        .stdout
        .find(END)
        .unwrap_or_else(|| panic!("no public key in openssl output\n{out:?}"))
        + END.len();
    let begin = out.stdout.find("-----BEGIN PUBLIC KEY-----").unwrap_or(0);
    (
        out.stdout[begin..at].to_owned(),
        out.stdout[at..].to_owned(),
    )
}

/// Inspects a PEM certificate with openssl (one invocation).
#[track_caller]
pub fn cert_info(pem: &[u8]) -> CertInfo {
    let out = openssl_stdin(
        &[
            "x509",
            "-noout",
            "-subject",
            "-issuer",
            "-serial",
            "-startdate",
            "-enddate",
            "-dateopt",
            "iso_8601",
            "-pubkey",
            "-text",
        ],
        pem,
    );
    out.ok();
    let (public_key, text) = split_pubkey(&out);
    let der = pem_der(pem, "CERTIFICATE");
    CertInfo {
        extensions: parse_extensions(&text),
        text,
        subject: field(&out, "subject="),
        issuer: field(&out, "issuer="),
        serial: field(&out, "serial="),
        not_before: parse_iso_utc(&field(&out, "notBefore=")),
        not_after: parse_iso_utc(&field(&out, "notAfter=")),
        public_key,
        sha256: sha256_hex(&der),
        der,
    }
}

/// What openssl says about a certificate signing request.
#[derive(Clone, Debug)]
pub struct CsrInfo {
    /// `openssl req -noout -text`.
    pub text: String,
    /// The subject.
    pub subject: String,
    /// The requested extensions.
    pub extensions: Vec<Ext>,
    /// The public key, PEM.
    pub public_key: String,
    /// SHA-256 of the DER, lowercase hex.
    pub sha256: String,
}

impl CsrInfo {
    /// The requested SANs as openssl prints them.
    pub fn sans(&self) -> Option<String> {
        self.extensions
            .iter()
            .find(|e| e.name == "X509v3 Subject Alternative Name")
            .map(|e| e.value.clone())
    }
}

/// Inspects a PEM CSR with openssl, which also checks its self-signature (`-verify`).
#[track_caller]
pub fn csr_info(pem: &[u8]) -> CsrInfo {
    let out = openssl_stdin(
        &["req", "-noout", "-subject", "-pubkey", "-text", "-verify"],
        pem,
    );
    out.ok().stderr_has(&["verify OK"]);
    let (public_key, text) = split_pubkey(&out);
    CsrInfo {
        extensions: parse_extensions(&text),
        text,
        subject: field(&out, "subject="),
        public_key,
        sha256: sha256_hex(&pem_der(pem, "CERTIFICATE REQUEST")),
    }
}

/// The public key (PEM) of a private key, as openssl derives it.
#[track_caller]
pub fn key_public_pem(key_pem: &[u8]) -> String {
    let out = openssl_stdin(&["pkey", "-pubout"], key_pem);
    out.ok();
    out.stdout
}

/// `openssl verify -x509_strict -purpose PURPOSE -CAfile CA` on a PEM leaf (written to `scratch`).
pub fn openssl_verify(ca: &Path, leaf_pem: &[u8], purpose: &str, scratch: &Path) -> Output {
    let f = scratch.join(format!("verify-{}.pem", sha256_hex(leaf_pem)));
    write(&f, leaf_pem);
    let out = openssl(&[
        OsStr::new("verify"),
        OsStr::new("-x509_strict"),
        OsStr::new("-purpose"),
        OsStr::new(purpose),
        OsStr::new("-CAfile"),
        ca.as_os_str(),
        f.as_os_str(),
    ]);
    let _ = fs::remove_file(&f);
    out
}

/// `openssl verify -x509_strict [-purpose PURPOSE] -CAfile CA FILE...` in one run: whether each
/// file verified (`FILE: OK`), with the output for messages.
pub fn openssl_verify_files(
    ca: &Path,
    files: &[PathBuf],
    purpose: Option<&str>,
) -> (BTreeMap<PathBuf, bool>, Output) {
    let mut args: Vec<&OsStr> = vec![OsStr::new("verify"), OsStr::new("-x509_strict")];
    if let Some(p) = purpose {
        args.extend([OsStr::new("-purpose"), OsStr::new(p)]);
    }
    args.extend([OsStr::new("-CAfile"), ca.as_os_str()]);
    args.extend(files.iter().map(|f| f.as_os_str()));
    let out = openssl(&args);
    let ok = files
        .iter()
        .map(|f| {
            let line = format!("{}: OK", f.display());
            (f.clone(), out.stdout.lines().any(|l| l == line))
        })
        .collect();
    (ok, out)
}

// ------------------------------------------------------------------------------------------------
// kubeadm's own validation of an external-CA tree (FINDINGS.md section 4).
// ------------------------------------------------------------------------------------------------

/// The kubeadm configuration `case` with `certificatesDir` rewritten to `cert_dir`.
pub fn kubeadm_config_with_cert_dir(case: &KubeadmCase, cert_dir: &str) -> String {
    let text = read_string(&case.path());
    let mut replaced = 0;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("certificatesDir:") {
                replaced += 1;
                format!("certificatesDir: {cert_dir}")
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert_eq!(
        replaced, 1,
        "{}: expected one certificatesDir line",
        case.file
    );
    out.join("\n") + "\n"
}

/// Command A: `kubeadm init phase kubeconfig all --config C' --kubeconfig-dir KC`, where C' has
/// certificatesDir = `pki`.
pub fn kubeadm_phase_kubeconfig(
    kubeadm: &Path,
    case: &KubeadmCase,
    pki: &Path,
    kc: &Path,
    scratch: &Path,
) -> Output {
    let cfg = scratch.join(format!(
        "kubeadm-{}",
        sha256_hex(pki.as_os_str().as_encoded_bytes())
    ));
    write(
        &cfg,
        kubeadm_config_with_cert_dir(case, &pki.display().to_string()),
    );
    run(
        kubeadm,
        &[
            OsStr::new("init"),
            OsStr::new("phase"),
            OsStr::new("kubeconfig"),
            OsStr::new("all"),
            OsStr::new("--config"),
            cfg.as_os_str(),
            OsStr::new("--kubeconfig-dir"),
            kc.as_os_str(),
        ],
    )
}

/// Asserts command A succeeded in external CA mode for all five kubeconfigs.
#[track_caller]
pub fn assert_phase_kubeconfig_ok(out: &Output) {
    out.ok();
    let all = format!("{}{}", out.stdout, out.stderr);
    for conf in [
        "admin.conf",
        "super-admin.conf",
        "kubelet.conf",
        "controller-manager.conf",
        "scheduler.conf",
    ] {
        let line = format!("[kubeconfig] External CA mode: Using user provided {conf}");
        assert!(
            all.contains(&line),
            "kubeadm did not print {line:?}\n{out:?}"
        );
    }
}

/// Command B: `kubeadm --rootfs R init phase certs all --config /cfg.yaml` on a copy of `pki` at
/// R/etc/kubernetes/pki and of the kubeconfigs at R/etc/kubernetes. Needs root (chroot).
/// Returns the output and R (to check that kubeadm changed nothing).
pub fn kubeadm_phase_certs(
    kubeadm: &Path,
    case: &KubeadmCase,
    pki: &Path,
    kc: &Path,
    scratch: &Path,
) -> (Output, PathBuf) {
    let rootfs = tempfile::Builder::new()
        .prefix("rootfs-")
        .tempdir_in(scratch)
        .expect("creating a rootfs dir")
        .keep();
    let etc = rootfs.join("etc/kubernetes");
    copy_tree(pki, &etc.join("pki"));
    for entry in fs::read_dir(kc).unwrap_or_else(|e| panic!("listing {}: {e}", kc.display())) {
        let p = entry.expect("listing the kubeconfig dir").path();
        if p.extension().is_some_and(|e| e == "conf") {
            fs::copy(&p, etc.join(p.file_name().expect("file name")))
                .expect("copying a kubeconfig");
        }
    }
    write(
        &rootfs.join("cfg.yaml"),
        kubeadm_config_with_cert_dir(case, "/etc/kubernetes/pki"),
    );
    let out = run(
        kubeadm,
        &[
            OsStr::new("--rootfs"),
            rootfs.as_os_str(),
            OsStr::new("init"),
            OsStr::new("phase"),
            OsStr::new("certs"),
            OsStr::new("all"),
            OsStr::new("--config"),
            OsStr::new("/cfg.yaml"),
        ],
    );
    (out, rootfs)
}

/// Asserts command B succeeded in external CA mode: keyless CAs and every leaf used as is.
#[track_caller]
pub fn assert_phase_certs_ok(out: &Output) {
    out.ok();
    let all = format!("{}{}", out.stdout, out.stderr);
    let mut lines = vec![
        "[certs] Using certificateDir folder \"/etc/kubernetes/pki\"".to_owned(),
        "[certs] Using existing sa keys".to_owned(),
    ];
    for ca in ["ca", "front-proxy-ca", "etcd/ca"] {
        lines.push(format!(
            "[certs] Using existing {ca} keyless certificate authority"
        ));
    }
    for l in LEAVES.iter().filter(|l| !l.kubeconfig) {
        lines.push(format!(
            "[certs] Using existing {} certificate and key on disk",
            l.name
        ));
    }
    for line in lines {
        assert!(
            all.contains(&line),
            "kubeadm did not print {line:?}\n{out:?}"
        );
    }
}

// ------------------------------------------------------------------------------------------------
// AWS KMS emulators (local-kms, moto) and commands with an environment.
// ------------------------------------------------------------------------------------------------

/// The loopback endpoints of the two KMS emulators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsEmulators {
    /// local-kms: honours `MessageType=DIGEST`; no asymmetric `ImportKeyMaterial`.
    pub local_kms: String,
    /// moto: hashes a `DIGEST` message again (its signatures do not verify); RAW works.
    pub moto: String,
}

/// The AWS environment a `kubesign` child needs against the emulators: dummy credentials (the
/// emulators do not check them) and the region. Set on the child only, never on this process.
pub const KMS_CHILD_ENV: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
    // No instance metadata lookups if the credential chain ever got that far.
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// Host AWS settings that must not leak into a `kubesign` child talking to an emulator.
pub const KMS_CHILD_ENV_REMOVED: [&str; 8] = [
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_KMS",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
];

fn start_kms_emulators() -> Result<KmsEmulators, String> {
    let how = "install and start them with `eval \"$(scripts/kms-emulators.sh start)\"` (needs Go and \
               python3-venv: builds local-kms from the Go module proxy, installs moto from PyPI), or \
               set KUBESIGN_LOCAL_KMS_ENDPOINT and KUBESIGN_MOTO_ENDPOINT";
    if let (Ok(local_kms), Ok(moto)) = (
        std::env::var("KUBESIGN_LOCAL_KMS_ENDPOINT"),
        std::env::var("KUBESIGN_MOTO_ENDPOINT"),
    ) && !local_kms.is_empty()
        && !moto.is_empty()
    {
        return Ok(KmsEmulators { local_kms, moto });
    }
    let script = workspace_root().join("scripts/kms-emulators.sh");
    // A private run directory; the script's watchdog stops the emulators when this process ends.
    let run_dir =
        std::env::temp_dir().join(format!("kubesign-kms-integration-{}", std::process::id()));
    let out = Command::new("bash")
        .arg(&script)
        .arg("start")
        .env("KUBESIGN_KMS_RUN_DIR", &run_dir)
        .env("KUBESIGN_KMS_WATCH_PID", std::process::id().to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} ({e}); {how}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`{} start` failed ({}): {}; {how}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| format!("`{} start` printed no {name}; {how}", script.display()))
    };
    Ok(KmsEmulators {
        local_kms: get("KUBESIGN_LOCAL_KMS_ENDPOINT")?,
        moto: get("KUBESIGN_MOTO_ENDPOINT")?,
    })
}

/// The KMS emulators, started once per process (through `scripts/kms-emulators.sh`, unless
/// KUBESIGN_LOCAL_KMS_ENDPOINT and KUBESIGN_MOTO_ENDPOINT name running ones), or why not.
pub fn kms_emulators_result() -> &'static Result<KmsEmulators, String> {
    static FOUND: OnceLock<Result<KmsEmulators, String>> = OnceLock::new();
    FOUND.get_or_init(start_kms_emulators)
}

/// The KMS emulators, or `None` after a SKIPPED line (a failure under CI=true).
pub fn kms_emulators() -> Option<&'static KmsEmulators> {
    require(
        "the KMS emulators (local-kms and moto)",
        kms_emulators_result().as_ref().map_err(Clone::clone),
    )
}

/// Like [`run_in`], with `set` added to and `remove` removed from the child's environment.
pub fn run_in_env<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    cwd: Option<&Path>,
    set: &[(String, std::ffi::OsString)],
    remove: &[&str],
) -> Output {
    let env = set
        .iter()
        .map(|(k, v)| (OsString::from(k), v.clone()))
        .collect();
    exec_with(
        program,
        args,
        Exec {
            env,
            remove: remove.to_vec(),
            cwd,
            stdin: None,
        },
    )
}

impl Cluster {
    /// Runs kubesign with `args` and the KMS child environment ([`KMS_CHILD_ENV`]) plus `extra`.
    pub fn ks_env<S: AsRef<OsStr>>(
        &self,
        args: &[S],
        extra: &[(String, std::ffi::OsString)],
    ) -> Output {
        let mut set: Vec<(String, std::ffi::OsString)> = KMS_CHILD_ENV
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).into()))
            .collect();
        set.extend(extra.iter().cloned());
        run_in_env(
            &self.kubesign,
            args,
            Some(&self.root),
            &set,
            &KMS_CHILD_ENV_REMOVED,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times() {
        assert_eq!(parse_iso_utc("1970-01-01 00:00:00Z"), 0);
        assert_eq!(parse_iso_utc("2026-11-29 18:05:42Z"), 1_795_975_542);
        assert_eq!(parse_iso_utc("2000-03-01 00:00:00Z"), 951_868_800);
    }

    #[test]
    fn extension_parser() {
        let text = "        X509v3 extensions:\n            X509v3 Key Usage: critical\n                Digital Signature, Key Encipherment\n            X509v3 Subject Key Identifier: \n                AB:CD\n    Signature Algorithm: x\n";
        let e = parse_extensions(text);
        assert_eq!(e.len(), 2);
        assert_eq!(
            e[0],
            Ext {
                name: "X509v3 Key Usage".into(),
                critical: true,
                value: "Digital Signature, Key Encipherment".into()
            }
        );
        assert_eq!(e[1].value, "AB:CD");
        assert!(!e[1].critical);
    }

    #[test]
    fn pem_round_trip() {
        let der: Vec<u8> = (0..200u8).collect();
        let pem = pem_encode("TEST", &der);
        assert_eq!(pem_der(pem.as_bytes(), "TEST"), der);
    }
}
