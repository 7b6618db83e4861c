//! Mutation fuzzing of kubesign's parsers on the stable toolchain, run as ordinary tests.
//!
//! cargo-fuzz needs a nightly toolchain, which these machines do not have. This is a small,
//! coverage-less mutation fuzzer instead: every target starts from real inputs (kubeadm's CSRs and
//! kubeconfigs from `examples/`, the key URIs written in `signer-api/src/keyuri.rs`, the example
//! configuration, certificates made with rcgen at start-up) plus the committed regression corpus in
//! `integration/fuzz-corpus/<target>/`, replays all of them, then mutates them: bit flips, byte
//! set/insert/delete, chunk duplication and splicing between inputs, truncation, DER-aware edits
//! (tags, lengths, whole TLVs, with or without fixing the enclosing lengths, inside PEM too), and
//! for text targets token edits (`;`, `?`, `%`, `=`, `&`, unicode, very long values, YAML syntax).
//! CSRs are also re-signed after mutation so that mutated requests get past the proof-of-possession
//! check and reach the extension and name parsing behind it. The only feedback is the error
//! message: an input that produces a new (normalized) error message joins the corpus.
//!
//! Every call runs under `catch_unwind`. A panic, or a broken property (key URI `Display`
//! round-trip and redaction, kubeconfig rewrite, DER re-parse), fails the test after the run; each
//! failing input is minimized, written under `$CARGO_TARGET_TMPDIR/fuzz-failures/` and printed in
//! base64 with the panic message and backtrace.
//!
//! Environment:
//! - `FUZZ_SECONDS`: seconds per target (default 3).
//! - `FUZZ_SEED`: the base RNG seed (decimal or 0x-hex); random when unset. It is printed; with the
//!   same seed a target mutates the same inputs in the same order (seeds are deterministic:
//!   generated inputs use RSA keys, whose PKCS#1 v1.5 signatures are deterministic).
//! - `FUZZ_MAX_ITERATIONS`: iteration bound per target (default 1,000,000).
//!
//! Run: `cargo test -p integration --test fuzz` (summaries go straight to stderr, so they show
//! without `--nocapture`); one target: `... --test fuzz fuzz_key_uri`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use der::Encode as _;
use kubesign_cli::config::{self, Config};
use kubesign_cli::kubeconfig::Kubeconfig;
use signer_api::audit::{AuditRecord, RequestContext};
use signer_api::ca::{self, CertificateSubject};
use signer_api::keyuri::PinSource;
use signer_api::{CaRole, KeyUri, VerifiedCsr, pem, profile, verify};

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

const MAX_INPUT: usize = 128 * 1024;
const MAX_CORPUS: usize = 2048;
const MAX_FAILURES_KEPT: usize = 16;

fn fuzz_seconds() -> f64 {
    std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(3.0)
}

fn max_iterations() -> u64 {
    std::env::var("FUZZ_MAX_ITERATIONS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1_000_000)
}

/// The base seed: FUZZ_SEED, or a fresh random one (printed either way).
fn base_seed() -> (u64, bool) {
    static SEED: OnceLock<(u64, bool)> = OnceLock::new();
    *SEED.get_or_init(|| {
        if let Ok(s) = std::env::var("FUZZ_SEED") {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            };
            match parsed {
                Some(v) => return (v, true),
                None => panic!("FUZZ_SEED={s:?} is not a decimal or 0x-hex u64"),
            }
        }
        let mut bytes = [0u8; 8];
        aws_lc_rs::rand::fill(&mut bytes).expect("system RNG");
        (u64::from_le_bytes(bytes) >> 1, false)
    })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

fn failure_dir() -> PathBuf {
    let base = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_TARGET_TMPDIR").map(PathBuf::from))
        .unwrap_or_else(std::env::temp_dir);
    base.join("fuzz-failures")
}

/// Writes straight to stderr: libtest captures `print!`/`eprint!` of passing tests, and the
/// per-target summary should be visible in every run.
fn say(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

// ---------------------------------------------------------------------------------------------
// Deterministic RNG (SplitMix64)
// ---------------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next() % den < num
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    /// A length skewed towards small values, up to `max`.
    fn len_upto(&mut self, max: usize) -> usize {
        let bits = self.below(usize::BITS as usize - max.leading_zeros() as usize + 1);
        (self.below(1usize << bits) + 1).min(max.max(1))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------------------
// Panic capture
// ---------------------------------------------------------------------------------------------

thread_local! {
    static FUZZING: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<PanicInfo>> = const { RefCell::new(None) };
}

#[derive(Clone, Debug)]
struct PanicInfo {
    location: String,
    message: String,
    backtrace: String,
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if FUZZING.with(Cell::get) {
                let location = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                    .unwrap_or_default();
                let payload = info.payload();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "<non-string panic payload>".into());
                let backtrace = std::backtrace::Backtrace::force_capture().to_string();
                LAST_PANIC.with(|p| {
                    *p.borrow_mut() = Some(PanicInfo {
                        location,
                        message,
                        backtrace,
                    })
                });
            } else {
                previous(info);
            }
        }));
    });
}

// ---------------------------------------------------------------------------------------------
// What a target reports for one input
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Report {
    outcomes: Vec<(&'static str, Result<(), String>)>,
    violations: Vec<String>,
    notes: Vec<&'static str>,
}

impl Report {
    fn ok(&mut self, sub: &'static str) {
        self.outcomes.push((sub, Ok(())));
    }
    fn err(&mut self, sub: &'static str, message: impl ToString) {
        self.outcomes.push((sub, Err(message.to_string())));
    }
    fn result<T, E: std::fmt::Display>(&mut self, sub: &'static str, r: &Result<T, E>) {
        match r {
            Ok(_) => self.ok(sub),
            Err(e) => self.err(sub, format!("{e:#}")),
        }
    }
    /// A broken property: fails the test.
    fn violation(&mut self, message: String) {
        self.violations.push(message);
    }
    /// An observation worth counting that is not a failure.
    fn note(&mut self, what: &'static str) {
        self.notes.push(what);
    }
}

enum RunResult {
    Done(Report),
    Panicked(PanicInfo),
}

type RunFn = fn(&[u8], &mut Report);

fn run_one(run: RunFn, input: &[u8]) -> RunResult {
    let mut report = Report::default();
    FUZZING.with(|f| f.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(|| run(input, &mut report)));
    FUZZING.with(|f| f.set(false));
    match result {
        Ok(()) => RunResult::Done(report),
        Err(_) => RunResult::Panicked(LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or(
            PanicInfo {
                location: "<unknown>".into(),
                message: "<panic hook did not record>".into(),
                backtrace: String::new(),
            },
        )),
    }
}

/// An error message with quoted text, numbers, OIDs and random-looking words folded, so that
/// "distinct error messages" counts code paths rather than inputs.
fn normalize(message: &str) -> String {
    // Quoted text first (Debug-quoted values may contain spaces and escaped quotes).
    let mut unquoted = String::new();
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            unquoted.push(c);
            continue;
        }
        loop {
            match chars.next() {
                Some('\\') => {
                    chars.next();
                }
                Some('"') | None => break,
                Some(_) => {}
            }
        }
        unquoted.push_str("\"…\"");
    }
    // A PEM error repeats the (input) label.
    if let Some(i) = unquoted.find("-----END ").map(|i| i + "-----END ".len())
        && let Some(j) = unquoted.rfind("-----")
        && j > i
    {
        unquoted.replace_range(i..j, "…");
    }
    // serde names the offending field or variant between backticks: input text.
    for marker in ["field `", "variant `", "tag `"] {
        let mut from = 0;
        while let Some(i) = unquoted[from..]
            .find(marker)
            .map(|i| i + from + marker.len())
        {
            match unquoted[i..].find('`') {
                Some(j) => {
                    unquoted.replace_range(i..i + j, "…");
                    from = i + "…".len() + 1;
                }
                None => break,
            }
        }
    }
    // serde messages start with the path of the offending value, which is input text.
    // serde_yaml puts the path of the offending value (input keys) before its message:
    // "<file>: [not valid YAML: ]<path>: <message>". Fold the path.
    const SERDE_MESSAGES: &[&str] = &[
        "invalid type",
        "invalid value",
        "invalid length",
        "unknown variant",
        "unknown field",
        "missing field",
        "duplicate field",
        "duplicate entry",
        "recursion limit",
        "repetition limit",
        "unexpected end",
        "invalid leading",
        "invalid trailing",
        "incomplete UTF",
        "untagged",
    ];
    if let Some(i) = SERDE_MESSAGES.iter().filter_map(|m| unquoted.find(m)).min() {
        let head = &unquoted[..i];
        let start = ["YAML: ", ".yaml: ", ".conf: "]
            .iter()
            .filter_map(|m| head.rfind(m).map(|j| j + m.len()))
            .max();
        if let Some(j) = start
            && j < i
        {
            unquoted.replace_range(j..i, "…: ");
        }
    }
    let mut out: Vec<String> = Vec::new();
    for word in unquoted.split_whitespace() {
        let mut w = String::new();
        let mut cs = word.chars().peekable();
        while let Some(c) = cs.next() {
            if c.is_ascii_digit() {
                while cs.peek().is_some_and(char::is_ascii_digit) {
                    cs.next();
                }
                w.push('N');
            } else {
                w.push(c);
            }
        }
        while w.contains("N.N") {
            w = w.replace("N.N", "N");
        }
        let case_switches = w
            .as_bytes()
            .windows(2)
            .filter(|p| {
                p[0].is_ascii_alphabetic()
                    && p[1].is_ascii_alphabetic()
                    && p[0].is_ascii_uppercase() != p[1].is_ascii_uppercase()
            })
            .count();
        // serde paths (`users[N].user:`) and other labels ending in ':' that are not plain words.
        if let Some(stem) = w.strip_suffix(':')
            && !stem.is_empty()
            && !stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            w = "…:".into();
        }
        if w.matches(':').count() > 2 {
            w = "…".into();
        }
        // Paths and URIs are shown unquoted; random-looking or non-ASCII words are input too.
        if !w.is_ascii() || w.len() > 32 || case_switches > 4 || w.contains('/') || w.contains('\\')
        {
            w = "…".into();
        }
        if out.last().is_some_and(|l| l == "…") && w == "…" {
            continue;
        }
        out.push(w);
        if out.len() >= 30 {
            out.push("…".into());
            break;
        }
    }
    out.join(" ")
}

// ---------------------------------------------------------------------------------------------
// DER tree: parse, mutate, re-encode with correct lengths
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Node {
    Prim {
        tag: Vec<u8>,
        body: Vec<u8>,
    },
    /// A constructed value, or an OCTET/BIT STRING whose content is DER (`wrap` holds the bytes
    /// before the inner DER: empty, or the BIT STRING's unused-bits octet).
    Cons {
        tag: Vec<u8>,
        wrap: Option<Vec<u8>>,
        kids: Vec<Node>,
    },
}

fn der_parse_all(b: &[u8], depth: usize) -> Option<Vec<Node>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let (node, used) = der_parse_one(&b[i..], depth)?;
        out.push(node);
        i += used;
    }
    Some(out)
}

