//! The `kubesign` command line as a user meets it: help with examples, shell completion, the
//! example configuration, exit codes (1 error, 2 usage, 3 check found problems), and key URIs
//! whose backend is not compiled in.

use std::path::Path;

use integration::{Cluster, Output, kubesign_bin, read_string, run_in, write};

fn d(p: &Path) -> String {
    p.display().to_string()
}

fn ks(bin: &Path, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("temporary directory");
    run_in(bin, args, Some(dir.path()), None)
}

/// Every subcommand a user runs, with the words that start its example lines.
const COMMANDS: [&[&str]; 7] = [
    &["ca", "init"],
    &["sign"],
    &["renew"],
    &["check"],
    &["config", "example"],
    &["config", "validate"],
    &["completion"],
];

fn examples_section(help: &str) -> Option<Vec<&str>> {
    let start = help
        .lines()
        .position(|l| l.trim_end() == "Examples:" || l.starts_with("Typical workflow"))?;
    // Example lines are indented; the section ends at the next unindented line.
    Some(
        help.lines()
            .skip(start + 1)
            .take_while(|l| l.is_empty() || l.starts_with(' '))
            .collect(),
    )
}

#[test]
fn help_has_examples_for_every_command() {
    let Some(bin) = kubesign_bin() else { return };
    let top = ks(&bin, &["--help"]);
    top.ok().stdout_has(&[
        "Exit codes:",
        "kubesign ca init",
        "kubesign sign",
        "kubesign check",
        "kubeadm certs generate-csr",
    ]);
    // Exit codes are documented as the binary implements them (see the tests below).
    top.stdout_has(&["2  usage error", "3  `kubesign check` found problems"]);

    let mut missing = Vec::new();
    for cmd in COMMANDS {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = ks(&bin, &args);
        out.ok();
        let invocation = format!("kubesign {}", cmd.join(" "));
        let has_example = out.stdout.contains("Examples:")
            && out
                .stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&invocation));
        if !has_example {
            missing.push(invocation);
        }
    }
    assert!(
        missing.is_empty(),
        "--help without an \"Examples:\" section showing the command: {missing:?}"
    );
}

