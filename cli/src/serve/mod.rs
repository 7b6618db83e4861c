//! `kubesign serve`: a Kubernetes controller that signs certificates.k8s.io/v1
//! CertificateSigningRequests with CA keys kept in an HSM, a KMS or a file, in place of
//! kube-controller-manager's csrsigning controllers (which a kubeadm cluster in external CA mode
//! runs without a key).
//!
//! The rules ([`signers`], [`validation`]) are pure and always compiled, so `config validate`
//! checks a `serve:` section in any build. The controller itself (`controller`, `leader`,
//! `metrics`, `http`) needs the cargo feature `serve` (on by default).

pub mod signers;
pub mod validation;

#[cfg(feature = "serve")]
pub mod controller;
#[cfg(feature = "serve")]
pub mod http;
#[cfg(feature = "serve")]
pub mod leader;
#[cfg(feature = "serve")]
pub mod metrics;

#[cfg(feature = "serve")]
pub use run::{ServeOptions, run};

#[cfg(feature = "serve")]
mod run {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::{Context as _, Result, anyhow};
    use futures::StreamExt;
    use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
    use kube::api::{Api, ListParams};
    use kube::runtime::controller::{Config as ControllerConfig, Controller};
    use kube::runtime::events::{Recorder, Reporter};
    use kube::runtime::watcher;
    use tokio::sync::watch;

    use super::controller::{Context, error_policy, reconcile};
    use super::http::{HttpServer, Readiness};
    use super::leader::{LeaderElector, LeaderHandle, default_identity};
    use super::metrics::Metrics;
    use crate::audit_log::JsonlAuditLog;
    use crate::cas::LoadedCas;
    use crate::config::{Config, parse_listen_address};

    /// The `serve` command's options; flags override the configuration file.
    #[derive(Debug, Clone, Default)]
    pub struct ServeOptions {
        /// The configuration file (with a `serve:` section).
        pub config: PathBuf,
        /// A kubeconfig file; without it, in-cluster configuration or `$KUBECONFIG` /
        /// `~/.kube/config`.
        pub kubeconfig: Option<PathBuf>,
        /// Overrides `serve.leaderElection.enabled`.
        pub leader_elect: Option<bool>,
        /// Overrides `serve.leaderElection.namespace`.
        pub lease_namespace: Option<String>,
        /// Overrides `serve.leaderElection.leaseName`.
        pub lease_name: Option<String>,
        /// Overrides `serve.httpAddress`.
        pub http_address: Option<String>,
    }

