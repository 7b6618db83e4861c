//! Tokens and their session pools.
//!
//! A [`Token`] is one PKCS#11 token in one module, found by its identity (label, serial,
//! manufacturer, model), never by a remembered slot number: slot ids change (SoftHSM renumbers
//! after `--init-token`, hot-plugged readers come and go), so the slot is looked up again by
//! identity whenever a session has to be replaced after a device failure.
//!
//! Tokens live in a process-wide registry: every key on a token shares its pool of long-lived,
//! logged-in sessions and its login state, because PKCS#11 login state is per process and token,
//! shared by every session. Consequences:
//!
//! - `CKR_USER_ALREADY_LOGGED_IN` is success, and `C_Logout` is never called (it would log out
//!   every session, including those other signers are using).
//! - A PIN that fails `C_Login` is remembered (as a keyed hash, never the PIN) and not tried
//!   again in this process: the same error is returned without calling the token, because
//!   repeating a wrong PIN locks real HSMs.
//! - A cryptoki `Session` is `Send` but not `Sync`: each pooled session is checked out by one
//!   blocking thread at a time (`tokio::task::spawn_blocking`), never touched on the async
//!   runtime's threads. A semaphore bounds how many operations run at once to the pool size, and
//!   waiting for it is async.
//! - A session that failed transiently is discarded, never reused; a dead handle is not even
//!   closed (the module may have handed that number to a new session). The idle sessions are then
//!   checked (`C_GetSessionInfo`): dead ones are dropped, live ones logged in again if the token
//!   lost its login. The operation is retried on a fresh or checked session with bounded,
//!   jittered exponential backoff ([`RetryPolicy`]).
//!
//! Every PKCS#11 call the backend makes on a session goes through [`Token::run`] (pooled, retried)
//! or [`Token::with_admin_session`] (read-write, for key creation): the seam where a
//! fault-injection shim can sit.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use aws_lc_rs::hmac;
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::{Slot, TokenInfo};
use secrecy::{ExposeSecret, SecretString};
use signer_api::keyuri::Pkcs11Uri;
use signer_api::{ErrorKind, SignerError};
use tokio::sync::Semaphore;

use crate::error::{Disposition, classify, pkcs11_error, rv_of, session_handle_dead};
use crate::options::RetryPolicy;

/// Counters of one token's pool in this process, for diagnostics, tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenStats {
    /// Sessions opened (`C_OpenSession` calls that succeeded).
    pub sessions_opened: u64,
    /// Sessions thrown away after a transient failure.
    pub sessions_discarded: u64,
    /// `C_Login` calls made.
    pub login_calls: u64,
    /// Operations retried after a transient failure.
    pub retries: u64,
    /// Operations run on pooled sessions (attempts, including retries).
    pub operations: u64,
}

#[derive(Default)]
struct Counters {
    sessions_opened: AtomicU64,
    sessions_discarded: AtomicU64,
    login_calls: AtomicU64,
    retries: AtomicU64,
    operations: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// What identifies a token across reconnects (CK_TOKEN_INFO, padding trimmed).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TokenIdentity {
    pub label: String,
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
}

impl TokenIdentity {
    fn of(info: &TokenInfo) -> Self {
        TokenIdentity {
            label: info.label().trim_end().to_owned(),
            manufacturer: info.manufacturer_id().trim_end().to_owned(),
            model: info.model().trim_end().to_owned(),
            serial: info.serial_number().trim_end().to_owned(),
        }
    }
}

/// A failure inside an operation on a session: the error to report, and the PKCS#11 return value
/// (which decides whether the session handle is still worth closing).
pub(crate) struct OpError {
    pub error: SignerError,
    pub rv: Option<RvError>,
}

impl From<SignerError> for OpError {
    fn from(error: SignerError) -> Self {
        OpError { error, rv: None }
    }
}

impl OpError {
    /// Wraps a cryptoki error on `target` (see [`pkcs11_error`]).
    pub fn ck(error: CkError, target: &str) -> Self {
        let rv = rv_of(&error);
        OpError {
            error: pkcs11_error(error, target),
            rv,
        }
    }
}

