//! The `kubesign` command line: sign kubeadm's certificates with CA keys that never sit on a disk.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use kubesign_cli::output::Format;
use kubesign_cli::{cmd_ca, cmd_check, cmd_renew, cmd_sign, config};

const EXIT_ERROR: u8 = 1;
const EXIT_CHECK_FAILED: u8 = 3;

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  error: bad input, configuration or key backend; nothing was written
  2  usage error (unknown flag, missing argument)
  3  `kubesign check` found problems

Typical workflow (kubeadm external CA mode):
  kubeadm certs generate-csr --config kubeadm.yaml --cert-dir pki --kubeconfig-dir kubeconfig
  kubesign ca init --config kubesign.yaml   # once: CA keys and CA certificates
  kubesign sign --config kubesign.yaml --cert-dir pki --kubeconfig-dir kubeconfig
  kubesign check --cert-dir pki --kubeconfig-dir kubeconfig

Configuration: `kubesign config example` prints a commented starting point.";

/// Sign kubeadm certificates with CA keys kept in an HSM, a cloud KMS or a file.
#[derive(Parser, Debug)]
#[command(name = "kubesign", version, about, long_about = None, after_help = AFTER_HELP, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log verbosity (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(
        long,
        global = true,
        default_value = "warn",
        env = "KUBESIGN_LOG_LEVEL"
    )]
    log_level: String,

    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage the certificate authorities.
    #[command(subcommand)]
    Ca(CaCommand),

    /// Sign every CSR that `kubeadm certs generate-csr` wrote, all or nothing.
    #[command(after_help = "\
Examples:
  # Sign a control plane node's CSRs and fill its kubeconfig files
  kubesign sign --config /etc/kubesign/config.yaml \\
      --cert-dir /etc/kubernetes/pki --kubeconfig-dir /etc/kubernetes

  # Validate only: parse, verify and check every CSR, sign nothing
  kubesign sign --config kubesign.yaml --cert-dir pki --dry-run

  # Machine-readable result
  kubesign sign --config kubesign.yaml --cert-dir pki -o json

Every CSR is verified (proof of possession, kubeadm's subject rules, no extra extensions, key
matches NAME.key) and signed before any file is written. Certificates get kubeadm's profile for
their file name: usages, CA and validity never come from the CSR.")]
    Sign(SignArgs),

    /// Re-issue existing certificates: same key, subject and SANs; new serial and validity.
    #[command(after_help = "\
Examples:
  # Renew everything found under the directories
  kubesign renew --config kubesign.yaml \\
      --cert-dir /etc/kubernetes/pki --kubeconfig-dir /etc/kubernetes

  # Renew only the API server certificate and admin.conf
  kubesign renew --config kubesign.yaml --cert-dir pki --kubeconfig-dir kubeconfig \\
      apiserver admin.conf")]
    Renew(RenewArgs),

    /// Check every certificate against kubeadm's table and report expiry.
    #[command(after_help = "\
Examples:
  kubesign check --cert-dir /etc/kubernetes/pki --kubeconfig-dir /etc/kubernetes
  kubesign check --cert-dir pki --config kubesign.yaml -o json

Checks: chain to the right CA, usages, CA:FALSE, subject rules, SANs on serving certificates, key
matches, kubeconfig certificate-authority-data equal to ca.crt, validity. Exits 3 on any problem;
missing files are reported but are not problems (kubeadm omits some on non-first nodes).")]
    Check(CheckArgs),

    /// Inspect the CA keys.
    #[command(subcommand)]
    Keys(KeysCommand),

    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),

    /// Sign Kubernetes CertificateSigningRequests (replaces kube-controller-manager's csrsigning).
    #[cfg(feature = "serve")]
    #[command(after_help = "\
Examples:
  # In a pod: in-cluster credentials, lease in $POD_NAMESPACE
  kubesign serve --config /etc/kubesign/config.yaml

  # On a control-plane node, with its own kubeconfig
  kubesign serve --config /etc/kubesign/config.yaml --kubeconfig /etc/kubernetes/kubesign.conf