/// Returns (header length, body length) of the TLV at the start of `b`.
fn der_header(b: &[u8]) -> Option<(usize, usize)> {
    let t0 = *b.first()?;
    let mut i = 1;
    if t0 & 0x1f == 0x1f {
        loop {
            let x = *b.get(i)?;
            i += 1;
            if x & 0x80 == 0 {
                break;
            }
            if i > 5 {
                return None;
            }
        }
    }
    let l0 = *b.get(i)?;
    i += 1;
    let len = if l0 < 0x80 {
        usize::from(l0)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut v = 0usize;
        for _ in 0..n {
            v = (v << 8) | usize::from(*b.get(i)?);
            i += 1;
        }
        v
    };
    (b.len() >= i.checked_add(len)?).then_some((i, len))
}

fn der_parse_one(b: &[u8], depth: usize) -> Option<(Node, usize)> {
    let (hdr, len) = der_header(b)?;
    let t0 = b[0];
    let tag_len = hdr - len_field_size(b, hdr);
    let tag = b[..tag_len].to_vec();
    let body = &b[hdr..hdr + len];
    if depth < 48 {
        if t0 & 0x20 != 0 {
            if let Some(kids) = der_parse_all(body, depth + 1) {
                return Some((
                    Node::Cons {
                        tag,
                        wrap: None,
                        kids,
                    },
                    hdr + len,
                ));
            }
        } else if t0 == 0x04
            && body
                .first()
                .is_some_and(|f| matches!(f, 0x30 | 0x31 | 0x03 | 0x04))
        {
            if let Some(kids) = der_parse_all(body, depth + 1) {
                return Some((
                    Node::Cons {
                        tag,
                        wrap: Some(Vec::new()),
                        kids,
                    },
                    hdr + len,
                ));
            }
        } else if t0 == 0x03
            && body.len() > 2
            && body[0] == 0
            && body[1] == 0x30
            && let Some(kids) = der_parse_all(&body[1..], depth + 1)
        {
            return Some((
                Node::Cons {
                    tag,
                    wrap: Some(vec![0]),
                    kids,
                },
                hdr + len,
            ));
        }
    }
    Some((
        Node::Prim {
            tag,
            body: body.to_vec(),
        },
        hdr + len,
    ))
}

/// The size of the length field of the header of length `hdr` at the start of `b`.
fn len_field_size(b: &[u8], hdr: usize) -> usize {
    // The tag is 1 byte unless its low 5 bits are all set; the length field is what remains.
    let mut tag_len = 1;
    if b[0] & 0x1f == 0x1f {
        while tag_len < hdr && b[tag_len] & 0x80 != 0 {
            tag_len += 1;
        }
        tag_len += 1;
    }
    hdr - tag_len
}

fn der_push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn der_encode(node: &Node, out: &mut Vec<u8>) {
    match node {
        Node::Prim { tag, body } => {
            out.extend_from_slice(tag);
            der_push_len(out, body.len());
            out.extend_from_slice(body);
        }
        Node::Cons { tag, wrap, kids } => {
            let mut inner = wrap.clone().unwrap_or_default();
            for k in kids {
                der_encode(k, &mut inner);
            }
            out.extend_from_slice(tag);
            der_push_len(out, inner.len());
            out.extend_from_slice(&inner);
        }
    }
}

fn der_encode_all(nodes: &[Node]) -> Vec<u8> {
    let mut out = Vec::new();
    for n in nodes {
        der_encode(n, &mut out);
    }
    out
}

fn der_count(nodes: &[Node]) -> usize {
    nodes
        .iter()
        .map(|n| {
            1 + if let Node::Cons { kids, .. } = n {
                der_count(kids)
            } else {
                0
            }
        })
        .sum()
}

fn der_nth_mut<'a>(nodes: &'a mut [Node], k: &mut usize) -> Option<&'a mut Node> {
    for n in nodes.iter_mut() {
        if *k == 0 {
            return Some(n);
        }
        *k -= 1;
        if let Node::Cons { kids, .. } = n
            && let Some(found) = der_nth_mut(kids, k)
        {
            return Some(found);
        }
    }
    None
}

/// Every subtree of `nodes`, encoded, for splicing into other inputs.
fn der_subtrees(nodes: &[Node], out: &mut Vec<Vec<u8>>) {
    for n in nodes {
        let mut enc = Vec::new();
        der_encode(n, &mut enc);
        if enc.len() <= 4096 {
            out.push(enc);
        }
        if let Node::Cons { kids, .. } = n {
            der_subtrees(kids, out);
        }
    }
}

const INTERESTING_TAGS: &[u8] = &[
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0a, 0x0c, 0x13, 0x14, 0x16, 0x17, 0x18, 0x1c, 0x1e,
    0x30, 0x31, 0x80, 0x81, 0x82, 0x83, 0x86, 0x87, 0x88, 0xa0, 0xa1, 0xa3, 0xa4, 0xff,
];

fn interesting_body(rng: &mut Rng, tag: u8) -> Vec<u8> {
    const INTS: &[&[u8]] = &[
        &[],
        &[0],
        &[0, 0],
        &[0x80],
        &[0xff],
        &[0x7f],
        &[0, 0x80],
        &[1],
        &[0xff; 21],
        &[0; 129],
    ];
    const OIDS: &[&[u8]] = &[
        &[],
        &[0x80],
        &[0x2a, 0x86],
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e], // extensionRequest
        &[0x55, 0x1d, 0x11],                                     // subjectAltName
        &[0x55, 0x1d, 0x13],                                     // basicConstraints
        &[0x55, 0x1d, 0x0f],                                     // keyUsage
        &[0x55, 0x1d, 0x25],                                     // extKeyUsage
        &[0x55, 0x04, 0x03],                                     // CN
        &[0x55, 0x04, 0x0a],                                     // O
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01],             // ecPublicKey
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],       // P-256
        &[0x2b, 0x81, 0x04, 0x00, 0x22],                         // P-384
        &[0x2b, 0x81, 0x04, 0x00, 0x23],                         // P-521
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01], // rsaEncryption
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b], // sha256WithRSA
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a], // RSASSA-PSS
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],       // ecdsa-with-SHA256
        &[0x2b, 0x65, 0x70],                                     // Ed25519
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
    ];
    const STRINGS: &[&[u8]] = &[
        b"",
        b"\0",
        &[0xc3, 0x28],
        &[0xff, 0xfe],
        b"kube-apiserver",
        b"system:masters",
        b"kubeadm:cluster-admins",
        b"system:node:node-1",
        b"kubernetes.default.svc.cluster.local",
        b"*.example.com",
        b"a,b+c=d\\",
    ];
    const TIMES: &[&[u8]] = &[
        b"991231235959Z",
        b"500101000000Z",
        b"491231235959Z",
        b"20500101000000Z",
        b"99991231235959Z",
        b"00000101000000Z",
        b"19700101000000Z",
        b"19691231235959Z",
        b"20240229000000Z",
        b"20230229000000Z",
        b"20241301000000Z",
        b"20240101246060Z",
        b"2024010100000Z",
        b"20240101000000.5Z",
        b"20240101000000+0100",
        b"240101000000Z",
        b"",
    ];
    const IPS: &[&[u8]] = &[
        &[],
        &[127, 0, 0, 1],
        &[10, 96, 0, 1, 0],
        &[0; 16],
        &[0xff; 8],
        &[198, 51, 100, 10],
    ];
    const BOOLS: &[&[u8]] = &[&[0xff], &[0x00], &[0x01], &[], &[0, 0]];
    const BITS: &[&[u8]] = &[
        &[0x00],
        &[0x07, 0x80],
        &[0x08, 0xff],
        &[],
        &[0x05, 0xa0],
        &[0x00, 0x04, 0x01],
    ];
    let pool: &[&[u8]] = match tag {
        0x02 | 0x0a => INTS,
        0x06 => OIDS,
        0x0c | 0x13 | 0x14 | 0x16 | 0x1c | 0x1e | 0x82 | 0x81 | 0x86 => STRINGS,
        0x17 | 0x18 => TIMES,
        0x87 => IPS,
        0x01 => BOOLS,
        0x03 => BITS,
        _ => match rng.below(4) {
            0 => INTS,
            1 => OIDS,
            2 => STRINGS,
            _ => TIMES,
        },
    };
    if rng.chance(1, 6) {
        let n = rng.len_upto(300);
        let fill = rng.byte();
        return vec![fill; n];
    }
    rng.pick(pool).to_vec()
}

fn der_mutate_node(node: &mut Node, rng: &mut Rng, donors: &[Vec<u8>]) {
    let donor_node = |rng: &mut Rng| -> Option<Node> {
        if donors.is_empty() {
            return None;
        }
        let d: &Vec<u8> = rng.pick(donors);
        der_parse_one(d, 0).map(|(n, _)| n)
    };
    match rng.below(10) {
        0 => {
            let tag = match node {
                Node::Prim { tag, .. } | Node::Cons { tag, .. } => tag,
            };
            if rng.chance(1, 2) {
                *tag = vec![*rng.pick(INTERESTING_TAGS)];
            } else {
                let bit = 1u8 << rng.below(8);
                tag[0] ^= bit;
            }
            if tag[0] & 0x1f == 0x1f && tag.len() == 1 {
                tag.push(rng.byte() & 0x7f);
            }
        }
        1 => {
            if let Some(n) = donor_node(rng) {
                *node = n;
            }
        }
        2 => {
            let tag = *rng.pick(&[0x30u8, 0x31, 0xa0, 0xa3, 0x04]);
            *node = Node::Cons {
                tag: vec![tag],
                wrap: None,
                kids: vec![node.clone()],
            };
        }
        _ => match node {
            Node::Prim { tag, body } => match rng.below(5) {
                0 | 1 => *body = interesting_body(rng, tag[0]),
                2 => {
                    let n = rng.below(body.len() + 1);
                    body.truncate(n);
                }
                3 => {
                    let n = rng.len_upto(64);
                    for _ in 0..n {
                        body.push(rng.byte());
                    }
                }
                _ => {
                    if !body.is_empty() {
                        let i = rng.below(body.len());
                        body[i] = rng.byte();
                    }
                }
            },
            Node::Cons { tag, wrap, kids } => match rng.below(7) {
                0 if !kids.is_empty() => {
                    let i = rng.below(kids.len());
                    kids.remove(i);
                }
                1 if !kids.is_empty() => {
                    let i = rng.below(kids.len());
                    let dup = kids[i].clone();
                    kids.insert(rng.below(kids.len() + 1), dup);
                }
                2 if kids.len() > 1 => {
                    let (a, b) = (rng.below(kids.len()), rng.below(kids.len()));
                    kids.swap(a, b);
                }
                3 => {
                    if let Some(n) = donor_node(rng) {
                        kids.insert(rng.below(kids.len() + 1), n);
                    }
                }
                4 => kids.clear(),
                5 => {
                    // Make it primitive: same bytes, no structure.
                    let mut body = wrap.clone().unwrap_or_default();
                    for k in kids.iter() {
                        der_encode(k, &mut body);
                    }
                    let cut = rng.below(body.len() + 1);
                    if rng.chance(1, 2) {
                        body.truncate(cut);
                    }
                    *node = Node::Prim {
                        tag: tag.clone(),
                        body,
                    };
                }
                _ => {
                    if !kids.is_empty() {
                        let i = rng.below(kids.len());
                        der_mutate_node(&mut kids[i], rng, donors);
                    }
                }
            },
        },
    }
}

