//! [`KmsBackend`]: SDK clients (one per region and endpoint, reused), shared flow control, and the
//! key lifecycle: open, adopt, generate, import, describe.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
    RsaKeyPair,
};
use aws_sdk_kms::Client;
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::operation::get_public_key::GetPublicKeyOutput;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{
    AlgorithmSpec, ExpirationModelType, KeyMetadata, KeyState, KeyUsageType, OriginType, Tag,
    WrappingKeySpec,
};
use der::Decode;
use secrecy::ExposeSecret;
use signer_api::keyuri::{AwsKmsUri, KeyUri};
use signer_api::signer::PrivateKeyMaterial;
use signer_api::{
    ErrorKind, KeyAlgorithm, KeyGenerator, KeyImporter, PublicKeyKind, Signer, SignerError,
};
use spki::SubjectPublicKeyInfoOwned;

use crate::error::{KmsOperation, classify, signer_error};
use crate::limiter::{Limiter, with_retries};
use crate::options::{KmsOptions, RetryPolicy};
use crate::signer::{KmsKeySpec, KmsSigner};
use crate::wrap::wrap_key_material;

/// The tag kubesign puts on keys it creates.
pub const MANAGED_TAG: (&str, &str) = ("kubesign:managed", "true");

/// Days a key kubesign created stays pending deletion when a later step of its creation fails.
const CLEANUP_PENDING_DAYS: i32 = 7;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClientKey {
    region: Option<String>,
    endpoint: Option<String>,
    attempt_timeout: Duration,
    connect_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LimiterKey {
    region: String,
    endpoint: Option<String>,
    rsa: bool,
    rate_millis: Option<(u64, u32)>,
    max_concurrency: usize,
}

/// What `DescribeKey` says about a key, for `kubesign keys list` and diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KmsKeyInfo {
    /// The key ARN.
    pub key_arn: String,
    /// The key ID.
    pub key_id: String,
    /// The key spec, e.g. `ECC_NIST_P256` (any spec, also ones kubesign does not sign with).
    pub key_spec: String,
    /// The key state, e.g. `Enabled`, `Disabled`, `PendingDeletion`, `PendingImport`.
    pub key_state: String,
    /// The key usage, e.g. `SIGN_VERIFY`.
    pub key_usage: String,
    /// Where the key material came from: `AWS_KMS`, `EXTERNAL` (imported), `AWS_CLOUDHSM`, ...
    pub origin: String,
    /// The signing algorithms the key supports.
    pub signing_algorithms: Vec<String>,
    /// The key's description.
    pub description: String,
}

impl KmsKeyInfo {
    /// The spec, when it is one kubesign signs with.
    pub fn spec(&self) -> Option<KmsKeySpec> {
        KmsKeySpec::from_aws_name(&self.key_spec)
    }

    fn from_metadata(m: &KeyMetadata) -> Self {
        KmsKeyInfo {
            key_arn: m.arn().unwrap_or(m.key_id()).to_owned(),
            key_id: m.key_id().to_owned(),
            key_spec: metadata_spec(m),
            key_state: m
                .key_state()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            key_usage: m
                .key_usage()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            origin: m
                .origin()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            signing_algorithms: m
                .signing_algorithms()
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect(),
            description: m.description().unwrap_or_default().to_owned(),
        }
    }
}

/// The AWS KMS key backend.
///
/// Holds one SDK client per (region, endpoint, timeouts) and reuses it for every key, and one
/// flow-control limiter per (region, endpoint, key family, limits), so that every signer drawing
/// on the same AWS request quota shares one token bucket. SDK-level retries are turned off: the
/// backend retries transient failures itself, under the limiter, as [`KmsOptions::retry`] says.
/// Mutating calls (`CreateKey`, `CreateAlias`, `ImportKeyMaterial`) are never retried, since a
/// timed-out attempt may have succeeded.
///
/// Credentials and the default region come from the standard AWS configuration chain
/// (environment, shared config and credentials files and profiles, web identity token, ECS and
/// EC2 instance metadata), or from an [`SdkConfig`] given to [`KmsBackend::with_sdk_config`].
/// A region in the key URI (or its ARN) overrides the default region; `endpoint=` overrides the
/// service endpoint.
pub struct KmsBackend {
    options: KmsOptions,
    base: Option<SdkConfig>,
    clients: Mutex<HashMap<ClientKey, (Client, String)>>,
    limiters: Mutex<HashMap<LimiterKey, Arc<Limiter>>>,
    control: Limiter,
}