struct LoginState {
    /// The PIN of the last successful login, kept to log in again after the token dropped every
    /// session (device reset, reconnect).
    good_pin: Option<SecretString>,
    /// Keyed hashes of PINs that failed, with the return value they failed with.
    failed: HashMap<[u8; 32], RvError>,
}

/// One token in one module, with its pool of sessions. See the module documentation.
pub struct Token {
    module: PathBuf,
    ctx: Pkcs11,
    identity: TokenIdentity,
    slot: Mutex<Option<Slot>>,
    mechanisms: Vec<MechanismType>,
    login_required: bool,
    protected_path: bool,
    idle: Mutex<Vec<Session>>,
    permits: Arc<Semaphore>,
    pool_size: usize,
    login: Mutex<LoginState>,
    counters: Counters,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("module", &self.module)
            .field("identity", &self.identity)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

/// Locks a std mutex, recovering from poisoning: every critical section here leaves the guarded
/// data consistent at each step, so a panic elsewhere does not invalidate it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn pin_tag(pin: &SecretString) -> [u8; 32] {
    static KEY: OnceLock<hmac::Key> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        // The tag only lives in this process's memory; should the RNG fail, a fixed key still
        // identifies a repeated PIN, it merely hashes without a secret.
        let _ = aws_lc_rs::rand::fill(&mut k);
        hmac::Key::new(hmac::HMAC_SHA256, &k)
    });
    let tag = hmac::sign(key, pin.expose_secret().as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(&tag.as_ref()[..32]);
    out
}

type Registry = Mutex<Vec<Arc<Token>>>;

fn registry() -> &'static Registry {
    static TOKENS: OnceLock<Registry> = OnceLock::new();
    TOKENS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Whether the URI's token attributes (label, serial, manufacturer, model) fit a token.
fn identity_matches(uri: &Pkcs11Uri, id: &TokenIdentity) -> bool {
    let fits = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
    fits(&uri.token, &id.label)
        && fits(&uri.serial, &id.serial)
        && fits(&uri.manufacturer, &id.manufacturer)
        && fits(&uri.model, &id.model)
}

/// A short description of what the URI asks for, for messages.
fn wanted(uri: &Pkcs11Uri) -> String {
    let mut parts = Vec::new();
    for (k, v) in [
        ("token", &uri.token),
        ("serial", &uri.serial),
        ("manufacturer", &uri.manufacturer),
        ("model", &uri.model),
        ("slot-description", &uri.slot_description),
        ("slot-manufacturer", &uri.slot_manufacturer),
    ] {
        if let Some(v) = v {
            parts.push(format!("{k}={v:?}"));
        }
    }
    if parts.is_empty()
        && let Some(s) = uri.slot_id
    {
        parts.push(format!("slot-id={s}"));
    }
    if parts.is_empty() {
        "any token".into()
    } else {
        parts.join(" ")
    }
}