/// Example command lines are meant to be copied: a long one must continue with `\`, not be
/// re-wrapped by the help formatter into a line that starts with an argument.
#[test]
fn help_examples_are_copyable() {
    let Some(bin) = kubesign_bin() else { return };
    let mut broken = Vec::new();
    let mut help_pages: Vec<Vec<&str>> = vec![vec![]];
    help_pages.extend(COMMANDS.iter().map(|c| c.to_vec()));
    for cmd in help_pages {
        let mut args = cmd.clone();
        args.push("--help");
        let out = ks(&bin, &args);
        out.ok();
        let Some(lines) = examples_section(&out.stdout) else {
            continue;
        };
        let mut continued = false;
        for l in lines {
            let t = l.trim();
            let is_command =
                t.starts_with("kubesign ") || t.starts_with("kubeadm ") || t.starts_with('#');
            if !is_command && !continued && !t.is_empty() {
                broken.push(format!(
                    "kubesign {} --help: {t:?} is the wrapped tail of an example",
                    cmd.join(" ")
                ));
            }
            continued = t.ends_with('\\');
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn completion_scripts() {
    let Some(bin) = kubesign_bin() else { return };
    for shell in ["bash", "zsh", "fish"] {
        let out = ks(&bin, &["completion", shell]);
        out.ok();
        assert!(
            out.stdout.len() > 500,
            "{shell}: a suspiciously short completion script\n{out:?}"
        );
        out.stdout_has(&[
            "kubesign",
            "sign",
            "renew",
            "check",
            "cert-dir",
            "kubeconfig-dir",
            "dry-run",
        ]);
        let tmp = tempfile::tempdir().expect("temporary directory");
        let script = tmp.path().join(format!("kubesign.{shell}"));
        write(&script, &out.stdout);
        // Syntax-check with the shell itself where it is installed.
        let checked = std::process::Command::new(shell)
            .arg("-n")
            .arg(&script)
            .output();
        match checked {
            Ok(o) => assert!(
                o.status.success(),
                "{shell} -n rejects the script: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(_) => eprintln!(
                "note: {shell} is not installed; its completion script was not syntax-checked"
            ),
        }
    }
    ks(&bin, &["completion", "tcsh"])
        .code(2)
        .stderr_has(&["tcsh"]);
}

#[test]
fn example_configuration_validates() {
    let Some(bin) = kubesign_bin() else { return };
    let example = ks(&bin, &["config", "example"]);
    example.ok().stdout_has(&[
        "apiVersion: kubesign.dev/v1alpha1",
        "kind: SignerConfiguration",
        "front-proxy:",
        "audit:",
    ]);
    let tmp = tempfile::tempdir().expect("temporary directory");
    let file = tmp.path().join("kubesign.yaml");
    write(&file, &example.stdout);
    let v = ks(&bin, &["config", "validate", "-c", &d(&file)]);
    v.ok().stdout_has(&[
        "kubernetes: key file:/secure/kubesign/ca.key certificate /etc/kubernetes/pki/ca.crt",
        "etcd: key file:/secure/kubesign/etcd-ca.key certificate /etc/kubernetes/pki/etcd/ca.crt",
        "front-proxy: key file:/secure/kubesign/front-proxy-ca.key certificate /etc/kubernetes/pki/front-proxy-ca.crt",
        "audit log: /var/log/kubesign/audit.jsonl",
    ]);
    // validate is not a rubber stamp.
    let broken = tmp.path().join("broken.yaml");
    write(
        &broken,
        example
            .stdout
            .replace("kind: SignerConfiguration", "kind: Signer"),
    );
    ks(&bin, &["config", "validate", "-c", &d(&broken)])
        .code(1)
        .stderr_has(&[&d(&broken), "kind is \"Signer\""]);
    write(
        &broken,
        example
            .stdout
            .replace("keyAlgorithm: RSA-2048", "keyAlgorithm: DSA-1024"),
    );
    ks(&bin, &["config", "validate", "-c", &d(&broken)])
        .code(1)
        .stderr_has(&[&d(&broken), "unknown key algorithm"]);
}

#[test]
fn check_on_an_unsigned_tree_exits_3_and_lists_the_problems() {
    let Some(bin) = kubesign_bin() else { return };
    let c = Cluster::from_example(&bin);
    let before = c.snapshot();
    let out = c.ks(&[
        "check",
        "--cert-dir",
        &d(&c.pki),
        "--kubeconfig-dir",
        &d(&c.kc),
    ]);
    out.code(3).stderr_has(&["problem(s) found"]);
    out.stdout_has(&[
        "!MISSING! apiserver",
        "!MISSING! etcd/server",
        "!MISSING! ca",
        "client-certificate-data is empty",
    ]);
    for conf in [
        "admin.conf",
        "super-admin.conf",
        "kubelet.conf",
        "controller-manager.conf",
        "scheduler.conf",
    ] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(conf))
            .unwrap_or_else(|| panic!("no row for {conf}\n{out:?}"));
        assert!(
            line.contains("client-certificate-data is empty"),
            "{conf}: {line}"
        );
    }

    let json = c.ks(&[
        "check",
        "--cert-dir",
        &d(&c.pki),
        "--kubeconfig-dir",
        &d(&c.kc),
        "-o",
        "json",
    ]);
    json.code(3);
    let v = json.json();
    let certs = v["certificates"].as_array().expect("certificates");
    assert_eq!(certs.len(), 12, "{json:?}");
    for cert in certs {
        let name = cert["name"].as_str().unwrap_or_default();
        if name.ends_with(".conf") {
            assert_eq!(cert["status"], "invalid", "{cert}");
            assert!(
                cert["problems"]
                    .to_string()
                    .contains("client-certificate-data is empty"),
                "{cert}"
            );
        } else {
            assert_eq!(cert["status"], "missing", "{cert}");
        }
    }
    let cas = v["certificate_authorities"].as_array().expect("CAs");
    assert!(cas.iter().all(|c| c["status"] == "missing"), "{json:?}");
    before.assert_same(&c.snapshot(), "kubesign check");

    // Only the cert dir (the CSRs alone are nothing to complain about): exit 0.
    c.ks(&["check", "--cert-dir", &d(&c.pki)]).ok();
    // A directory that does not exist is an error, not an empty report.
    c.ks(&["check", "--cert-dir", &d(&c.root.join("nope"))])
        .code(1)
        .stderr_has(&["nope"]);
}

#[test]
fn usage_errors_exit_2() {
    let Some(bin) = kubesign_bin() else { return };
    ks(&bin, &["sign", "--bogus-flag"])
        .code(2)
        .stderr_has(&["--bogus-flag"]);
    ks(&bin, &["frobnicate"])
        .code(2)
        .stderr_has(&["frobnicate"]);
    ks(&bin, &["sign", "-c", "kubesign.yaml"])
        .code(2)
        .stderr_has(&["--cert-dir"]);
    ks(&bin, &["check", "-o", "yaml", "--cert-dir", "."])
        .code(2)
        .stderr_has(&["yaml"]);
    ks(&bin, &[]).code(2);
    // Runtime errors are 1, not 2.
    ks(
        &bin,
        &["config", "validate", "-c", "/nonexistent/kubesign.yaml"],
    )
    .code(1)
    .stderr_has(&["/nonexistent/kubesign.yaml"]);
}

/// An HSM key that cannot be reached (here: a PKCS#11 module that does not exist) fails every
/// command cleanly: exit 1, the module named, nothing written, and the PIN never shown. (That a
/// build without the `pkcs11`/`kms` features names the missing feature is a unit test in
/// cli/src/backends.rs, run by scripts/test.sh with --no-default-features.)
#[test]
fn unreachable_hsm_keys_fail_cleanly_without_leaking_the_pin() {
    let Some(bin) = kubesign_bin() else { return };
    const PIN: &str = "s3cr3t-pin-4711";
    let pkcs11 = format!(
        "pkcs11:token=kubernetes;object=kubernetes-ca;type=private?module-path=/nonexistent/libpkcs11-module.so&pin-value={PIN}"
    );
    let c = Cluster::from_example(&bin);
    c.write_config(["ECDSA-P256", "ECDSA-P256", "ECDSA-P256"], false);
    c.ca_init();
    let text = read_string(&c.config);
    let file_key = d(&c.cas.join("ca.key"));
    let config = c.scratch.join("hsm.yaml");
    write(
        &config,
        text.replace(
            &format!("key: file:{file_key}"),
            &format!("key: \"{pkcs11}\""),
        ),
    );
    assert_ne!(read_string(&config), text);
    let before = c.snapshot();
    let mut args: Vec<String> = ["config", "validate", "-c"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(d(&config));
    let out = c.ks(&args);
    out.ok();
    assert!(
        !out.stdout.contains(PIN) && !out.stderr.contains(PIN),
        "the PIN leaked\n{out:?}"
    );
    for args in [
        vec!["ca", "init", "-c"],
        vec!["keys", "list", "-c"],
        vec![
            "sign",
            "--cert-dir",
            "pki",
            "--kubeconfig-dir",
            "kubeconfig",
            "-c",
        ],
    ] {
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.push(d(&config));
        let out = c.ks(&args);
        out.code(1)
            .stderr_has(&["/nonexistent/libpkcs11-module.so"]);
        assert!(
            !out.stderr.contains(PIN) && !out.stdout.contains(PIN),
            "the PIN leaked into the output\n{out:?}"
        );
    }
    before.assert_same(&c.snapshot(), &pkcs11);
}