impl std::fmt::Debug for KmsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsBackend")
            .field("options", &self.options)
            .field("sdk_config_given", &self.base.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for KmsBackend {
    fn default() -> Self {
        KmsBackend::new(KmsOptions::default())
    }
}

fn invalid_reference(what: String) -> SignerError {
    SignerError::new(ErrorKind::InvalidKeyReference, what)
}

impl KmsBackend {
    /// A backend that loads credentials and the default region from the standard AWS chain.
    /// `options` apply to the signers it opens, generates and imports.
    pub fn new(options: KmsOptions) -> Self {
        KmsBackend {
            options,
            base: None,
            clients: Mutex::new(HashMap::new()),
            limiters: Mutex::new(HashMap::new()),
            control: Limiter::unlimited(),
        }
    }

    /// A backend that uses `sdk_config` (credentials, region, endpoint, HTTP client) instead of
    /// loading the standard chain; the key URI's region and endpoint still override it.
    pub fn with_sdk_config(options: KmsOptions, sdk_config: SdkConfig) -> Self {
        KmsBackend {
            base: Some(sdk_config),
            ..KmsBackend::new(options)
        }
    }

    /// The options this backend applies.
    pub fn options(&self) -> &KmsOptions {
        &self.options
    }

    async fn client(
        &self,
        uri: &AwsKmsUri,
        options: &KmsOptions,
    ) -> Result<(Client, String), SignerError> {
        let key = ClientKey {
            region: uri.region.clone(),
            endpoint: uri.endpoint.clone(),
            attempt_timeout: options.attempt_timeout,
            connect_timeout: options.connect_timeout,
        };
        if let Some(c) = self.lock_clients().get(&key) {
            return Ok(c.clone());
        }
        let base = match &self.base {
            Some(b) => b.clone(),
            None => {
                let mut loader = aws_config::defaults(BehaviorVersion::latest());
                if let Some(r) = &uri.region {
                    loader = loader.region(Region::new(r.clone()));
                }
                loader.load().await
            }
        };
        let region = uri
            .region
            .clone()
            .or_else(|| base.region().map(|r| r.to_string()))
            .ok_or_else(|| {
                invalid_reference(format!(
                    "{uri}: no AWS region: use a key ARN, add ?region=REGION to the key URI, or \
                     set AWS_REGION (or a region in the AWS profile)"
                ))
            })?;
        let mut builder = aws_sdk_kms::config::Builder::from(&base)
            .region(Region::new(region.clone()))
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(options.connect_timeout)
                    .operation_attempt_timeout(options.attempt_timeout)
                    .build(),
            );
        if let Some(e) = &uri.endpoint {
            builder = builder.endpoint_url(e.clone());
        }
        let client = Client::from_conf(builder.build());
        let mut clients = self.lock_clients();
        Ok(clients.entry(key).or_insert((client, region)).clone())
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, (Client, String)>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn limiter(
        &self,
        region: &str,
        uri: &AwsKmsUri,
        spec: KmsKeySpec,
        options: &KmsOptions,
    ) -> Arc<Limiter> {
        let rate = options.rate_limit.resolve(spec.is_rsa());
        let key = LimiterKey {
            region: region.to_owned(),
            endpoint: uri.endpoint.clone(),
            rsa: spec.is_rsa(),
            rate_millis: rate.map(|(r, b)| ((r * 1000.0) as u64, b)),
            max_concurrency: options.max_concurrency,
        };
        self.limiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert_with(|| Arc::new(Limiter::new(rate, options.max_concurrency)))
            .clone()
    }

    /// Runs one control-plane request, retried per `policy`, mapping errors for `op` on `label`.
    async fn call<T, E, F, Fut>(
        &self,
        policy: RetryPolicy,
        op: KmsOperation,
        label: &str,
        key_id: &str,
        mut request: F,
    ) -> Result<T, SignerError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        with_retries(&self.control, &policy, |attempt| {
            let fut = request();
            async move {
                fut.await.map_err(|e| {
                    let c = classify(&e, op, key_id);
                    let attempts =
                        (c.is_transient() && attempt >= policy.max_attempts).then_some(attempt);
                    signer_error(&c, &e, op, label, attempts).with_source(e)
                })
            }
        })
        .await
    }

    /// Opens the key named by `uri` with this backend's options. See [`KmsBackend::open_with`].
    pub async fn open(&self, uri: &AwsKmsUri) -> Result<Arc<KmsSigner>, SignerError> {
        self.open_with(uri, &self.options.clone()).await
    }

    /// Opens the key named by `uri` with `options`: fetches its public key once (`GetPublicKey`),
    /// checks that it is a `SIGN_VERIFY` key of a spec kubesign signs with and that the signing
    /// algorithm is among the key's, and returns a signer that addresses the key by its ARN (so a
    /// later change of the alias cannot switch keys under a loaded CA).
    pub async fn open_with(
        &self,
        uri: &AwsKmsUri,
        options: &KmsOptions,
    ) -> Result<Arc<KmsSigner>, SignerError> {
        let (client, region) = self.client(uri, options).await?;
        let label = uri.to_string();
        self.open_key(&client, &region, uri, uri.key.as_api_str(), &label, options)
            .await
    }

    async fn open_key(
        &self,
        client: &Client,
        region: &str,
        uri: &AwsKmsUri,
        key_id: &str,
        label: &str,
        options: &KmsOptions,
    ) -> Result<Arc<KmsSigner>, SignerError> {
        let out = self
            .call(
                options.retry,
                KmsOperation::GetPublicKey,
                label,
                key_id,
                || client.get_public_key().key_id(key_id).send(),
            )
            .await?;
        if let Some(usage) = out.key_usage()
            && *usage != KeyUsageType::SignVerify
        {
            return Err(SignerError::new(
                ErrorKind::KeyPolicy,
                format!(
                    "{label}: the key's KeyUsage is {}; a CA key must be a SIGN_VERIFY key \
                     (aws kms create-key --key-usage SIGN_VERIFY --key-spec ECC_NIST_P256)",
                    usage.as_str()
                ),
            ));
        }
        let spec_name = public_key_spec(&out);
        let spec = KmsKeySpec::from_aws_name(&spec_name).ok_or_else(|| {
            SignerError::new(
                ErrorKind::Unsupported,
                format!(
                    "{label}: KeySpec {spec_name:?} is not one kubesign signs with: use \
                     ECC_NIST_P256, ECC_NIST_P384, RSA_2048, RSA_3072 or RSA_4096"
                ),
            )
        })?;
        let algorithms = out.signing_algorithms();
        if algorithms.is_empty() {
            tracing::warn!(
                key = label,
                "GetPublicKey listed no signing algorithms; assuming {}",
                spec.signing_algorithm().as_str()
            );
        } else if !algorithms.contains(&spec.signing_algorithm()) {
            return Err(SignerError::new(
                ErrorKind::Unsupported,
                format!(
                    "{label}: the key does not support {} (it supports {}); kubesign signs \
                     {spec} keys with {}",
                    spec.signing_algorithm().as_str(),
                    algorithms
                        .iter()
                        .map(|a| a.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    spec.signing_algorithm().as_str()
                ),
            ));
        }
        let der = out.public_key().map(|b| b.as_ref()).unwrap_or_default();
        let public_key = SubjectPublicKeyInfoOwned::from_der(der).map_err(|e| {
            SignerError::new(
                ErrorKind::Backend,
                format!("{label}: GetPublicKey returned no valid SubjectPublicKeyInfo: {e}"),
            )
        })?;
        let kind = PublicKeyKind::from_spki(&public_key).map_err(|e| {
            SignerError::new(
                ErrorKind::Backend,
                format!("{label}: the key's public key is not acceptable: {e}"),
            )
        })?;
        if kind != spec.key_algorithm().public_key_kind() {
            return Err(SignerError::new(
                ErrorKind::Backend,
                format!("{label}: KMS reports KeySpec {spec} but returned a {kind} public key"),
            ));
        }
        let key_arn = match out.key_id() {
            Some(id) if id.starts_with("arn:") => id.to_owned(),
            reported => {
                // Real KMS returns the ARN; some emulators return the bare key ID.
                let fallback = reported.unwrap_or(key_id).to_owned();
                match client.describe_key().key_id(&fallback).send().await {
                    Ok(d) => d
                        .key_metadata()
                        .and_then(|m| m.arn())
                        .map(str::to_owned)
                        .unwrap_or(fallback),
                    Err(_) => fallback,
                }
            }
        };
        Ok(Arc::new(KmsSigner {
            uri: label.to_owned(),
            key_arn,
            spec,
            public_key,
            client: client.clone(),
            limiter: self.limiter(region, uri, spec, options),
            message_type: options.message_type,
            retry: options.retry,
        }))
    }

    /// Describes the key named by `uri` (`DescribeKey`).
    pub async fn key_info(&self, uri: &AwsKmsUri) -> Result<KmsKeyInfo, SignerError> {
        let (client, _) = self.client(uri, &self.options).await?;
        let label = uri.to_string();
        let m = self.describe(&client, uri.key.as_api_str(), &label).await?;
        Ok(KmsKeyInfo::from_metadata(&m))
    }

    async fn describe(
        &self,
        client: &Client,
        key_id: &str,
        label: &str,
    ) -> Result<KeyMetadata, SignerError> {
        let out = self
            .call(
                self.options.retry,
                KmsOperation::DescribeKey,
                label,
                key_id,
                || client.describe_key().key_id(key_id).send(),
            )
            .await?;
        out.key_metadata().cloned().ok_or_else(|| {
            SignerError::new(
                ErrorKind::Backend,
                format!("{label}: DescribeKey returned no key metadata"),
            )
        })
    }

    /// Takes an existing key (named by any `awskms:` form) as a CA key: checks with `DescribeKey`
    /// that it is enabled, `SIGN_VERIFY`, of a spec kubesign signs with and, when `expected` is
    /// given, of that type; then opens it. This is the path for keys kubesign did not create.
    pub async fn adopt(
        &self,
        uri: &AwsKmsUri,
        expected: Option<KeyAlgorithm>,
    ) -> Result<Arc<KmsSigner>, SignerError> {
        let (client, region) = self.client(uri, &self.options).await?;
        let label = uri.to_string();
        let m = self.describe(&client, uri.key.as_api_str(), &label).await?;
        let info = KmsKeyInfo::from_metadata(&m);
        let arn = info.key_arn.clone();
        match m.key_state() {
            Some(KeyState::Enabled) | None => {}
            Some(KeyState::Disabled) => {
                return Err(SignerError::new(
                    ErrorKind::KeyPolicy,
                    format!(
                        "{label}: key {arn} is disabled: enable it with `aws kms enable-key \
                         --key-id {arn}`"
                    ),
                ));
            }
            Some(KeyState::PendingDeletion) => {
                return Err(SignerError::new(
                    ErrorKind::KeyPolicy,
                    format!(
                        "{label}: key {arn} is pending deletion: cancel it with `aws kms \
                         cancel-key-deletion --key-id {arn}` and enable it"
                    ),
                ));
            }
            Some(other) => {
                return Err(SignerError::new(
                    ErrorKind::KeyPolicy,
                    format!(
                        "{label}: key {arn} is {}; a CA key must be Enabled",
                        other.as_str()
                    ),
                ));
            }
        }
        if let (Some(want), Some(have)) = (expected, info.spec())
            && have.key_algorithm() != want
        {
            return Err(SignerError::new(
                ErrorKind::KeyMismatch,
                format!("{label}: key {arn} is {have}, not the expected {want}"),
            ));
        }
        self.open_key(&client, &region, uri, &arn, &label, &self.options)
            .await
    }

    /// Creates a new KMS key of `algorithm` under the alias `uri` names, described as
    /// "kubesign `role` CA" and tagged `kubesign:managed=true`. Refuses (KeyPolicy) when the
    /// alias already exists: existing keys are taken with [`KmsBackend::adopt`]. Key IDs and key
    /// ARNs cannot be created (KMS chooses them).
    pub async fn generate_key(
        &self,
        uri: &AwsKmsUri,
        algorithm: KeyAlgorithm,
        role: &str,
    ) -> Result<Arc<KmsSigner>, SignerError> {
        self.create(uri, algorithm, role, None).await
    }

    /// Imports `material` (PKCS#8) into a new KMS key under the alias `uri` names: `CreateKey`
    /// with origin `EXTERNAL`, `GetParametersForImport` (RSA_AES_KEY_WRAP_SHA_256 with an
    /// RSA_4096 wrapping key, or RSA_2048 where 4096 is refused), wrap (see [`crate::wrap`]),
    /// `ImportKeyMaterial` (never expires), `CreateAlias`. Checks that the key KMS then reports
    /// has the material's public key. Refuses an existing alias like [`KmsBackend::generate_key`].
    pub async fn import_key(
        &self,
        uri: &AwsKmsUri,
        material: &PrivateKeyMaterial,
        role: &str,
    ) -> Result<Arc<KmsSigner>, SignerError> {
        self.create(uri, material.algorithm, role, Some(material))
            .await
    }

    async fn create(
        &self,
        uri: &AwsKmsUri,
        algorithm: KeyAlgorithm,
        role: &str,
        material: Option<&PrivateKeyMaterial>,
    ) -> Result<Arc<KmsSigner>, SignerError> {
        let label = uri.to_string();
        let Some(alias) = uri.key.alias().map(str::to_owned) else {
            return Err(invalid_reference(format!(
                "{label}: KMS chooses key IDs and ARNs, so a new key must be named by an alias: \
                 use awskms:///alias/NAME (an existing key is taken with adopt)"
            )));
        };
        let spec = KmsKeySpec::for_algorithm(algorithm).ok_or_else(|| {
            SignerError::new(
                ErrorKind::Unsupported,
                format!("{label}: AWS KMS has no key spec for {algorithm}"),
            )
        })?;
        let expected_spki = match material {
            Some(m) => Some(public_key_of(m, &label)?),
            None => None,
        };
        let options = self.options.clone();
        let (client, region) = self.client(uri, &options).await?;

        // Never replace: the alias must not exist yet.
        match self.describe(&client, &alias, &label).await {
            Ok(m) => {
                return Err(SignerError::new(
                    ErrorKind::KeyPolicy,
                    format!(
                        "{label}: {alias} already exists (key {}, {}); kubesign never replaces a \
                         CA key: use the existing key with adopt, or choose another alias",
                        m.arn().unwrap_or(m.key_id()),
                        m.key_state().map(|s| s.as_str()).unwrap_or("state unknown")
                    ),
                ));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }

        let description = format!("kubesign {role} CA");
        let tag = Tag::builder()
            .tag_key(MANAGED_TAG.0)
            .tag_value(MANAGED_TAG.1)
            .build()
            .map_err(|e| SignerError::new(ErrorKind::Backend, format!("{label}: tag: {e}")))?;
        let once = RetryPolicy::attempts(1);
        let origin = if material.is_some() {
            OriginType::External
        } else {
            OriginType::AwsKms
        };
        let created = self
            .call(once, KmsOperation::CreateKey, &label, &alias, || {
                client
                    .create_key()
                    .key_spec(spec.sdk())
                    .key_usage(KeyUsageType::SignVerify)
                    .origin(origin.clone())
                    .description(&description)
                    .tags(tag.clone())
                    .send()
            })
            .await?;
        let Some(meta) = created.key_metadata() else {
            return Err(SignerError::new(
                ErrorKind::Backend,
                format!("{label}: CreateKey returned no key metadata"),
            ));
        };
        let key_id = meta.key_id().to_owned();
        let key_arn = meta.arn().unwrap_or(&key_id).to_owned();
        tracing::info!(key = %label, arn = %key_arn, spec = %spec, imported = material.is_some(), "created KMS key");

        let finish = async {
            if let Some(m) = material {
                self.import_material(&client, &key_id, m, &label).await?;
            }
            self.call(once, KmsOperation::CreateAlias, &label, &alias, || {
                client
                    .create_alias()
                    .alias_name(&alias)
                    .target_key_id(&key_id)
                    .send()
            })
            .await
        }
        .await;
        if let Err(e) = finish {
            self.schedule_cleanup(&client, &key_arn, &label).await;
            return Err(e);
        }

        let signer = self
            .open_key(&client, &region, uri, &key_arn, &label, &options)
            .await?;
        if let Some(expected) = expected_spki
            && signer.public_key() != &expected
        {
            return Err(SignerError::new(
                ErrorKind::KeyMismatch,
                format!(
                    "{label}: after import, KMS key {key_arn} reports a public key that is not \
                     the imported key's"
                ),
            ));
        }
        Ok(signer)
    }

    async fn import_material(
        &self,
        client: &Client,
        key_id: &str,
        material: &PrivateKeyMaterial,
        label: &str,
    ) -> Result<(), SignerError> {
        let once = RetryPolicy::attempts(1);
        let mut params = None;
        for wrapping_spec in [WrappingKeySpec::Rsa4096, WrappingKeySpec::Rsa2048] {
            let r = self
                .call(
                    self.options.retry,
                    KmsOperation::GetParametersForImport,
                    label,
                    key_id,
                    || {
                        client
                            .get_parameters_for_import()
                            .key_id(key_id)
                            .wrapping_algorithm(AlgorithmSpec::RsaAesKeyWrapSha256)
                            .wrapping_key_spec(wrapping_spec.clone())
                            .send()
                    },
                )
                .await;
            match r {
                Ok(p) => {
                    params = Some(p);
                    break;
                }
                Err(e)
                    if e.kind() == ErrorKind::Unsupported
                        && wrapping_spec == WrappingKeySpec::Rsa4096 =>
                {
                    tracing::debug!(error = %e, "RSA_4096 wrapping key refused; trying RSA_2048");
                }
                Err(e) => return Err(e),
            }
        }
        let params = params.ok_or_else(|| {
            SignerError::new(
                ErrorKind::Unsupported,
                format!("{label}: KMS offered no wrapping key for the import"),
            )
        })?;
        let (Some(token), Some(wrapping_key)) = (params.import_token(), params.public_key()) else {
            return Err(SignerError::new(
                ErrorKind::Backend,
                format!("{label}: GetParametersForImport returned no import token or wrapping key"),
            ));
        };
        let wrapped = wrap_key_material(wrapping_key.as_ref(), material.pkcs8_der.expose_secret())
            .map_err(|e| {
                SignerError::new(ErrorKind::Backend, format!("{label}: {e}")).with_source(e)
            })?;
        let wrapped = Blob::new(wrapped);
        let token = token.clone();
        self.call(once, KmsOperation::ImportKeyMaterial, label, key_id, || {
            client
                .import_key_material()
                .key_id(key_id)
                .import_token(token.clone())
                .encrypted_key_material(wrapped.clone())
                .expiration_model(ExpirationModelType::KeyMaterialDoesNotExpire)
                .send()
        })
        .await?;
        Ok(())
    }

    /// Best effort: a key whose creation failed half-way is scheduled for deletion, so that no
    /// orphan key lingers (and keeps costing money).
    async fn schedule_cleanup(&self, client: &Client, key_arn: &str, label: &str) {
        let r = client
            .schedule_key_deletion()
            .key_id(key_arn)
            .pending_window_in_days(CLEANUP_PENDING_DAYS)
            .send()
            .await;
        match r {
            Ok(_) => tracing::warn!(
                key = label,
                arn = key_arn,
                "creation failed; the new key was scheduled for deletion in {CLEANUP_PENDING_DAYS} days"
            ),
            Err(e) => {
                tracing::warn!(key = label, arn = key_arn, error = %aws_sdk_kms::error::DisplayErrorContext(&e), "creation failed and the new key could not be scheduled for deletion; delete it by hand")
            }
        }
    }
}

/// The key spec from `KeySpec`, or from the deprecated `CustomerMasterKeySpec` that moto's
/// `GetPublicKey` still returns instead.
#[allow(deprecated)]
fn public_key_spec(out: &GetPublicKeyOutput) -> String {
    out.key_spec()
        .map(|s| s.as_str().to_owned())
        .or_else(|| {
            out.customer_master_key_spec()
                .map(|s| s.as_str().to_owned())
        })
        .unwrap_or_default()
}

#[allow(deprecated)]
fn metadata_spec(m: &KeyMetadata) -> String {
    m.key_spec()
        .map(|s| s.as_str().to_owned())
        .or_else(|| m.customer_master_key_spec().map(|s| s.as_str().to_owned()))
        .unwrap_or_default()
}

/// The SubjectPublicKeyInfo of a PKCS#8 private key, checked against its declared algorithm.
fn public_key_of(
    material: &PrivateKeyMaterial,
    label: &str,
) -> Result<SubjectPublicKeyInfoOwned, SignerError> {
    let der = material.pkcs8_der.expose_secret();
    let bad = |what: &str| {
        SignerError::new(
            ErrorKind::InvalidKeyReference,
            format!(
                "{label}: the key to import is not a valid {} PKCS#8 key ({what})",
                material.algorithm
            ),
        )
    };
    let spki_der = match material.algorithm {
        KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
            let alg = if material.algorithm == KeyAlgorithm::EcdsaP256 {
                &ECDSA_P256_SHA256_ASN1_SIGNING
            } else {
                &ECDSA_P384_SHA384_ASN1_SIGNING
            };
            let k = EcdsaKeyPair::from_pkcs8(alg, der).map_err(|e| bad(&e.to_string()))?;
            k.public_key()
                .as_der()
                .map_err(|_| bad("public key encoding"))?
                .as_ref()
                .to_vec()
        }
        _ => {
            let k = RsaKeyPair::from_pkcs8(der).map_err(|e| bad(&e.to_string()))?;
            k.public_key()
                .as_der()
                .map_err(|_| bad("public key encoding"))?
                .as_ref()
                .to_vec()
        }
    };
    let spki = SubjectPublicKeyInfoOwned::from_der(&spki_der).map_err(|e| bad(&e.to_string()))?;
    let kind = PublicKeyKind::from_spki(&spki).map_err(|e| bad(&e.to_string()))?;
    if kind != material.algorithm.public_key_kind() {
        return Err(bad(&format!("it holds a {kind} key")));
    }
    Ok(spki)
}

fn kms_uri<'a>(key: &'a KeyUri, what: &str) -> Result<&'a AwsKmsUri, SignerError> {
    match key {
        KeyUri::AwsKms(u) => Ok(u),
        other => Err(invalid_reference(format!(
            "the awskms backend cannot {what} {other}: expected an awskms: key URI"
        ))),
    }
}