/// A tree-level DER mutation with re-encoded lengths; `None` when `der` does not parse as DER.
fn der_tree_mutation(der: &[u8], rng: &mut Rng, donors: &[Vec<u8>]) -> Option<Vec<u8>> {
    let mut nodes = der_parse_all(der, 0)?;
    let total = der_count(&nodes);
    if total == 0 {
        return None;
    }
    for _ in 0..1 + rng.below(2) {
        let mut k = rng.below(der_count(&nodes).max(1));
        if let Some(n) = der_nth_mut(&mut nodes, &mut k) {
            der_mutate_node(n, rng, donors);
        }
    }
    Some(der_encode_all(&nodes))
}

/// The offsets of every TLV header in `der` (walking into constructed values): (tag offset,
/// header length, body length).
fn der_headers(der: &[u8]) -> Vec<(usize, usize, usize)> {
    fn walk(b: &[u8], base: usize, depth: usize, out: &mut Vec<(usize, usize, usize)>) {
        let mut i = 0;
        while i < b.len() && out.len() < 4096 {
            let Some((hdr, len)) = der_header(&b[i..]) else {
                return;
            };
            out.push((base + i, hdr, len));
            let body = &b[i + hdr..i + hdr + len];
            if depth < 48 && (b[i] & 0x20 != 0 || (b[i] == 0x04 && body.first() == Some(&0x30))) {
                walk(body, base + i + hdr, depth + 1, out);
            }
            i += hdr + len;
        }
    }
    let mut out = Vec::new();
    walk(der, 0, 0, &mut out);
    out
}

/// A raw DER tweak that leaves the enclosing lengths alone: corrupt one length or one tag.
fn der_raw_tweak(der: &mut Vec<u8>, rng: &mut Rng) -> bool {
    let headers = der_headers(der);
    if headers.is_empty() {
        return false;
    }
    let (at, hdr, len) = *rng.pick(&headers);
    let tag_len = hdr - len_field_size(&der[at..], hdr);
    let len_at = at + tag_len;
    match rng.below(8) {
        0 => der[at] = *rng.pick(INTERESTING_TAGS),
        1 => der[at] ^= 0x20,    // constructed <-> primitive
        2 => der[len_at] = 0x80, // indefinite length: not DER
        3 => der[len_at] = *rng.pick(&[0x85u8, 0x88, 0xff, 0x81, 0x84]),
        4 => {
            // Non-minimal long form of the same length.
            let mut new = vec![0x82, (len >> 8) as u8, len as u8];
            if rng.chance(1, 2) {
                new = vec![0x84, 0, 0, (len >> 8) as u8, len as u8];
            }
            der.splice(len_at..at + hdr, new);
        }
        5 => {
            // Off by one (or more) in either direction, keeping the field's size.
            let delta = *rng.pick(&[-2i64, -1, 1, 2, 128, -128]);
            let new_len = (len as i64 + delta).max(0) as usize;
            let mut field = Vec::new();
            der_push_len(&mut field, new_len);
            der.splice(len_at..at + hdr, field);
        }
        6 => {
            let mut field = Vec::new();
            der_push_len(
                &mut field,
                *rng.pick(&[0usize, 0x7f, 0x80, 0xffff, 0x00ff_ffff, 0x7fff_ffff]),
            );
            der.splice(len_at..at + hdr, field);
        }
        _ => {
            // Drop the whole TLV, or just its body.
            if rng.chance(1, 2) {
                der.drain(at..at + hdr + len);
            } else {
                der.drain(at + hdr..at + hdr + len);
            }
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// PEM framing for the mutators (deliberately independent of signer_api::pem, which is a target)
// ---------------------------------------------------------------------------------------------

struct PemFrame {
    prefix: Vec<u8>,
    label: String,
    suffix: Vec<u8>,
}

fn pem_unwrap(input: &[u8]) -> Option<(PemFrame, Vec<u8>)> {
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let begin = find(input, b"-----BEGIN ", 0)?;
    let label_start = begin + 11;
    let label_end = find(input, b"-----", label_start)?;
    let label = String::from_utf8(input[label_start..label_end].to_vec()).ok()?;
    let body_start = label_end + 5;
    let end_marker = format!("-----END {label}-----");
    let end = find(input, end_marker.as_bytes(), body_start)?;
    let body: Vec<u8> = input[body_start..end]
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let der = B64.decode(&body).ok()?;
    let mut suffix_start = end + end_marker.len();
    if input.get(suffix_start) == Some(&b'\n') {
        suffix_start += 1;
    }
    Some((
        PemFrame {
            prefix: input[..begin].to_vec(),
            label,
            suffix: input[suffix_start..].to_vec(),
        },
        der,
    ))
}

fn pem_wrap(label: &str, der: &[u8]) -> Vec<u8> {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out.into_bytes()
}

fn pem_rewrap(frame: &PemFrame, der: &[u8]) -> Vec<u8> {
    let mut out = frame.prefix.clone();
    out.extend_from_slice(&pem_wrap(&frame.label, der));
    out.extend_from_slice(&frame.suffix);
    out
}

// ---------------------------------------------------------------------------------------------
// Mutators
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// PEM or DER X.509 structures.
    Der,
    /// Text (URIs).
    Text,
    /// YAML documents: text edits plus edits of the parsed document tree.
    Yaml,
}

struct Mutator<'a> {
    kind: Kind,
    corpus: &'a [Vec<u8>],
    donors: &'a [Vec<u8>],
    dictionary: &'a [&'a str],
    resigner: Option<&'a Resigner>,
}

const UNICODE: &[&str] = &[
    "é",
    "\u{0}",
    "\u{7f}",
    "\u{85}",
    "\u{a0}",
    "\u{200b}",
    "\u{202e}",
    "\u{feff}",
    "😀",
    "İ",
    "ß",
    "\u{fffd}",
    "\u{10ffff}",
];

fn byte_mutation(data: &mut Vec<u8>, rng: &mut Rng, other: &[u8]) {
    const INTERESTING: &[u8] = &[
        0, 1, 0x7f, 0x80, 0x81, 0x82, 0xff, 0x30, 0x0a, 0x0d, b'-', b'=', b'%', b':', b' ',
    ];
    match rng.below(10) {
        0 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] ^= 1 << rng.below(8);
        }
        1 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] = if rng.chance(1, 2) {
                *rng.pick(INTERESTING)
            } else {
                rng.byte()
            };
        }
        2 => {
            let i = rng.below(data.len() + 1);
            let n = rng.len_upto(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            data.splice(i..i, bytes);
        }
        3 if !data.is_empty() => {
            let i = rng.below(data.len());
            let n = rng.len_upto((data.len() - i).min(64));
            data.drain(i..i + n);
        }
        4 if !data.is_empty() => {
            // Duplicate a chunk elsewhere.
            let i = rng.below(data.len());
            let n = rng.len_upto((data.len() - i).min(256));
            let chunk = data[i..i + n].to_vec();
            let at = rng.below(data.len() + 1);
            data.splice(at..at, chunk);
        }
        5 if !other.is_empty() => {
            // Splice a chunk of another input in (insert or overwrite).
            let i = rng.below(other.len());
            let n = rng.len_upto((other.len() - i).min(512));
            let at = rng.below(data.len() + 1);
            let end = if rng.chance(1, 2) {
                at
            } else {
                (at + n).min(data.len())
            };
            data.splice(at..end, other[i..i + n].iter().copied());
        }
        6 if !other.is_empty() => {
            // Crossover: our prefix, their suffix.
            let a = rng.below(data.len() + 1);
            let b = rng.below(other.len());
            data.truncate(a);
            data.extend_from_slice(&other[b..]);
        }
        7 if !data.is_empty() => {
            let n = rng.below(data.len());
            data.truncate(n);
        }
        8 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] = data[i].wrapping_add(*rng.pick(&[1u8, 2, 0xff, 0xfe, 16, 0xf0]));
        }
        _ => {
            let i = rng.below(data.len() + 1);
            data.splice(i..i, rng.pick(UNICODE).bytes());
        }
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-' || b >= 0x80
}

/// The spans of "words" (runs of word bytes) in `data`.
fn words(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if is_word_byte(data[i]) {
            let s = i;
            while i < data.len() && is_word_byte(data[i]) {
                i += 1;
            }
            out.push((s, i));
        } else {
            i += 1;
        }
    }
    out
}

fn line_spans(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut s = 0;
    for (i, b) in data.iter().enumerate() {
        if *b == b'\n' {
            out.push((s, i + 1));
            s = i + 1;
        }
    }
    if s < data.len() {
        out.push((s, data.len()));
    }
    out
}

fn long_value(rng: &mut Rng, dictionary: &[&str]) -> Vec<u8> {
    let n = rng.len_upto(8192);
    match rng.below(3) {
        0 => vec![*rng.pick(b"Aa0%/;=&?:-.x"); n],
        1 => rng.pick(dictionary).as_bytes().repeat(n.min(2048) / 4 + 1),
        _ => (0..n).map(|_| b'a' + (rng.below(26) as u8)).collect(),
    }
}

fn text_mutation(data: &mut Vec<u8>, rng: &mut Rng, dictionary: &[&str], other: &[u8]) {
    let token = |rng: &mut Rng| -> Vec<u8> {
        if rng.chance(1, 8) {
            rng.pick(UNICODE).as_bytes().to_vec()
        } else {
            rng.pick(dictionary).as_bytes().to_vec()
        }
    };
    let ws = words(data);
    match rng.below(11) {
        0 | 1 => {
            // Insert a token, preferably at a boundary.
            let at = if !ws.is_empty() && rng.chance(2, 3) {
                let (s, e) = *rng.pick(&ws);
                if rng.chance(1, 2) { s } else { e }
            } else {
                rng.below(data.len() + 1)
            };
            let t = token(rng);
            data.splice(at..at, t);
        }
        2 if !ws.is_empty() => {
            let (s, e) = *rng.pick(&ws);
            let t = token(rng);
            data.splice(s..e, t);
        }
        3 if !ws.is_empty() => {
            let (s, e) = *rng.pick(&ws);
            let v = long_value(rng, dictionary);
            data.splice(s..e, v);
        }
        4 if !ws.is_empty() => {
            let (s, e) = *rng.pick(&ws);
            data.drain(s..e);
        }
        5 if !ws.is_empty() => {
            // Replace a word with a word of another input.
            let theirs = words(other);
            if !theirs.is_empty() {
                let (s, e) = *rng.pick(&ws);
                let (a, b) = *rng.pick(&theirs);
                data.splice(s..e, other[a..b].iter().copied());
            }
        }
        6 => {
            let lines = line_spans(data);
            if !lines.is_empty() {
                let (s, e) = *rng.pick(&lines);
                match rng.below(4) {
                    0 => {
                        let l = data[s..e].to_vec();
                        let at = rng.pick(&lines).0;
                        data.splice(at..at, l);
                    }
                    1 => {
                        data.drain(s..e);
                    }
                    2 => {
                        data.splice(s..s, b"  ".iter().copied());
                    }
                    _ => {
                        if data[s..e].starts_with(b"  ") {
                            data.drain(s..s + 2);
                        }
                    }
                }
            }
        }
        7 => {
            // Insert a line of another input.
            let theirs = line_spans(other);
            if !theirs.is_empty() {
                let (a, b) = *rng.pick(&theirs);
                let lines = line_spans(data);
                let at = if lines.is_empty() {
                    0
                } else {
                    rng.pick(&lines).0
                };
                data.splice(at..at, other[a..b].iter().copied());
            }
        }
        8 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] = if data[i].is_ascii_lowercase() {
                data[i].to_ascii_uppercase()
            } else {
                data[i].to_ascii_lowercase()
            };
        }
        9 => {
            let at = rng.below(data.len() + 1);
            let v = long_value(rng, dictionary);
            data.splice(at..at, v);
        }
        _ => byte_mutation(data, rng, other),
    }
}