Signs every Approved, not Denied, not Failed request without a certificate whose signer name is
listed under serve.signers: kubernetes.io/kube-apiserver-client, -client-kubelet and
kubelet-serving with kube-controller-manager's exact rules, custom names with the configured ones.
A broken rule ends the request Failed (SignerValidationFailure) with a Warning event; transient
errors are retried with backoff. Only the leader of the Lease signs. SIGTERM finishes the requests
in flight, then releases the Lease. /metrics, /healthz and /readyz on serve.httpAddress.")]
    Serve(ServeArgs),

    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  kubesign completion bash > /etc/bash_completion.d/kubesign
  kubesign completion zsh > \"${fpath[1]}/_kubesign\"")]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Create each missing CA key in its backend and its self-signed CA certificate.
    #[command(after_help = "\
Examples:
  kubesign ca init --config /etc/kubesign/config.yaml

  # Use keys a key ceremony already created in the HSM
  kubesign ca init --config /etc/kubesign/config.yaml --adopt

Creates what is missing and never replaces anything: a missing key is generated inside its
backend (non-extractable in an HSM or KMS); an existing certificate without its key is an error;
an existing HSM/KMS key is used only with --adopt. CA certificates are the ones kubeadm writes:
CN kubernetes / etcd-ca / front-proxy-ca, CA:TRUE, 10 years by default.")]
    Init {
        #[command(flatten)]
        config: ConfigArg,
        /// Use a key that already exists in the HSM or KMS instead of refusing.
        #[arg(long)]
        adopt: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },

    /// Move existing CA keys (a kubeadm pki directory) into the configured HSM or KMS.
    #[command(after_help = "\
Examples:
  # Import, prove, then remove ca.key, etcd/ca.key and front-proxy-ca.key
  kubesign ca import --config /etc/kubesign/config.yaml \\
      --from /etc/kubernetes/pki --remove-source

Each key is imported as sensitive and non-extractable where the backend allows, must match its
CA certificate, and must produce a signature that verifies with that certificate before the
source file is touched. Only with --remove-source is the file overwritten and removed, which
leaves the directory in kubeadm's external CA mode. CAs configured with file: keys are skipped.")]
    Import {
        #[command(flatten)]
        config: ConfigArg,
        /// The kubeadm pki directory holding ca.key, etcd/ca.key and front-proxy-ca.key.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// After a successful import and proof, overwrite and remove each source key file.
        #[arg(long)]
        remove_source: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Show each CA's key: backend, location, algorithm, attributes, whether it matches.
    #[command(after_help = "\
Examples:
  kubesign keys list --config /etc/kubesign/config.yaml
  kubesign keys list --config kubesign.yaml -o json

Exits 1 when a key cannot be loaded or does not match its CA certificate.")]
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print an example configuration.
    #[command(after_help = "\
Examples:
  kubesign config example > /etc/kubesign/config.yaml
  kubesign config example | less")]
    Example,
    /// Load and validate a configuration file.
    #[command(after_help = "\
Examples:
  kubesign config validate --config /etc/kubesign/config.yaml
  kubesign config validate -c kubesign.yaml    # or set KUBESIGN_CONFIG

Checks apiVersion and kind, every field, every key URI, and that each key's backend is compiled
into this binary. It does not open keys or read certificates.")]
    Validate {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Args, Debug)]
struct ConfigArg {
    /// The kubesign configuration file (kind: SignerConfiguration).
    #[arg(long, short = 'c', env = "KUBESIGN_CONFIG", value_name = "FILE")]
    config: PathBuf,
}

#[cfg(feature = "serve")]
#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// A kubeconfig file; default: in-cluster credentials, else $KUBECONFIG or ~/.kube/config.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Elect a leader through a Lease (overrides serve.leaderElection.enabled).
    #[arg(long, value_name = "BOOL")]
    leader_elect: Option<bool>,
    /// The Lease's namespace (overrides serve.leaderElection.namespace; default $POD_NAMESPACE, else kube-system).
    #[arg(long, value_name = "NAMESPACE")]
    leader_elect_resource_namespace: Option<String>,
    /// The Lease's name (overrides serve.leaderElection.leaseName; default kubesign).
    #[arg(long, value_name = "NAME")]
    leader_elect_resource_name: Option<String>,
    /// Where /metrics, /healthz and /readyz listen (overrides serve.httpAddress), e.g. 127.0.0.1:10271.
    #[arg(long, value_name = "ADDRESS")]
    http_address: Option<String>,
}