/// Finds the token a URI names and returns its registry entry, creating it (and its pool) on
/// first use. Blocking.
pub(crate) fn lookup(
    module: &Path,
    ctx: &Pkcs11,
    uri: &Pkcs11Uri,
    pool_size: usize,
) -> Result<Arc<Token>, SignerError> {
    let module_target = format!("module {}", module.display());
    if uri.library_manufacturer.is_some()
        || uri.library_description.is_some()
        || uri.library_version.is_some()
    {
        let info = ctx
            .get_library_info()
            .map_err(|e| pkcs11_error(e, &module_target))?;
        let checks = [
            (
                "library-manufacturer",
                &uri.library_manufacturer,
                info.manufacturer_id().trim_end().to_owned(),
            ),
            (
                "library-description",
                &uri.library_description,
                info.library_description().trim_end().to_owned(),
            ),
            (
                "library-version",
                &uri.library_version,
                info.library_version().to_string(),
            ),
        ];
        for (name, want, have) in checks {
            if let Some(w) = want
                && *w != have
            {
                return Err(SignerError::new(
                    ErrorKind::NotFound,
                    format!(
                        "pkcs11: {module_target} has {name} {have:?}, the key URI asks for {w:?}"
                    ),
                ));
            }
        }
    }

    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| pkcs11_error(e, &module_target))?;
    let by_identity = uri.token.is_some()
        || uri.serial.is_some()
        || uri.manufacturer.is_some()
        || uri.model.is_some()
        || uri.slot_description.is_some()
        || uri.slot_manufacturer.is_some();
    let mut present = Vec::new();
    let mut matches = Vec::new();
    for slot in slots {
        let info = match ctx.get_token_info(slot) {
            Ok(i) => i,
            // A token that vanished between the two calls is simply not there.
            Err(CkError::Pkcs11(RvError::TokenNotPresent | RvError::SlotIdInvalid, _)) => continue,
            Err(e) => return Err(pkcs11_error(e, &module_target)),
        };
        if !info.token_initialized() {
            continue;
        }
        let id = TokenIdentity::of(&info);
        present.push(id.label.clone());
        if !identity_matches(uri, &id) {
            continue;
        }
        if uri.slot_description.is_some() || uri.slot_manufacturer.is_some() {
            let si = ctx
                .get_slot_info(slot)
                .map_err(|e| pkcs11_error(e, &module_target))?;
            let fits = |want: &Option<String>, have: &str| {
                want.as_deref().is_none_or(|w| w == have.trim_end())
            };
            if !fits(&uri.slot_description, si.slot_description())
                || !fits(&uri.slot_manufacturer, si.manufacturer_id())
            {
                continue;
            }
        }
        if let Some(want) = uri.slot_id {
            if !by_identity && slot.id() != want {
                continue;
            }
            if by_identity && slot.id() != want {
                tracing::debug!(
                    token = %id.label, slot = slot.id(), uri_slot = want,
                    "ignoring slot-id: the token was found by its identity, and slot ids change"
                );
            }
        }
        matches.push((slot, info, id));
    }
    if uri.slot_id.is_some() && !by_identity {
        tracing::warn!(
            "pkcs11: the key URI names its token by slot-id only; slot ids change when tokens are added or initialised, add token= (the token label)"
        );
    }
    let (slot, info, identity) = match matches.len() {
        1 => matches.remove(0),
        0 => {
            present.sort();
            return Err(SignerError::new(
                ErrorKind::NotFound,
                format!(
                    "pkcs11: no token matching {} in {module_target} (initialised tokens: {})",
                    wanted(uri),
                    if present.is_empty() {
                        "none".to_owned()
                    } else {
                        present
                            .iter()
                            .map(|l| format!("{l:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            ));
        }
        n => {
            return Err(SignerError::new(
                ErrorKind::InvalidKeyReference,
                format!(
                    "pkcs11: {n} tokens match {} in {module_target}: add token=LABEL or serial=SERIAL to the key URI",
                    wanted(uri)
                ),
            ));
        }
    };

    let module = crate::module::canonical(module);
    let mut reg = lock(registry());
    if let Some(t) = reg
        .iter()
        .find(|t| t.module == module && t.identity == identity)
    {
        *lock(&t.slot) = Some(slot);
        return Ok(t.clone());
    }
    let target = format!("token {:?}", identity.label);
    let mechanisms = ctx
        .get_mechanism_list(slot)
        .map_err(|e| pkcs11_error(e, &target))?;
    let pool_size = pool_size.max(1);
    let token = Arc::new(Token {
        module,
        ctx: ctx.clone(),
        slot: Mutex::new(Some(slot)),
        mechanisms,
        login_required: info.login_required(),
        protected_path: info.protected_authentication_path(),
        idle: Mutex::new(Vec::with_capacity(pool_size)),
        permits: Arc::new(Semaphore::new(pool_size)),
        pool_size,
        login: Mutex::new(LoginState {
            good_pin: None,
            failed: HashMap::new(),
        }),
        counters: Counters::default(),
        identity,
    });
    reg.push(token.clone());
    Ok(token)
}

/// The registered token matching `uri` in `module`, if one was opened in this process. Makes no
/// PKCS#11 call.
pub(crate) fn registered(module: &Path, uri: &Pkcs11Uri) -> Option<Arc<Token>> {
    let module = crate::module::canonical(module);
    lock(registry())
        .iter()
        .find(|t| t.module == module && identity_matches(uri, &t.identity))
        .cloned()
}

/// Runs `attempt` until it succeeds, fails permanently, or `policy.max_attempts` are used up,
/// pausing with jittered exponential backoff after each transient failure.
pub(crate) async fn with_retry<T, Fut, F>(
    policy: RetryPolicy,
    retries: Option<&AtomicU64>,
    mut attempt: F,
) -> Result<T, SignerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SignerError>>,
{
    let max = policy.max_attempts.max(1);
    let mut n = 1;
    loop {
        match attempt().await {
            Err(e) if e.is_retryable() && n < max => {
                let pause = policy.backoff(n);
                tracing::warn!(
                    attempt = n,
                    max_attempts = max,
                    pause_ms = pause.as_millis() as u64,
                    error = %e,
                    "transient PKCS#11 failure; retrying on a fresh session"
                );
                if let Some(r) = retries {
                    Counters::bump(r);
                }
                tokio::time::sleep(pause).await;
                n += 1;
            }
            other => return other,
        }
    }
}

/// Runs blocking work on tokio's blocking pool, turning a panic or cancellation into an error.
pub(crate) async fn blocking<T, F>(what: &str, f: F) -> Result<T, SignerError>
where
    F: FnOnce() -> Result<T, SignerError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        SignerError::new(
            ErrorKind::Backend,
            format!("pkcs11: {what}: the blocking task failed"),
        )
        .with_source(e)
    })?
}

impl Token {
    /// `token "LABEL"`, for messages.
    pub(crate) fn target(&self) -> String {
        format!("token {:?}", self.identity.label)
    }

    /// The token's label.
    pub(crate) fn label(&self) -> &str {
        &self.identity.label
    }

    /// The token's serial number.
    pub(crate) fn serial(&self) -> &str {
        &self.identity.serial
    }

    /// The token's model (e.g. `SoftHSM v2`).
    pub(crate) fn model(&self) -> &str {
        &self.identity.model
    }

    /// Whether the token reported `mechanism` in `C_GetMechanismList` when it was first opened.
    pub(crate) fn has_mechanism(&self, mechanism: MechanismType) -> bool {
        self.mechanisms.contains(&mechanism)
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> TokenStats {
        let c = &self.counters;
        TokenStats {
            sessions_opened: c.sessions_opened.load(Ordering::Relaxed),
            sessions_discarded: c.sessions_discarded.load(Ordering::Relaxed),
            login_calls: c.login_calls.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            operations: c.operations.load(Ordering::Relaxed),
        }
    }

    /// Runs `op` on a pooled, logged-in session on a blocking thread; retries transient failures
    /// on fresh sessions as `retry` allows.
    pub(crate) async fn run<T, F>(
        self: &Arc<Self>,
        retry: RetryPolicy,
        op: F,
    ) -> Result<T, SignerError>
    where
        F: Fn(&Token, &Session) -> Result<T, OpError> + Send + Sync + 'static,
        T: Send + 'static,
    {
        let op = Arc::new(op);
        with_retry(retry, Some(&self.counters.retries), || {
            let token = Arc::clone(self);
            let op = Arc::clone(&op);
            async move {
                let permit = Arc::clone(&token.permits)
                    .acquire_owned()
                    .await
                    .map_err(|e| {
                        SignerError::new(ErrorKind::Backend, "pkcs11: session pool closed")
                            .with_source(e)
                    })?;
                blocking("session operation", move || {
                    let _permit = permit;
                    token.run_once(&*op)
                })
                .await
            }
        })
        .await
    }

    fn run_once<T>(
        &self,
        op: &(dyn Fn(&Token, &Session) -> Result<T, OpError> + Send + Sync),
    ) -> Result<T, SignerError> {
        let session = match lock(&self.idle).pop() {
            Some(s) => s,
            None => self.open_session(false)?,
        };
        Counters::bump(&self.counters.operations);
        match op(self, &session) {
            Ok(v) => {
                lock(&self.idle).push(session);
                Ok(v)
            }
            Err(OpError { error, rv }) => {
                if error.is_retryable() {
                    self.discard(session, rv);
                } else {
                    lock(&self.idle).push(session);
                }
                Err(error)
            }
        }
    }

    /// Runs `f` on a fresh read-write session (key generation and import), closed afterwards.
    /// Not retried: a half-done creation must be looked at, not repeated. Blocking.
    pub(crate) fn with_admin_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, OpError>,
    ) -> Result<T, SignerError> {
        let session = self.open_session(true)?;
        match f(&session) {
            Ok(v) => {
                let _ = session.close();
                Ok(v)
            }
            Err(OpError { error, rv }) => {
                if error.is_retryable() {
                    self.discard(session, rv);
                } else {
                    let _ = session.close();
                }
                Err(error)
            }
        }
    }

    fn discard(&self, session: Session, rv: Option<RvError>) {
        Counters::bump(&self.counters.sessions_discarded);
        // Whatever went wrong, find the slot again by identity before the next session.
        *lock(&self.slot) = None;
        close_or_forget(session, session_handle_dead(rv));
        tracing::debug!(token = %self.identity.label, ?rv, "discarded PKCS#11 session");
        self.sweep_idle();
    }

    /// After a transient failure, the idle sessions may be just as broken (device reset, all
    /// sessions closed, login lost): keep those that still answer `C_GetSessionInfo` (logging the
    /// token in again if it lost its login), forget the others without closing their handles, so
    /// retries are not spent on dead sessions.
    fn sweep_idle(&self) {
        let idle: Vec<Session> = std::mem::take(&mut *lock(&self.idle));
        let mut keep = Vec::with_capacity(idle.len());
        for s in idle {
            match s.get_session_info() {
                Ok(_) => match self.relogin_if_needed(&s) {
                    Ok(()) => keep.push(s),
                    Err(_) => {
                        Counters::bump(&self.counters.sessions_discarded);
                        close_or_forget(s, false);
                    }
                },
                Err(e) => {
                    Counters::bump(&self.counters.sessions_discarded);
                    tracing::debug!(token = %self.identity.label, error = %e, "dropping a dead idle session");
                    close_or_forget(s, true);
                }
            }
        }
        lock(&self.idle).extend(keep);
    }

    /// The token's current slot, looked up again by identity when unknown.
    fn current_slot(&self) -> Result<Slot, SignerError> {
        if let Some(s) = *lock(&self.slot) {
            return Ok(s);
        }
        let target = self.target();
        let slots = self
            .ctx
            .get_slots_with_token()
            .map_err(|e| pkcs11_error(e, &target))?;
        for slot in slots {
            let Ok(info) = self.ctx.get_token_info(slot) else {
                continue;
            };
            if TokenIdentity::of(&info) == self.identity {
                *lock(&self.slot) = Some(slot);
                return Ok(slot);
            }
        }
        Err(SignerError::new(
            ErrorKind::Unavailable,
            format!(
                "pkcs11: {target} (serial {:?}) is not present in module {}",
                self.identity.serial,
                self.module.display()
            ),
        ))
    }

    /// Opens a session (read-write for key creation), logging in again with the last good PIN
    /// when the token lost its login state.
    fn open_session(&self, rw: bool) -> Result<Session, SignerError> {
        let slot = self.current_slot()?;
        let opened = if rw {
            self.ctx.open_rw_session_no_drop(slot)
        } else {
            self.ctx.open_ro_session_no_drop(slot)
        };
        let session = opened.map_err(|e| {
            let err = pkcs11_error(e, &self.target());
            if err.is_retryable() {
                *lock(&self.slot) = None;
            }
            err
        })?;
        Counters::bump(&self.counters.sessions_opened);
        if let Err(e) = self.relogin_if_needed(&session) {
            close_or_forget(session, false);
            return Err(e);
        }
        Ok(session)
    }

    fn logged_in(&self, session: &Session) -> Result<bool, SignerError> {
        let info = session
            .get_session_info()
            .map_err(|e| pkcs11_error(e, &self.target()))?;
        Ok(matches!(
            info.session_state(),
            SessionState::RoUser | SessionState::RwUser
        ))
    }

    /// Whether the token needs a login and `session` is not logged in (the token lost its login
    /// behind our back). Errors count as "lost": the caller then treats the failure as transient.
    pub(crate) fn lost_login(&self, session: &Session) -> bool {
        self.login_required && !self.logged_in(session).unwrap_or(false)
    }

    fn relogin_if_needed(&self, session: &Session) -> Result<(), SignerError> {
        if !self.login_required || self.logged_in(session)? {
            return Ok(());
        }
        let mut state = lock(&self.login);
        let Some(pin) = state.good_pin.clone() else {
            // Not logged in yet: the opener's explicit login follows.
            return Ok(());
        };
        self.c_login(&mut state, session, Some(&pin))
    }

    /// Logs the token in with `pin` unless it already is. A PIN that failed before in this
    /// process is refused without calling the token. Blocking.
    pub(crate) fn login(
        &self,
        session: &Session,
        pin: Option<&SecretString>,
    ) -> Result<(), SignerError> {
        let mut state = lock(&self.login);
        if let Some(pin) = pin
            && let Some(rv) = state.failed.get(&pin_tag(pin))
        {
            return Err(SignerError::new(
                ErrorKind::Auth,
                format!(
                    "C_Login on {}: {} earlier in this process with this PIN; not trying it again \
                     (repeated wrong PINs lock HSMs): fix the PIN and restart",
                    self.target(),
                    crate::error::ckr_name(*rv)
                ),
            ));
        }
        if !self.login_required {
            return Ok(());
        }
        if self.logged_in(session)? {
            // Login state is shared by the process, so another PIN cannot be checked while it
            // holds (C_Login would only answer CKR_USER_ALREADY_LOGGED_IN). Refuse a PIN that
            // differs from the one that logged in rather than accept it unchecked.
            return match (&state.good_pin, pin) {
                (Some(good), Some(p)) if pin_tag(good) != pin_tag(p) => Err(SignerError::new(
                    ErrorKind::Auth,
                    format!(
                        "pkcs11: {} is already logged in with a different PIN; this PIN cannot be \
                         checked without logging out every session: use the same PIN source for \
                         every key on the token",
                        self.target()
                    ),
                )),
                (None, _) => {
                    state.good_pin = pin.cloned();
                    Ok(())
                }
                _ => Ok(()),
            };
        }
        if pin.is_none() && !self.protected_path {
            return Err(SignerError::new(
                ErrorKind::Auth,
                format!(
                    "pkcs11: {} requires a login and no PIN was given: add pin-source=file:/path \
                     to the key URI or configure a PIN environment variable",
                    self.target()
                ),
            ));
        }
        self.c_login(&mut state, session, pin)
    }

    fn c_login(
        &self,
        state: &mut LoginState,
        session: &Session,
        pin: Option<&SecretString>,
    ) -> Result<(), SignerError> {
        if let Some(pin) = pin
            && let Some(rv) = state.failed.get(&pin_tag(pin))
        {
            return Err(SignerError::new(
                ErrorKind::Auth,
                format!(
                    "C_Login on {}: {} earlier in this process with this PIN; not trying it again",
                    self.target(),
                    crate::error::ckr_name(*rv)
                ),
            ));
        }
        Counters::bump(&self.counters.login_calls);
        match session.login(UserType::User, pin) {
            Ok(()) => {
                state.good_pin = pin.cloned();
                tracing::debug!(token = %self.identity.label, "logged in");
                Ok(())
            }
            Err(e) if classify(&e) == Disposition::Success => {
                if state.good_pin.is_none() {
                    state.good_pin = pin.cloned();
                }
                Ok(())
            }
            Err(e) => {
                let rv = rv_of(&e);
                let err = pkcs11_error(e, &self.target());
                if err.kind() == ErrorKind::Auth
                    && let (Some(pin), Some(rv)) = (pin, rv)
                {
                    state.failed.insert(pin_tag(pin), rv);
                    if state
                        .good_pin
                        .as_ref()
                        .is_some_and(|g| pin_tag(g) == pin_tag(pin))
                    {
                        state.good_pin = None;
                    }
                }
                Err(err)
            }
        }
    }
}

fn close_or_forget(session: Session, handle_dead: bool) {
    if handle_dead {
        // Opened without close-on-drop: dropping it makes no PKCS#11 call.
        drop(session);
    } else if let Err(e) = session.close() {
        tracing::debug!(error = %e, "closing a discarded PKCS#11 session failed");
    }
}