fn yaml_count(v: &serde_yaml::Value) -> usize {
    use serde_yaml::Value;
    1 + match v {
        Value::Sequence(s) => s.iter().map(yaml_count).sum(),
        Value::Mapping(m) => m.values().map(yaml_count).sum(),
        Value::Tagged(t) => yaml_count(&t.value),
        _ => 0,
    }
}

fn yaml_nth_mut<'a>(
    v: &'a mut serde_yaml::Value,
    k: &mut usize,
) -> Option<&'a mut serde_yaml::Value> {
    use serde_yaml::Value;
    if *k == 0 {
        return Some(v);
    }
    *k -= 1;
    match v {
        Value::Sequence(s) => s.iter_mut().find_map(|c| yaml_nth_mut(c, k)),
        Value::Mapping(m) => m.values_mut().find_map(|c| yaml_nth_mut(c, k)),
        Value::Tagged(t) => yaml_nth_mut(&mut t.value, k),
        _ => None,
    }
}

fn yaml_any_node(v: &serde_yaml::Value, rng: &mut Rng) -> serde_yaml::Value {
    let mut v = v.clone();
    let mut k = rng.below(yaml_count(&v));
    yaml_nth_mut(&mut v, &mut k)
        .map(|n| n.clone())
        .unwrap_or(serde_yaml::Value::Null)
}

/// Parses YAML, changes one node of the document (keeping the rest valid) and serializes it again.
fn yaml_mutation(data: &[u8], rng: &mut Rng, dictionary: &[&str], other: &[u8]) -> Option<Vec<u8>> {
    use serde_yaml::{Mapping, Value};
    let mut doc: Value = serde_yaml::from_slice(data).ok()?;
    let donor: Option<Value> = serde_yaml::from_slice(other).ok();
    let mut k = rng.below(yaml_count(&doc));
    let node = yaml_nth_mut(&mut doc, &mut k)?;
    let token = |rng: &mut Rng| -> Value {
        match rng.below(8) {
            0 => Value::Null,
            1 => Value::Bool(rng.chance(1, 2)),
            2 => Value::Number((rng.next() as i64 >> rng.below(64)).into()),
            3 => Value::String(String::from_utf8_lossy(&long_value(rng, dictionary)).into_owned()),
            4 => Value::Sequence(Vec::new()),
            5 => Value::Mapping(Mapping::new()),
            _ => Value::String(
                (*rng.pick(dictionary))
                    .trim()
                    .trim_end_matches(':')
                    .to_owned(),
            ),
        }
    };
    match node {
        Value::Mapping(m) if !m.is_empty() && rng.chance(2, 3) => {
            let keys: Vec<Value> = m.keys().cloned().collect();
            let key = rng.pick(&keys).clone();
            match rng.below(5) {
                0 => {
                    m.remove(&key);
                }
                1 => {
                    let v = m.get(&key).cloned().unwrap_or(Value::Null);
                    let new_key = token(rng);
                    m.insert(new_key, v);
                }
                2 => {
                    let v = m.remove(&key).unwrap_or(Value::Null);
                    let new_key = match &key {
                        Value::String(s) => {
                            Value::String(format!("{s}{}", rng.pick(&["x", "_", "-1", " ", "A"])))
                        }
                        _ => token(rng),
                    };
                    m.insert(new_key, v);
                }
                3 => {
                    let v = token(rng);
                    m.insert(key, v);
                }
                _ => {
                    let v = donor
                        .as_ref()
                        .map(|d| yaml_any_node(d, rng))
                        .unwrap_or(Value::Null);
                    m.insert(key, v);
                }
            }
        }
        Value::Sequence(s) if !s.is_empty() && rng.chance(2, 3) => {
            let i = rng.below(s.len());
            match rng.below(3) {
                0 => {
                    s.remove(i);
                }
                1 => {
                    let dup = s[i].clone();
                    s.push(dup);
                }
                _ => {
                    let j = rng.below(s.len());
                    s.swap(i, j);
                }
            }
        }
        Value::String(text) if rng.chance(1, 2) => {
            // Edit inside the string: URIs, durations, paths, base64.
            let mut bytes = text.clone().into_bytes();
            text_mutation(&mut bytes, rng, dictionary, other);
            *text = String::from_utf8_lossy(&bytes).into_owned();
        }
        _ => {
            *node = if rng.chance(1, 3) {
                donor
                    .as_ref()
                    .map(|d| yaml_any_node(d, rng))
                    .unwrap_or(Value::Null)
            } else {
                token(rng)
            };
        }
    }
    serde_yaml::to_string(&doc).ok().map(String::into_bytes)
}

const PEM_LABELS: &[&str] = &[
    "CERTIFICATE REQUEST",
    "CERTIFICATE",
    "NEW CERTIFICATE REQUEST",
    "X",
];

impl Mutator<'_> {
    fn mutate(&self, parent: &[u8], rng: &mut Rng) -> Vec<u8> {
        let other = rng.pick(self.corpus).clone();
        if let Some(r) = self.resigner
            && rng.chance(1, 12)
            && let Some(out) = r.resign(parent, rng, self.donors)
        {
            return out;
        }
        let mut data = parent.to_vec();
        let mut rounds = 1;
        while rounds < 6 && rng.chance(2, 5) {
            rounds += 1;
        }
        for _ in 0..rounds {
            match self.kind {
                Kind::Yaml if rng.chance(2, 5) => {
                    if let Some(m) = yaml_mutation(&data, rng, self.dictionary, &other) {
                        data = m;
                    } else {
                        text_mutation(&mut data, rng, self.dictionary, &other);
                    }
                }
                Kind::Text | Kind::Yaml => {
                    if rng.chance(3, 4) {
                        text_mutation(&mut data, rng, self.dictionary, &other);
                    } else {
                        byte_mutation(&mut data, rng, &other);
                    }
                }
                Kind::Der => {
                    let framed = pem_unwrap(&data);
                    match rng.below(10) {
                        0..=3 => {
                            // Structure-aware: inside the PEM when there is one.
                            let (frame, der) = match framed {
                                Some((f, d)) => (Some(f), d),
                                None => (None, data.clone()),
                            };
                            let mutated = if rng.chance(2, 3) {
                                der_tree_mutation(&der, rng, self.donors)
                            } else {
                                let mut d = der.clone();
                                der_raw_tweak(&mut d, rng).then_some(d)
                            };
                            if let Some(m) = mutated {
                                data = match frame {
                                    Some(f) => pem_rewrap(&f, &m),
                                    None => m,
                                };
                            } else {
                                byte_mutation(&mut data, rng, &other);
                            }
                        }
                        4 => {
                            // Switch between PEM and DER.
                            data = match framed {
                                Some((_, der)) => der,
                                None => {
                                    let label: &&str = rng.pick(PEM_LABELS);
                                    pem_wrap(label, &data)
                                }
                            };
                        }
                        5 => text_mutation(&mut data, rng, self.dictionary, &other),
                        _ => {
                            if let Some((frame, mut der)) = framed
                                && rng.chance(1, 2)
                            {
                                byte_mutation(&mut der, rng, &other);
                                data = pem_rewrap(&frame, &der);
                            } else {
                                byte_mutation(&mut data, rng, &other);
                            }
                        }
                    }
                }
            }
        }
        data.truncate(MAX_INPUT);
        data
    }
}

/// Re-signs a (mutated) PKCS#10 request with a key we hold, so the request passes proof of
/// possession and the parser goes on to the attributes and extensions. RSA PKCS#1 v1.5 keeps it
/// deterministic.
struct Resigner {
    key: aws_lc_rs::signature::RsaKeyPair,
    spki: Vec<u8>,
}

impl Resigner {
    fn new() -> Self {
        let pem_text =
            std::fs::read(workspace_root().join("examples/kubeadm-csr/pki/apiserver.key"))
                .expect("example key");
        let (_, der) = pem_unwrap(&pem_text).expect("example key is PEM");
        let key =
            aws_lc_rs::signature::RsaKeyPair::from_der(&der).expect("example key is PKCS#1 RSA");
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair;
        let spki = key.public_key().as_der().expect("SPKI").as_ref().to_vec();
        Resigner { key, spki }
    }