    async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client> {
        let config = match kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(
                    kc,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
            }
            None => kube::Config::infer().await.context(
                "no --kubeconfig, no in-cluster service account, no $KUBECONFIG or ~/.kube/config",
            )?,
        };
        kube::Client::try_from(config).context("building the Kubernetes client")
    }

    /// Resolves when SIGTERM or SIGINT arrives; a second signal exits at once.
    async fn signals(tx: watch::Sender<bool>) {
        async fn one() {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                match signal(SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! {
                            _ = tokio::signal::ctrl_c() => {}
                            _ = term.recv() => {}
                        }
                    }
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        one().await;
        tracing::info!(
            "shutdown requested: finishing requests in flight, then releasing the lease"
        );
        tx.send_replace(true);
        one().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(1);
    }

    /// Runs the controller until SIGTERM/SIGINT, then finishes in-flight requests, releases the
    /// lease and returns.
    pub async fn run(opts: ServeOptions) -> Result<()> {
        let config = Config::load(&opts.config)?;
        let mut serve = config.serve.clone().ok_or_else(|| {
            anyhow!(
                "{}: no `serve:` section; `kubesign serve` needs serve.signers (see `kubesign config example`)",
                config.path.display()
            )
        })?;
        if let Some(v) = opts.leader_elect {
            serve.leader_election.enabled = v;
        }
        if let Some(ns) = opts.lease_namespace.filter(|s| !s.is_empty()) {
            serve.leader_election.namespace = Some(ns);
        }
        if let Some(n) = opts.lease_name.filter(|s| !s.is_empty()) {
            serve.leader_election.lease_name = n;
        }
        if let Some(a) = &opts.http_address {
            serve.http_address =
                parse_listen_address(a).map_err(|e| anyhow!("--http-address: {e}"))?;
        }
        for s in &serve.signers {
            crate::backends::check_compiled_in(
                &config
                    .ca(s.ca)
                    .ok_or_else(|| anyhow!("the {} CA is not configured", s.ca))?
                    .key,
            )
            .with_context(|| format!("cas.{}.key", s.ca))?;
        }

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        tokio::spawn(signals(shutdown_tx));

        // Liveness answers while the keys load (an HSM login or a KMS call can take a while).
        let metrics = Metrics::new();
        let ready = Readiness::default();
        let http = HttpServer::bind(serve.http_address, metrics.clone(), ready.clone())
            .await
            .with_context(|| format!("listening on {} (serve.httpAddress)", serve.http_address))?;
        tracing::info!(address = %http.local_addr().unwrap_or(serve.http_address), "serving /metrics, /healthz, /readyz");
        let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let http_task = tokio::spawn(http.run(async move {
            let _ = http_stop_rx.await;
        }));

        let roles: BTreeSet<_> = serve.signers.iter().map(|s| s.ca).collect();
        let cas = LoadedCas::load(&config, roles).await?;
        let audit = JsonlAuditLog::open(&config.audit_path)
            .map_err(|e| anyhow!("{e}; nothing is signed without an audit log"))?;
        let client = kube_client(opts.kubeconfig.as_deref()).await?;
        let api: Api<CertificateSigningRequest> = Api::all(client.clone());
        api.list_metadata(&ListParams::default().limit(1))
            .await
            .context("listing CertificateSigningRequests (is the API server reachable, and the ClusterRole in deploy/ bound?)")?;

        let identity = default_identity();
        // The elector stops (and releases the lease) only after the controller has finished the
        // requests in flight, so no other replica signs while this one still might.
        let (elector_stop_tx, elector_stop_rx) = watch::channel(false);
        let (leader, elector) = if serve.leader_election.enabled {
            let namespace = serve
                .leader_election
                .namespace
                .clone()
                .or_else(|| {
                    std::env::var("POD_NAMESPACE")
                        .ok()
                        .filter(|s| !s.is_empty())
                })
                .unwrap_or_else(|| "kube-system".into());
            let (elector, handle) = LeaderElector::new(
                client.clone(),
                &namespace,
                identity.clone(),
                serve.leader_election.clone(),
            );
            tracing::info!(lease = %format!("{namespace}/{}", serve.leader_election.lease_name), identity = %identity, "leader election enabled");
            let m = metrics.clone();
            let task = tokio::spawn(elector.run(elector_stop_rx, move |l| m.set_leader(l)));
            (handle, Some(task))
        } else {
            tracing::warn!(
                "leader election disabled: this replica signs on its own; run one replica only"
            );
            metrics.set_leader(true);
            (LeaderHandle::always(), None)
        };

        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "kubesign".into(),
                instance: Some(identity.clone()),
            },
        );
        let names: Vec<&str> = serve.signers.iter().map(|s| s.name.as_str()).collect();
        tracing::info!(signers = ?names, "CA keys loaded and matched; ready");
        let workers = serve.workers;
        let ctx = Arc::new(Context::new(
            api.clone(),
            recorder,
            serve,
            cas,
            audit,
            leader.clone(),
            metrics.clone(),
        ));
        ready.set(true);
        metrics.set_ready(true);

        // kube-runtime's shutdown_on_signal would stop only the controller; the lease and the
        // HTTP server stop after it, so the signal is ours and reaches the controller here.
        let controller = Controller::new(api, watcher::Config::default())
            .with_config(ControllerConfig::default().concurrency(workers));
        let store = controller.store();
        let depth_ctx = Arc::clone(&ctx);
        let mut depth_stop = shutdown_rx.clone();
        let depth_task = tokio::spawn(async move {
            loop {
                let state = store.state();
                let n = depth_ctx.queue_depth(state.iter().map(|c| c.as_ref()));
                depth_ctx.metrics().set_queue_depth(n);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = depth_stop.wait_for(|v| *v) => break,
                }
            }
        });
        let mut stop = shutdown_rx.clone();
        let graceful = async move {
            let _ = stop.wait_for(|v| *v).await;
        };
        controller
            .reconcile_all_on(leader.acquisitions())
            .graceful_shutdown_on(graceful)
            .run(reconcile, error_policy, ctx)
            .for_each(|res| async move {
                match res {
                    Ok(_) => {}
                    Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {
                        // Logged by error_policy.
                    }
                    Err(kube::runtime::controller::Error::ObjectNotFound(r)) => {
                        tracing::debug!(object = %r, "request deleted before it was reconciled");
                    }
                    Err(e) => tracing::warn!(error = %e, "controller"),
                }
            })
            .await;
        tracing::info!("controller stopped; no request is in flight");
        ready.set(false);
        metrics.set_ready(false);
        elector_stop_tx.send_replace(true);
        if let Some(task) = elector {
            let _ = task.await;
        }
        let _ = depth_task.await;
        let _ = http_stop_tx.send(());
        let _ = http_task.await;
        Ok(())
    }
}