fn role_of(uri: &AwsKmsUri) -> String {
    uri.key
        .alias()
        .map(|a| a.trim_start_matches("alias/").to_owned())
        .unwrap_or_else(|| uri.key.as_api_str().to_owned())
}

#[async_trait]
impl KeyGenerator for KmsBackend {
    /// Creates a key under the URI's alias; the description names the alias.
    async fn generate(
        &self,
        key: &KeyUri,
        algorithm: KeyAlgorithm,
    ) -> Result<Arc<dyn Signer>, SignerError> {
        let uri = kms_uri(key, "create")?;
        let signer: Arc<dyn Signer> = self.generate_key(uri, algorithm, &role_of(uri)).await?;
        Ok(signer)
    }
}

#[async_trait]
impl KeyImporter for KmsBackend {
    /// Imports under the URI's alias; the description names the alias.
    async fn import(
        &self,
        key: &KeyUri,
        material: PrivateKeyMaterial,
    ) -> Result<Arc<dyn Signer>, SignerError> {
        let uri = kms_uri(key, "import into")?;
        let signer: Arc<dyn Signer> = self.import_key(uri, &material, &role_of(uri)).await?;
        Ok(signer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretSlice;

    #[tokio::test]
    async fn refuses_other_schemes_and_non_alias_creation() {
        let backend = KmsBackend::default();
        let file = KeyUri::parse("file:/tmp/ca.key").unwrap();
        let e = backend
            .generate(&file, KeyAlgorithm::EcdsaP256)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidKeyReference);
        assert!(e.to_string().contains("awskms"), "{e}");

        let id = KeyUri::parse("awskms:///1234abcd-12ab-34cd-56ef-1234567890ab?region=us-east-1")
            .unwrap();
        let e = backend
            .generate(&id, KeyAlgorithm::EcdsaP256)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidKeyReference);
        assert!(e.to_string().contains("alias/NAME"), "{e}");
    }

    #[test]
    fn public_key_of_checks_the_declared_algorithm() {
        let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let der = ec.to_pkcs8v1().unwrap().as_ref().to_vec();
        let m = PrivateKeyMaterial {
            algorithm: KeyAlgorithm::EcdsaP256,
            pkcs8_der: SecretSlice::from(der.clone()),
        };
        let spki = public_key_of(&m, "k").unwrap();
        assert_eq!(
            spki.subject_public_key.raw_bytes(),
            ec.public_key().as_ref()
        );
        let wrong = PrivateKeyMaterial {
            algorithm: KeyAlgorithm::Rsa2048,
            pkcs8_der: SecretSlice::from(der),
        };
        assert_eq!(
            public_key_of(&wrong, "k").unwrap_err().kind(),
            ErrorKind::InvalidKeyReference
        );
    }

    #[test]
    fn role_comes_from_the_alias() {
        let KeyUri::AwsKms(u) = KeyUri::parse("awskms:///alias/kubesign/etcd-ca").unwrap() else {
            panic!()
        };
        assert_eq!(role_of(&u), "kubesign/etcd-ca");
    }
}