    fn resign(&self, input: &[u8], rng: &mut Rng, donors: &[Vec<u8>]) -> Option<Vec<u8>> {
        let (frame, der) = match pem_unwrap(input) {
            Some((f, d)) => (Some(f), d),
            None => (None, input.to_vec()),
        };
        let mut top = der_parse_all(&der, 0)?;
        let Node::Cons { kids: outer, .. } = top.first_mut()? else {
            return None;
        };
        let Node::Cons { kids: info, .. } = outer.first_mut()? else {
            return None;
        };
        for _ in 0..rng.below(4) {
            let mut k = rng.below(der_count(info).max(1));
            if let Some(n) = der_nth_mut(info, &mut k) {
                der_mutate_node(n, rng, donors);
            }
        }
        if info.len() >= 3 && rng.chance(9, 10) {
            info[2] = der_parse_one(&self.spki, 0)?.0;
        }
        let mut info_der = Vec::new();
        der_encode(outer.first()?, &mut info_der);
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                &info_der,
                &mut sig,
            )
            .ok()?;
        // sha256WithRSAEncryption, NULL parameters.
        let alg = der_parse_one(
            &[
                0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05,
                0x00,
            ],
            0,
        )?
        .0;
        let mut bits = vec![0u8];
        bits.extend_from_slice(&sig);
        outer.truncate(1);
        outer.push(alg);
        outer.push(Node::Prim {
            tag: vec![0x03],
            body: bits,
        });
        let out = der_encode_all(&top);
        Some(match frame {
            Some(f) if rng.chance(3, 4) => pem_rewrap(&f, &out),
            _ => out,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The engine
// ---------------------------------------------------------------------------------------------

struct Target {
    name: &'static str,
    test: &'static str,
    kind: Kind,
    run: RunFn,
    /// The sub-result that must see both Ok and Err outcomes.
    primary: &'static [&'static str],
    seeds: Vec<Vec<u8>>,
    dictionary: &'static [&'static str],
    resign: bool,
}

#[derive(Default)]
struct SubStats {
    ok: u64,
    err: u64,
    raw_messages: HashSet<u64>,
    classes: BTreeMap<String, u64>,
}

struct Failure {
    what: String,
    key: String,
    input: Vec<u8>,
    detail: String,
    iteration: u64,
}

fn corpus_files(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = workspace_root()
        .join("integration/fuzz-corpus")
        .join(target);
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    for p in paths {
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.') || n == "README.md")
        {
            continue;
        }
        if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
    out
}

/// Shrinks `input` while `still_fails` holds (greedy chunk deletion), bounded in attempts.
fn minimize(input: &[u8], still_fails: &dyn Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut best = input.to_vec();
    let mut attempts = 0;
    let mut chunk = (best.len() / 2).max(1);
    while chunk >= 1 && attempts < 4000 {
        let mut i = 0;
        let mut progressed = false;
        while i < best.len() && attempts < 4000 {
            let end = (i + chunk).min(best.len());
            let mut candidate = best.clone();
            candidate.drain(i..end);
            attempts += 1;
            if still_fails(&candidate) {
                best = candidate;
                progressed = true;
            } else {
                i += chunk;
            }
        }
        if !progressed {
            if chunk == 1 {
                break;
            }
            chunk /= 2;
        }
    }
    best
}

fn fails_same_way(run: RunFn, input: &[u8], key: &str) -> bool {
    match run_one(run, input) {
        RunResult::Panicked(p) => format!("panic at {}", p.location) == key,
        RunResult::Done(r) => r.violations.iter().any(|v| violation_key(v) == key),
    }
}

fn violation_key(v: &str) -> String {
    format!("property: {}", v.split(':').next().unwrap_or(v))
}

fn printable_input(input: &[u8]) -> String {
    match std::str::from_utf8(input) {
        Ok(s) if s.len() <= 600 => format!("{s:?}"),
        Ok(s) => format!(
            "{:?}… ({} bytes)",
            s.chars().take(300).collect::<String>(),
            s.len()
        ),
        Err(_) => format!(
            "<{} bytes, not UTF-8; as text: {:?}>",
            input.len(),
            String::from_utf8_lossy(&input[..input.len().min(600)])
        ),
    }
}

fn fuzz(target: Target) {
    install_panic_hook();
    let (base, from_env) = base_seed();
    let seed = {
        let mut r = Rng(base ^ fnv1a(target.name.as_bytes()));
        r.next()
    };
    let mut rng = Rng(seed);
    let seconds = fuzz_seconds();
    let max_iters = max_iterations();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    say(&format!(
        "fuzz {}: FUZZ_SEED={base} ({}), {seconds} s, at most {max_iters} iterations\n",
        target.name,
        if from_env {
            "from the environment"
        } else {
            "random"
        }
    ));

    let replay = corpus_files(target.name);
    let mut corpus: Vec<Vec<u8>> = target.seeds.clone();
    corpus.extend(replay.iter().map(|(_, b)| b.clone()));
    assert!(!corpus.is_empty(), "{}: no seeds", target.name);
    let replayed = corpus.len();
    let verbose = std::env::var_os("FUZZ_VERBOSE").is_some();
    let corpus_names: Vec<String> = (0..target.seeds.len())
        .map(|i| format!("seed #{i}"))
        .chain(replay.iter().map(|(p, _)| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        }))
        .collect();

    let mut donors = Vec::new();
    if target.kind == Kind::Der {
        for s in &corpus {
            let der = pem_unwrap(s).map(|(_, d)| d).unwrap_or_else(|| s.clone());
            if let Some(nodes) = der_parse_all(&der, 0) {
                der_subtrees(&nodes, &mut donors);
            }
        }
        donors.sort();
        donors.dedup();
        donors.truncate(4096);
    }
    let resigner = target.resign.then(Resigner::new);

    let mut subs: BTreeMap<&'static str, SubStats> = BTreeMap::new();
    let mut notes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut failures: Vec<Failure> = Vec::new();
    let mut failure_counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen_keys: HashSet<(&'static str, String)> = HashSet::new();
    let mut slowest = (Duration::ZERO, Vec::new());
    let mut iterations: u64 = 0;
    let mut added = 0usize;
    let started = Instant::now();

    loop {
        let replaying = (iterations as usize) < replayed;
        if !replaying && (iterations >= max_iters || Instant::now() >= deadline) {
            break;
        }
        let input = if replaying {
            corpus[iterations as usize].clone()
        } else {
            let parent = rng.pick(&corpus).clone();
            let mutator = Mutator {
                kind: target.kind,
                corpus: &corpus,
                donors: &donors,
                dictionary: target.dictionary,
                resigner: resigner.as_ref(),
            };
            mutator.mutate(&parent, &mut rng)
        };
        iterations += 1;
        let t0 = Instant::now();
        let result = run_one(target.run, &input);
        let took = t0.elapsed();
        if replaying && verbose {
            let name = corpus_names
                .get(iterations as usize - 1)
                .cloned()
                .unwrap_or_default();
            let outcome = match &result {
                RunResult::Panicked(p) => format!("PANIC {}", p.message),
                RunResult::Done(r) => r
                    .outcomes
                    .first()
                    .map(|(sub, o)| {
                        format!("{sub}: {}", o.as_ref().err().map_or("ok", String::as_str))
                    })
                    .unwrap_or_default(),
            };
            say(&format!("  replay {name}: {outcome}\n"));
        }
        if took > slowest.0 {
            slowest = (took, input.clone());
        }
        match result {
            RunResult::Panicked(p) => {
                let key = format!("panic at {}", p.location);
                let count = failure_counts.entry(key.clone()).or_default();
                *count += 1;
                if *count == 1 && failures.len() < MAX_FAILURES_KEPT {
                    failures.push(Failure {
                        what: format!("PANIC: {}", p.message),
                        key,
                        input,
                        detail: p.backtrace,
                        iteration: iterations,
                    });
                }
            }
            RunResult::Done(report) => {
                let mut interesting = false;
                for (sub, outcome) in report.outcomes {
                    let st = subs.entry(sub).or_default();
                    match outcome {
                        Ok(()) => {
                            st.ok += 1;
                            if seen_keys.insert((sub, "ok".into())) {
                                interesting = true;
                            }
                        }
                        Err(msg) => {
                            st.err += 1;
                            if st.raw_messages.len() < 200_000 {
                                st.raw_messages.insert(fnv1a(msg.as_bytes()));
                            }
                            let class = normalize(&msg);
                            *st.classes.entry(class.clone()).or_default() += 1;
                            if seen_keys.insert((sub, class)) {
                                interesting = true;
                            }
                        }
                    }
                }
                for n in report.notes {
                    *notes.entry(n).or_default() += 1;
                }
                for v in report.violations {
                    let key = violation_key(&v);
                    let count = failure_counts.entry(key.clone()).or_default();
                    *count += 1;
                    if *count == 1 && failures.len() < MAX_FAILURES_KEPT {
                        failures.push(Failure {
                            what: v,
                            key,
                            input: input.clone(),
                            detail: String::new(),
                            iteration: iterations,
                        });
                    }
                }
                if interesting && !replaying {
                    if corpus.len() < MAX_CORPUS {
                        corpus.push(input);
                    } else {
                        // Full: replace a discovered entry, never a seed.
                        let i = replayed + rng.below(corpus.len() - replayed);
                        corpus[i] = input;
                    }
                    added += 1;
                }
            }
        }
    }
    let elapsed = started.elapsed();

    // Summary.
    let mut s = String::new();
    s.push_str(&format!(
        "fuzz {}: {iterations} iterations in {:.1} s ({:.0}/s; {replayed} seeds and corpus files replayed, {} from fuzz-corpus/{}/), corpus grew by {added}, slowest input {:.1} ms ({} bytes)\n",
        target.name,
        elapsed.as_secs_f64(),
        iterations as f64 / elapsed.as_secs_f64().max(1e-9),
        replay.len(),
        target.name,
        slowest.0.as_secs_f64() * 1e3,
        slowest.1.len(),
    ));
    for (sub, st) in &subs {
        s.push_str(&format!(
            "  {sub:<40} ok {:>8}  err {:>8}  distinct error messages {:>6} ({} normalized)\n",
            st.ok,
            st.err,
            st.raw_messages.len(),
            st.classes.len()
        ));
        let mut top: Vec<(&String, &u64)> = st.classes.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        if std::env::var_os("FUZZ_DUMP_CLASSES").is_some() {
            for (class, n) in top.iter().rev().take(25) {
                s.push_str(&format!("      rare {n:>8} × {class}\n"));
            }
        }
        for (class, n) in top.iter().take(4) {
            s.push_str(&format!("      {n:>8} × {class}\n"));
        }
    }
    if slowest.0 > Duration::from_millis(250) {
        // Machines are noisy: re-time it before calling it slow (not a failure either way).
        let again = (0..3)
            .map(|_| {
                let t0 = Instant::now();
                let _ = run_one(target.run, &slowest.1);
                t0.elapsed()
            })
            .min()
            .unwrap_or_default();
        if again > Duration::from_millis(250) {
            let dir = failure_dir();
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!(
                "{}-slow-{:016x}.bin",
                target.name,
                fnv1a(&slowest.1)
            ));
            let _ = std::fs::write(&file, &slowest.1);
            s.push_str(&format!(
                "  note: a slow input: {:.0} ms when re-timed; {} (base64 {})\n",
                again.as_secs_f64() * 1e3,
                file.display(),
                if slowest.1.len() <= 2048 {
                    B64.encode(&slowest.1)
                } else {
                    "too long to print".into()
                }
            ));
        } else {
            s.push_str(&format!(
                "  note: the slowest input took {:.1} ms when re-timed (the first timing was machine noise)\n",
                again.as_secs_f64() * 1e3
            ));
        }
    }
    for (note, n) in &notes {
        s.push_str(&format!("  note: {n} × {note}\n"));
    }
    say(&s);

    if !failures.is_empty() {
        let dir = failure_dir();
        let _ = std::fs::create_dir_all(&dir);
        let mut msg = format!(
            "fuzz {}: {} distinct failure(s) ({} failing inputs in all). Reproduce the run with FUZZ_SEED={base} cargo test -p integration --test fuzz {}\n",
            target.name,
            failure_counts.len(),
            failure_counts.values().sum::<u64>(),
            target.test
        );
        for (key, n) in failure_counts.iter().take(40) {
            msg.push_str(&format!("  {n} × {key}\n"));
        }
        for f in &failures {
            let small = minimize(&f.input, &|i| fails_same_way(target.run, i, &f.key));
            let detail = match run_one(target.run, &small) {
                RunResult::Panicked(p) => {
                    format!("PANIC: {} at {}\n{}", p.message, p.location, p.backtrace)
                }
                RunResult::Done(r) => r
                    .violations
                    .into_iter()
                    .find(|v| violation_key(v) == f.key)
                    .unwrap_or_else(|| f.what.clone()),
            };
            let file = dir.join(format!("{}-{:016x}.bin", target.name, fnv1a(&small)));
            let written = std::fs::write(&file, &small).is_ok();
            msg.push_str(&format!(
                "\n--- {} (first at iteration {}; {} bytes, minimized from {})\n{}\n  input: {}\n  base64: {}\n  file: {}{}\n",
                f.key,
                f.iteration,
                small.len(),
                f.input.len(),
                detail.trim_end(),
                printable_input(&small),
                B64.encode(&small),
                file.display(),
                if written { "" } else { " (could not be written)" },
            ));
            if !f.detail.is_empty() && !detail.starts_with("PANIC") {
                msg.push_str(&format!("  original backtrace:\n{}\n", f.detail));
            }
        }
        say(&msg);
        panic!(
            "fuzz {}: {} distinct failure(s); inputs under {} (copy one into integration/fuzz-corpus/{}/ to replay it on every run)",
            target.name,
            failure_counts.len(),
            dir.display(),
            target.name
        );
    }
    let mutated = iterations.saturating_sub(replayed as u64);
    if mutated < 1000 {
        say(&format!(
            "fuzz {}: only {mutated} mutated inputs; not checking that both ok and err outcomes occurred\n",
            target.name
        ));
        return;
    }
    for p in target.primary {
        let st = subs.get(p);
        let (ok, err) = st.map_or((0, 0), |s| (s.ok, s.err));
        assert!(
            ok > 0 && err > 0,
            "fuzz {}: {p} saw {ok} ok and {err} err outcomes; both must occur or the harness is not exercising the parser",
            target.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------------

fn read_dir_files(rel: &str, suffix: &str) -> Vec<Vec<u8>> {
    let dir = workspace_root().join(rel);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read(p).expect("readable seed"))
        .collect()
}

/// Rust string literals (non-raw) in a source file, unescaped, that satisfy `keep`.
fn string_literals(rel: &str, keep: &dyn Fn(&str) -> bool) -> Vec<String> {
    let src = std::fs::read_to_string(workspace_root().join(rel)).unwrap_or_default();
    let mut out = Vec::new();
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        // Skip comments and char literals that could hold a quote.
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3;
            continue;
        }
        if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') && b.get(i + 3) == Some(&b'\'') {
            i += 4;
            continue;
        }
        if b[i] == b'"' && (i == 0 || (b[i - 1] != b'#' && b[i - 1] != b'r')) {
            let mut s = String::new();
            let mut j = i + 1;
            let mut chars = src[j..].char_indices();
            let mut closed = false;
            while let Some((k, c)) = chars.next() {
                match c {
                    '"' => {
                        j += k + 1;
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some('r') => s.push('\r'),
                        Some('0') => s.push('\0'),
                        Some('\n') => {
                            // Line continuation: skip leading whitespace of the next line.
                            let rest = chars.as_str();
                            let skip = rest.len() - rest.trim_start().len();
                            for _ in 0..rest[..skip].chars().count() {
                                chars.next();
                            }
                        }
                        Some(c) => s.push(c),
                        None => break,
                    },
                    c => s.push(c),
                }
            }
            if !closed {
                break;
            }
            if keep(&s) {
                out.push(s);
            }
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

/// `backtick` spans in `//!` and `///` doc comments that satisfy `keep`.
fn doc_code_spans(rel: &str, keep: &dyn Fn(&str) -> bool) -> Vec<String> {
    let src = std::fs::read_to_string(workspace_root().join(rel)).unwrap_or_default();
    let mut out = Vec::new();
    for line in src
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("//!") || l.starts_with("///"))
    {
        let mut parts = line.split('`');
        parts.next();
        while let Some(code) = parts.next() {
            if keep(code) {
                out.push(code.to_owned());
            }
            parts.next();
        }
    }
    out
}

fn example_rsa_key(name: &str) -> rcgen::KeyPair {
    let pem_text =
        std::fs::read_to_string(workspace_root().join("examples/kubeadm-csr/pki").join(name))
            .expect("example key");
    rcgen::KeyPair::from_pem_and_sign_algo(&pem_text, &rcgen::PKCS_RSA_SHA256)
        .expect("example RSA key")
}

fn dn(pairs: &[(rcgen::DnType, &str)]) -> rcgen::DistinguishedName {
    let mut d = rcgen::DistinguishedName::new();
    for (t, v) in pairs {
        d.push(t.clone(), *v);
    }
    d
}

fn ip(s: &str) -> rcgen::SanType {
    rcgen::SanType::IpAddress(s.parse().expect("ip"))
}

fn dns(s: &str) -> rcgen::SanType {
    rcgen::SanType::DnsName(s.try_into().expect("dns name"))
}

/// Certificates generated at start-up with the example RSA keys (deterministic bytes).
fn generated_certificates() -> Vec<Vec<u8>> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyUsagePurpose,
    };
    let ca_key = example_rsa_key("apiserver.key");
    let leaf_key = example_rsa_key("apiserver-kubelet-client.key");
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = dn(&[(DnType::CommonName, "kubernetes")]);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyCertSign,
    ];
    ca_params.subject_alt_names = vec![dns("kubernetes")];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca_params, &ca_key);

    let mut serving = CertificateParams::default();
    serving.distinguished_name = dn(&[(DnType::CommonName, "kube-apiserver")]);
    serving.subject_alt_names = vec![
        dns("kubernetes"),
        dns("kubernetes.default.svc.cluster.local"),
        ip("10.96.0.1"),
        ip("fd00::1"),
        rcgen::SanType::Rfc822Name("ops@example.com".try_into().expect("email")),
        rcgen::SanType::URI("spiffe://cluster.local/ns/x".try_into().expect("uri")),
    ];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    serving.use_authority_key_identifier_extension = true;
    let serving_cert = serving.signed_by(&leaf_key, &issuer).expect("leaf");

    let mut client = CertificateParams::default();
    client.distinguished_name = dn(&[
        (DnType::CommonName, "kubernetes-admin"),
        (DnType::OrganizationName, "kubeadm:cluster-admins"),
    ]);
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client.is_ca = IsCa::ExplicitNoCa;
    client.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 99999, 1],
        vec![0x05, 0x00],
    )];
    let client_cert = client.signed_by(&leaf_key, &issuer).expect("client");

    let mut empty_subject = CertificateParams::default();
    empty_subject.distinguished_name = rcgen::DistinguishedName::new();
    empty_subject.subject_alt_names = vec![dns("node-1")];
    let empty_cert = empty_subject
        .signed_by(&leaf_key, &issuer)
        .expect("empty subject");

    let mut out = Vec::new();
    for c in [&ca_cert, &serving_cert, &client_cert, &empty_cert] {
        out.push(c.pem().into_bytes());
        out.push(c.der().to_vec());
    }
    // A chain (two blocks: parse_certificate refuses it), noise around a block, a wrong label.
    out.push(format!("{}{}", serving_cert.pem(), ca_cert.pem()).into_bytes());
    out.push(
        format!(
            "subject=CN = kubernetes\nissuer=CN = kubernetes\n{}trailing text\n",
            ca_cert.pem()
        )
        .into_bytes(),
    );
    out.push(ca_cert.pem().replace('\n', "\r\n").into_bytes());
    out.push(
        ca_cert
            .pem()
            .replace("CERTIFICATE", "TRUSTED CERTIFICATE")
            .into_bytes(),
    );
    out
}