#[derive(Args, Debug)]
struct SignArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// kubeadm's certificate directory (the --cert-dir given to `kubeadm certs generate-csr`).
    #[arg(long, value_name = "DIR")]
    cert_dir: PathBuf,
    /// kubeadm's kubeconfig directory; its *.conf.csr are signed into the kubeconfig files.
    #[arg(long, value_name = "DIR")]
    kubeconfig_dir: Option<PathBuf>,
    /// Validate everything and show what would be signed; sign and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replace existing certificates (otherwise an existing .crt is an error).
    #[arg(long)]
    force: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

#[derive(Args, Debug)]
struct RenewArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// kubeadm's certificate directory.
    #[arg(long, value_name = "DIR")]
    cert_dir: PathBuf,
    /// kubeadm's kubeconfig directory.
    #[arg(long, value_name = "DIR")]
    kubeconfig_dir: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Certificates to renew, by kubeadm name (apiserver, etcd/server, admin.conf, ...); all when omitted.
    names: Vec<String>,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// kubeadm's certificate directory.
    #[arg(long, value_name = "DIR")]
    cert_dir: PathBuf,
    /// kubeadm's kubeconfig directory.
    #[arg(long, value_name = "DIR")]
    kubeconfig_dir: Option<PathBuf>,
    /// Also compare the directory's CA certificates with the configured ones.
    #[arg(long, short = 'c', env = "KUBESIGN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // cryptoki logs every vendor mechanism it has no name for at ERROR level while listing a
        // token's mechanisms; that is noise for operators. RUST_LOG can still turn it on.
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(format!("{level},cryptoki=off")))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ca(CaCommand::Init {
            config,
            adopt,
            output,
        }) => cmd_ca::init(config.config, adopt, output).await,
        Command::Ca(CaCommand::Import {
            config,
            from,
            remove_source,
            output,
        }) => cmd_ca::import(config.config, from, remove_source, output).await,
        Command::Keys(KeysCommand::List { config, output }) => {
            cmd_ca::list(config.config, output).await
        }
        Command::Sign(a) => {
            cmd_sign::run(cmd_sign::SignOptions {
                config: a.config.config,
                cert_dir: a.cert_dir,
                kubeconfig_dir: a.kubeconfig_dir,
                dry_run: a.dry_run,
                force: a.force,
                output: a.output,
            })
            .await
        }
        Command::Renew(a) => {
            cmd_renew::run(cmd_renew::RenewOptions {
                config: a.config.config,
                cert_dir: a.cert_dir,
                kubeconfig_dir: a.kubeconfig_dir,
                names: a.names,
                output: a.output,
            })
            .await
        }
        Command::Check(a) => cmd_check::run(cmd_check::CheckOptions {
            cert_dir: a.cert_dir,
            kubeconfig_dir: a.kubeconfig_dir,
            config: a.config,
            output: a.output,
        }),
        Command::Config(ConfigCommand::Example) => {
            kubesign_cli::output::write_stdout(config::EXAMPLE.as_bytes())
        }
        Command::Config(ConfigCommand::Validate { config }) => {
            let c = config::Config::load(&config.config)?;
            let mut text = String::new();
            for ca in &c.cas {
                kubesign_cli::backends::check_compiled_in(&ca.key).map_err(|e| {
                    anyhow::anyhow!("{}: cas.{}.key: {e}", c.path.display(), ca.role)
                })?;
                text.push_str(&format!(
                    "{}: key {} certificate {}\n",
                    ca.role,
                    ca.key,
                    ca.certificate.display()
                ));
            }
            text.push_str(&format!("audit log: {}\n", c.audit_path.display()));
            if let Some(serve) = &c.serve {
                for s in &serve.signers {
                    text.push_str(&format!(
                        "serve: {} with the {} CA, at most {}s\n",
                        s.name,
                        s.ca,
                        s.max_duration.as_secs()
                    ));
                }
            }
            kubesign_cli::output::write_stdout(text.as_bytes())
        }
        #[cfg(feature = "serve")]
        Command::Serve(a) => {
            kubesign_cli::serve::run(kubesign_cli::serve::ServeOptions {
                config: a.config.config,
                kubeconfig: a.kubeconfig,
                leader_elect: a.leader_elect,
                lease_namespace: a.leader_elect_resource_namespace,
                lease_name: a.leader_elect_resource_name,
                http_address: a.http_address,
            })
            .await
        }
        Command::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kubesign", &mut script);
            kubesign_cli::output::write_stdout(&script)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<cmd_check::ProblemsFound>() => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CHECK_FAILED)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