/// CSRs generated at start-up with the example RSA keys.
fn generated_csrs() -> Vec<Vec<u8>> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
    let key = example_rsa_key("front-proxy-client.key");
    let mut out = Vec::new();
    let mut add = |p: CertificateParams| {
        let req = p.serialize_request(&key).expect("CSR");
        out.push(req.pem().expect("pem").into_bytes());
        out.push(req.der().to_vec());
    };
    let mut a = CertificateParams::default();
    a.distinguished_name = dn(&[(DnType::CommonName, "kube-apiserver")]);
    a.subject_alt_names = vec![
        dns("kubernetes"),
        ip("10.96.0.1"),
        ip("fd00::1"),
        rcgen::SanType::Rfc822Name("a@b.c".try_into().expect("email")),
    ];
    add(a);
    let mut b = CertificateParams::default();
    b.distinguished_name = dn(&[
        (DnType::CommonName, "kubernetes-admin"),
        (DnType::OrganizationName, "kubeadm:cluster-admins"),
        (DnType::OrganizationName, "system:masters"),
    ]);
    add(b);
    let mut c = CertificateParams::default();
    c.distinguished_name = dn(&[(DnType::CommonName, "evil")]);
    c.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    c.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    add(c);
    let mut d = CertificateParams::default();
    d.distinguished_name = rcgen::DistinguishedName::new();
    add(d);
    out
}

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------

const PEM_TOKENS: &[&str] = &[
    "-----BEGIN CERTIFICATE REQUEST-----\n",
    "-----END CERTIFICATE REQUEST-----\n",
    "-----BEGIN NEW CERTIFICATE REQUEST-----\n",
    "-----END NEW CERTIFICATE REQUEST-----\n",
    "-----BEGIN CERTIFICATE-----\n",
    "-----END CERTIFICATE-----\n",
    "-----BEGIN ",
    "-----END ",
    "-----",
    "\r\n",
    "\n",
    "=",
    "==",
    " ",
    "\t",
    "Proc-Type: 4,ENCRYPTED\n",
    "MII",
    "AAAA",
    "!!!!",
];

fn run_csr(input: &[u8], r: &mut Report) {
    let sub = if pem::is_pem(input) {
        "VerifiedCsr::parse (PEM)"
    } else {
        "VerifiedCsr::parse (DER)"
    };
    match VerifiedCsr::parse(input) {
        Err(e) => r.err(sub, e),
        Ok(csr) => {
            r.ok(sub);
            // What `kubesign sign` does with an accepted request.
            let _ = (
                csr.sans(),
                csr.requests_ca(),
                csr.common_name(),
                csr.organizations(),
                csr.key_kind(),
            );
            let _ = signer_api::name::display(csr.subject());
            let _ = CertificateSubject::from(&csr);
            for p in profile::KUBEADM_PROFILES {
                r.result("CertProfile::check_request", &p.check_request(&csr));
            }
            // The DER it keeps parses again, in both forms.
            if let Err(e) = VerifiedCsr::parse(csr.der()) {
                r.violation(format!(
                    "csr reparse: the accepted request's DER does not parse again: {e}"
                ));
            }
            if !pem::is_pem(input)
                && let Err(e) =
                    VerifiedCsr::parse(pem::encode("CERTIFICATE REQUEST", input).as_bytes())
            {
                r.violation(format!("csr pem/der: accepted as DER but not as PEM: {e}"));
            }
        }
    }
}

#[test]
fn fuzz_csr_parsing() {
    let mut seeds = read_dir_files("examples/kubeadm-csr/pki", ".csr");
    seeds.extend(read_dir_files("examples/kubeadm-csr/pki/etcd", ".csr"));
    seeds.extend(read_dir_files("examples/kubeadm-csr/kubeconfig", ".csr"));
    let ders: Vec<Vec<u8>> = seeds
        .iter()
        .filter_map(|s| pem_unwrap(s).map(|(_, d)| d))
        .collect();
    seeds.extend(ders);
    seeds.extend(generated_csrs());
    fuzz(Target {
        name: "csr",
        test: "fuzz_csr_parsing",
        kind: Kind::Der,
        run: run_csr,
        primary: &["VerifiedCsr::parse (DER)", "VerifiedCsr::parse (PEM)"],
        seeds,
        dictionary: PEM_TOKENS,
        resign: true,
    });
}

const URI_TOKENS: &[&str] = &[
    ";",
    "?",
    "%",
    "=",
    "&",
    "%zz",
    "%2",
    "%00",
    "%25",
    "%3b",
    "%3B",
    "%26",
    "%3f",
    "%3d",
    "%2f",
    "%ff",
    "%c3%28",
    "%e2%80%8b",
    " ",
    "\t",
    "/",
    "//",
    "///",
    ":",
    "#",
    "file:",
    "FILE:",
    "pkcs11:",
    "PKCS11:",
    "awskms:",
    "localhost",
    "token=",
    "object=",
    "id=",
    "id=%01",
    "type=",
    "type=private",
    "type=cert",
    "serial=",
    "model=",
    "manufacturer=",
    "slot-id=",
    "slot-id=18446744073709551616",
    "slot-id=+3",
    "slot-description=",
    "library-version=",
    "module-path=",
    "module-name=",
    "pin-source=",
    "pin-source=file:",
    "pin-source=/run/pin",
    "pin-value=",
    "pin-value=PINSENTINEL",
    "?pin-value=PINSENTINEL",
    "&pin-value=PINSENTINEL",
    "PINSENTINEL",
    "x-vendor=",
    "x-a=1",
    "key-id=",
    "region=",
    "region=eu-west-1",
    "endpoint=",
    "endpoint=http://",
    "endpoint=https://kms.local:4566",
    "alias/",
    "alias/aws/",
    "alias/kubernetes-ca",
    "arn:",
    "arn:aws:kms:",
    "arn:aws:kms:eu-west-1:111122223333:key/",
    "arn:aws:kms:eu-west-1:111122223333:alias/x",
    "arn:aws-cn:kms:",
    "mrk-",
    "1234abcd-12ab-34cd-56ef-1234567890ab",
    "111122223333",
    "..",
    "/..",
    "\\",
];

const SENTINEL: &str = "PINSENTINEL";

fn redacted_pin() -> PinSource {
    static PIN: OnceLock<PinSource> = OnceLock::new();
    PIN.get_or_init(
        || match KeyUri::parse("pkcs11:object=x?pin-value=REDACTED") {
            Ok(KeyUri::Pkcs11(p)) => p.pin.clone().expect("pin"),
            other => panic!("reference URI: {other:?}"),
        },
    )
    .clone()
}

/// Whether every occurrence of the sentinel in a pkcs11: URI text lies inside a `pin-value=`
/// query value (so it must never be shown).
fn sentinel_only_in_pin_values(text: &str) -> bool {
    let t = text.trim();
    if !t.contains(SENTINEL)
        || t.get(..7)
            .is_none_or(|s| !s.eq_ignore_ascii_case("pkcs11:"))
    {
        return false;
    }
    let Some((path, query)) = t.split_once('?') else {
        return false;
    };
    if path.contains(SENTINEL) {
        return false;
    }
    query
        .split('&')
        .all(|attr| !attr.contains(SENTINEL) || attr.starts_with("pin-value="))
}

/// A short description of how a Display output failed to parse back, for grouping failures.
fn reparse_class<T>(r: &Result<T, signer_api::keyuri::KeyUriError>) -> String {
    match r {
        Ok(_) => "reparses to a different value".into(),
        Err(e) => {
            let dbg = format!("{e:?}");
            let variant: String = dbg
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            let name = dbg
                .split("name: \"")
                .nth(1)
                .and_then(|t| t.split('"').next())
                .filter(|n| {
                    [
                        "key",
                        "region",
                        "endpoint",
                        "pin-source",
                        "pin-value",
                        "module-path",
                        "module-name",
                        "id",
                        "object",
                        "token",
                        "slot-id",
                        "type",
                    ]
                    .contains(n)
                })
                .unwrap_or("");
            format!("reparse fails with {variant} {name}")
                .trim_end()
                .to_owned()
        }
    }
}

fn run_key_uri(input: &[u8], r: &mut Report) {
    let text = String::from_utf8_lossy(input);
    let secret_only_in_pin = sentinel_only_in_pin_values(&text);
    let parsed = KeyUri::parse(&text);
    let k = match parsed {
        Err(e) => {
            let msg = e.to_string();
            if secret_only_in_pin && msg.contains(SENTINEL) {
                r.violation(format!("pin leak in error: {text:?} -> error {msg:?}"));
            }
            r.err("KeyUri::parse", msg);
            return;
        }
        Ok(k) => k,
    };
    r.ok("KeyUri::parse");
    let shown = k.to_string();
    let debug = format!("{k:?}");
    if secret_only_in_pin && (shown.contains(SENTINEL) || debug.contains(SENTINEL)) {
        r.violation(format!(
            "pin leak in Display/Debug: {text:?} -> {shown:?} / {debug}"
        ));
    }
    match &k {
        KeyUri::Pkcs11(p) => {
            let mut expected = p.clone();
            if matches!(p.pin, Some(PinSource::Value(_))) {
                expected.pin = Some(redacted_pin());
                let mut bare = p.clone();
                bare.pin = None;
                let d0 = bare.to_string();
                let want = format!("{d0}{}pin-value=REDACTED", if d0.contains('?') { '&' } else { '?' });
                if shown != want {
                    r.violation(format!("pin redaction: {text:?} displays as {shown:?}, expected the pin-free form plus pin-value=REDACTED: {want:?}"));
                }
                let dbg = format!("{p:?}").replace("pin: Some(Value([REDACTED]))", "pin: None");
                if dbg != format!("{bare:?}") {
                    r.violation(format!("pin redaction in Debug: {text:?} -> {p:?}"));
                }
            }
            match KeyUri::parse(&shown) {
                Ok(KeyUri::Pkcs11(q)) if q == expected => {}
                other => r.violation(format!(
                    "pkcs11 round-trip ({}): {text:?} parses, displays as {shown:?}, which parses to {other:?}; expected {expected:?}",
                    reparse_class(&other)
                )),
            }
        }
        KeyUri::AwsKms(a) => match KeyUri::parse(&shown) {
            Ok(KeyUri::AwsKms(b)) if &b == a => {}
            other => r.violation(format!(
                "awskms round-trip ({}): {text:?} parses to {a:?}, displays as {shown:?}, which parses to {other:?}",
                reparse_class(&other)
            )),
        },
        // Not a required property (file: URIs are shown, not re-read), but worth counting.
        KeyUri::File(f) if !matches!(KeyUri::parse(&shown), Ok(KeyUri::File(g)) if g == *f) => {
            r.note("file: URI whose Display does not parse back to the same path (not asserted)");
        }
        _ => {}
    }
}

#[test]
fn fuzz_key_uri() {
    let is_uri = |s: &str| {
        let l = s.to_ascii_lowercase();
        s.len() < 400
            && ["file:", "pkcs11:", "awskms:", "vault:", "/secure"]
                .iter()
                .any(|p| l.starts_with(p))
    };
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for s in doc_code_spans("signer-api/src/keyuri.rs", &is_uri)
        .into_iter()
        .chain(string_literals("signer-api/src/keyuri.rs", &is_uri))
    {
        seeds.push(s.into_bytes());
    }
    let extracted = seeds.len();
    assert!(
        extracted >= 20,
        "only {extracted} key URIs found in signer-api/src/keyuri.rs; did its layout change?"
    );
    for s in [
        "pkcs11:token=kubernetes;object=kubernetes-ca;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=PINSENTINEL",
        "pkcs11:object=ca;id=%01%02?pin-source=file:///etc/kubesign/pin&x-vendor=1",
        "awskms:///arn:aws:kms:eu-west-1:111122223333:alias/kubernetes-ca?endpoint=https://kms.local:4566",
        "awskms:key-id=1234abcd-12ab-34cd-56ef-1234567890ab;region=eu-west-1;endpoint=http://127.0.0.1:4566",
        "file://localhost/secure/ca%20key.pem",
    ] {
        seeds.push(s.as_bytes().to_vec());
    }
    seeds.sort();
    seeds.dedup();
    fuzz(Target {
        name: "keyuri",
        test: "fuzz_key_uri",
        kind: Kind::Text,
        run: run_key_uri,
        primary: &["KeyUri::parse"],
        seeds,
        dictionary: URI_TOKENS,
        resign: false,
    });
}

const YAML_TOKENS: &[&str] = &[
    ":",
    ": ",
    "- ",
    "\n",
    "\n  ",
    "\n    ",
    "  ",
    "\t",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "'",
    "#",
    "&a ",
    "*a",
    "!!binary ",
    "!!str ",
    "!!int ",
    "!tag ",
    "<<: *a\n",
    "~",
    "null",
    "---\n",
    "...\n",
    "|\n  ",
    ">-\n  ",
    "? ",
    ",",
    "%YAML 1.2\n",
    "\r\n",
    "\u{0}",
    "\u{feff}",
    "99999999999999999999",
    "-1",
    "1e400",
    ".nan",
    "0x1F",
    "true",
    "8760h",
    "1h",
    "0s",
    "-1h",
    "59m59s",
    "1h0m0s",
    "999999999999h",
    "1y",
    "1500ms",
    "file:/k",
    "file:keys/ca.key",
    "pkcs11:object=ca?pin-value=PINSENTINEL",
    "awskms:///alias/ca",
    "kubernetes",
    "etcd",
    "front-proxy",
    "cas:",
    "audit:",
    "path:",
    "key:",
    "certificate:",
    "keyAlgorithm: ",
    "RSA-2048",
    "ECDSA-P256",
    "ECDSA-P384",
    "RSA-4096",
    "certificateValidityPeriod: ",
    "caCertificateValidityPeriod: ",
    "apiVersion: kubesign.dev/v1alpha1",
    "kind: SignerConfiguration",
    "apiVersion: v1",
    "kind: Config",
    "current-context: ",
    "contexts:",
    "users:",
    "clusters:",
    "- name: ",
    "name: ",
    "user: ",
    "cluster: ",
    "context:",
    "client-key-data: ",
    "client-certificate-data: ",
    "certificate-authority-data: ",
    "client-key: /k",
    "server: https://127.0.0.1:6443",
    "LS0t",
    "=",
    "==",
    "!!!!",
    "..",
    "/",
    "\\",
    "%",
];

fn run_config(input: &[u8], r: &mut Report) {
    let text = String::from_utf8_lossy(input);
    let path = Path::new("/etc/kubesign/config.yaml");
    match Config::parse(&text, path) {
        Err(e) => r.err("Config::parse", format!("{e:#}")),
        Ok(c) => {
            r.ok("Config::parse");
            if c.cas.is_empty() {
                r.violation(
                    "config without CAs: Config::parse accepted a configuration with no CA".into(),
                );
            }
            if !c.audit_path.is_absolute() || c.cas.iter().any(|ca| !ca.certificate.is_absolute()) {
                r.violation(format!("config relative path: paths must be resolved against the file's directory: {c:?}"));
            }
            // Only a pkcs11: key can carry a PIN; a file whose name contains "pin-value=" is a name.
            for ca in c.cas.iter().filter(|ca| ca.key.scheme() == "pkcs11") {
                let shown = ca.key.to_string();
                if sentinel_only_in_pin_values(&shown)
                    || (shown.contains(SENTINEL)
                        && text.contains("pin-value=PINSENTINEL")
                        && !text.replace("pin-value=PINSENTINEL", "").contains(SENTINEL))
                {
                    r.violation(format!("pin leak in config key display: {shown:?}"));
                }
            }
        }
    }
}

#[test]
fn fuzz_config() {
    let looks_like_config = |s: &str| s.contains("kind: ") || s.starts_with("apiVersion");
    let mut seeds: Vec<Vec<u8>> = vec![config::EXAMPLE.as_bytes().to_vec()];
    seeds.extend(
        string_literals("cli/src/config.rs", &looks_like_config)
            .into_iter()
            .map(String::into_bytes),
    );
    let head = "apiVersion: kubesign.dev/v1alpha1\nkind: SignerConfiguration\n";
    for body in [
        "cas:\n  kubernetes:\n    key: \"pkcs11:token=kubernetes;object=kubernetes-ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:pin\"\n    certificate: pki/ca.crt\n    keyAlgorithm: ECDSA-P256\n  etcd:\n    key: awskms:///alias/etcd-ca?region=eu-west-1\n    certificate: pki/etcd/ca.crt\n    keyAlgorithm: ECDSA-P384\naudit:\n  path: audit.jsonl\ncertificateValidityPeriod: 720h30m\ncaCertificateValidityPeriod: 87600h0m0s\n",
        "cas: {front-proxy: {key: 'file:///secure/fp.key', certificate: /pki/front-proxy-ca.crt, keyAlgorithm: RSA-4096}}\naudit: {path: /var/log/a.jsonl}\n",
        "defaults: &d\n  certificate: /c\ncas:\n  kubernetes:\n    <<: *d\n    key: file:/k\naudit:\n  path: /a\n",
        "cas:\n  kubernetes:\n    key: \"pkcs11:object=ca?pin-value=PINSENTINEL\"\n    certificate: /ca.crt\naudit:\n  path: /a\n",
    ] {
        seeds.push(format!("{head}{body}").into_bytes());
    }
    seeds.push(
        b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
            .to_vec(),
    );
    seeds.extend(read_dir_files("testdata/kubeadm", ".yaml"));
    fuzz(Target {
        name: "config",
        test: "fuzz_config",
        kind: Kind::Yaml,
        run: run_config,
        primary: &["Config::parse"],
        seeds,
        dictionary: YAML_TOKENS,
        resign: false,
    });
}

fn run_kubeconfig(input: &[u8], r: &mut Report) {
    let path = Path::new("/etc/kubernetes/admin.conf");
    let mut k = match Kubeconfig::parse(path, input) {
        Err(e) => return r.err("Kubeconfig::parse", format!("{e:#}")),
        Ok(k) => k,
    };
    r.ok("Kubeconfig::parse");
    r.result("Kubeconfig::client_key_pem", &k.client_key_pem());
    r.result(
        "Kubeconfig::client_certificate_pem",
        &k.client_certificate_pem(),
    );
    r.result(
        "Kubeconfig::certificate_authority_pem",
        &k.certificate_authority_pem(),
    );
    let set = k
        .set_client_certificate(b"CERT\n")
        .and_then(|()| k.set_certificate_authority(b"CA\n"));
    r.result("Kubeconfig::set_*", &set);
    if set.is_err() {
        return;
    }
    let yaml = k.to_yaml();
    r.result("Kubeconfig::to_yaml", &yaml);
    let Ok(yaml) = yaml else { return };
    // What `kubesign sign` writes must be a kubeconfig that reads back with the new data.
    match Kubeconfig::parse(path, yaml.as_bytes()) {
        Err(e) => r.violation(format!("kubeconfig rewrite: the filled kubeconfig does not parse again: {e:#}\n--- written:\n{yaml}")),
        Ok(again) => {
            let cert = again.client_certificate_pem().ok().flatten();
            let ca = again.certificate_authority_pem().ok().flatten();
            if cert.as_deref() != Some(b"CERT\n") || ca.as_deref() != Some(b"CA\n") {
                r.violation(format!("kubeconfig rewrite data: read back {cert:?} / {ca:?}\n--- written:\n{yaml}"));
            }
        }
    }
}

#[test]
fn fuzz_kubeconfig() {
    let mut seeds = read_dir_files("examples/kubeadm-csr/kubeconfig", ".conf");
    seeds.extend(
        string_literals("cli/src/kubeconfig.rs", &|s: &str| {
            s.contains("kind: Config") || s.starts_with("a: [")
        })
        .into_iter()
        .map(String::into_bytes),
    );
    let admin = String::from_utf8(seeds[0].clone()).unwrap_or_default();
    // Filled (as kubesign writes it), a file reference, a flow-style document, an anchor bomb.
    seeds.push(
        admin
            .replace(
                "    client-key-data:",
                "    client-certificate-data: Q0VSVAo=\n    client-key-data:",
            )
            .into_bytes(),
    );
    seeds.push(
        admin
            .replace(
                "    client-key-data:",
                "    client-key: /etc/kubernetes/pki/admin.key\n    x-client-key-data:",
            )
            .into_bytes(),
    );
    seeds.push(
        b"{kind: Config, current-context: c, contexts: [{name: c, context: {user: u, cluster: k}}], users: [{name: u, user: {client-key-data: a2V5}}], clusters: [{name: k, cluster: {server: 'https://x', certificate-authority-data: Q0E=}}]}\n"
            .to_vec(),
    );
    seeds.push(
        b"kind: Config\ncurrent-context: c\ncontexts: &a [{name: c, context: {user: u, cluster: u}}, *a, *a, *a]\nusers: &u [{name: u, user: null}]\nclusters: *u\n"
            .to_vec(),
    );
    fuzz(Target {
        name: "kubeconfig",
        test: "fuzz_kubeconfig",
        kind: Kind::Yaml,
        run: run_kubeconfig,
        primary: &["Kubeconfig::parse"],
        seeds,
        dictionary: YAML_TOKENS,
        resign: false,
    });
}

fn run_certificate(input: &[u8], r: &mut Report) {
    match pem::decode_all(input) {
        Ok(blocks) => {
            r.ok("pem::decode_all");
            for b in &blocks {
                // Encoding what was decoded must decode to the same thing.
                let again = pem::decode_all(pem::encode(&b.label, &b.der).as_bytes());
                if again.as_deref() != Ok(std::slice::from_ref(b)) {
                    r.violation(format!("pem re-encode: block {:?} re-encodes to something that decodes as {again:?}", b.label));
                }
            }
        }
        Err(e) => r.err("pem::decode_all", e),
    }
    let cert = match ca::parse_certificate(input) {
        Err(e) => return r.err("ca::parse_certificate", e),
        Ok(c) => c,
    };
    r.ok("ca::parse_certificate");
    // What `kubesign check`, `renew` and the audit log read from a parsed certificate.
    let _ = (ca::not_before(&cert), ca::not_after(&cert));
    r.result(
        "CertificateSubject::from_certificate",
        &CertificateSubject::from_certificate(&cert),
    );
    r.result(
        "verify_certificate_signature (own key)",
        &verify::verify_certificate_signature(
            &cert,
            cert.tbs_certificate().subject_public_key_info(),
        ),
    );
    match cert.to_der() {
        Err(e) => r.err("Certificate::to_der", e),
        Ok(der) => {
            r.ok("Certificate::to_der");
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
            let record = AuditRecord::for_certificate(
                &cert,
                &der,
                CaRole::Kubernetes,
                "file:/k",
                now,
                RequestContext::default(),
            );
            let _ = record.to_json_line();
            if let Err(e) = ca::parse_certificate(&der) {
                r.violation(format!("certificate re-encode: a parsed certificate re-encodes to DER that does not parse: {e}"));
            }
        }
    }
}

#[test]
fn fuzz_certificate_parsing() {
    let seeds = generated_certificates();
    fuzz(Target {
        name: "certificate",
        test: "fuzz_certificate_parsing",
        kind: Kind::Der,
        run: run_certificate,
        primary: &["ca::parse_certificate", "pem::decode_all"],
        seeds,
        dictionary: PEM_TOKENS,
        resign: false,
    });
}

// ---------------------------------------------------------------------------------------------
// Self-tests of the harness
// ---------------------------------------------------------------------------------------------

#[test]
fn harness_der_tree_round_trips_and_mutates() {
    for seed in generated_certificates()
        .iter()
        .chain(generated_csrs().iter())
    {
        let der = pem_unwrap(seed)
            .map(|(_, d)| d)
            .unwrap_or_else(|| seed.clone());
        let nodes = der_parse_all(&der, 0).expect("seed DER parses");
        assert_eq!(
            der_encode_all(&nodes),
            der,
            "the DER tree re-encodes its input exactly"
        );
        assert!(der_count(&nodes) >= 10);
    }
    let mut rng = Rng(7);
    let csr = &generated_csrs()[1];
    let changed = (0..50)
        .filter(|_| der_tree_mutation(csr, &mut rng, &[]).is_some_and(|m| m != *csr))
        .count();
    assert!(
        changed > 25,
        "tree mutations change the input ({changed}/50)"
    );
}

#[test]
fn harness_resigned_requests_pass_proof_of_possession() {
    let r = Resigner::new();
    let mut rng = Rng(11);
    let seeds = read_dir_files("examples/kubeadm-csr/pki", ".csr");
    let mut passed = 0;
    for i in 0..60 {
        let Some(out) = r.resign(&seeds[i % seeds.len()], &mut rng, &[]) else {
            continue;
        };
        // Mutated requests may fail for other reasons (or keep their own key, one time in ten).
        if VerifiedCsr::parse(&out).is_ok() {
            passed += 1;
        }
    }
    assert!(
        passed > 10,
        "re-signed requests pass proof of possession ({passed}/60)"
    );
}

#[test]
fn harness_catches_panics_and_normalizes_messages() {
    install_panic_hook();
    fn boom(input: &[u8], _: &mut Report) {
        if input.first() == Some(&b'!') {
            panic!("boom {}", input.len());
        }
    }
    assert!(
        matches!(run_one(boom, b"!x"), RunResult::Panicked(p) if p.message == "boom 2" && p.location.contains("fuzz.rs"))
    );
    assert!(matches!(run_one(boom, b"x"), RunResult::Done(_)));
    let small = minimize(b"abc!defgh", &|i| i.contains(&b'!'));
    assert_eq!(small, b"!");
    assert_eq!(
        normalize("attribute \"a\\\"b c\" at line 12 column 3"),
        "attribute … at line N column N"
    );
    assert_eq!(
        normalize("algorithm 1.2.840.10045.4.3.2 and -----END ujNCzeQNEruQNForPi"),
        "algorithm N and -----END …"
    );
}
