//! A PKCS#11 module for fault injection in kubesign's tests. It loads a real module (SoftHSM by
//! default), hands out a copy of that module's function list with a few entries replaced, and
//! fails chosen calls the way real HSMs fail:
//!
//! | control (file `KUBESIGN_SHIM_CONTROL`, `key=value` lines, re-read on every call) | effect |
//! |---|---|
//! | `sign_fail_rate=0.3` | that share of `C_Sign` calls fail (after completing the real operation, so the token's state stays consistent) |
//! | `sign_fail_rv=session-handle-invalid` or `device-error` | the error returned for an injected `C_Sign` failure |
//! | `removed=true` | the token is "removed": `C_Sign`/`C_SignInit` answer `CKR_DEVICE_REMOVED`, `C_OpenSession` answers `CKR_TOKEN_NOT_PRESENT`; once cleared, every session opened before the removal answers `CKR_SESSION_HANDLE_INVALID` |
//!
//! Other environment: `KUBESIGN_SHIM_MODULE` (the real module, default
//! `/usr/lib/softhsm/libsofthsm2.so`) and `KUBESIGN_SHIM_LOG` (a file that gets one line per
//! intercepted call: `C_Login rv=0`, `C_Sign injected=179`, ...), which tests read to count
//! attempts (for example: a wrong PIN is tried exactly once).
//!
//! Only `C_GetFunctionList` is exported, so callers (cryptoki) use the returned table for every
//! call.

#![allow(non_snake_case)]

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use cryptoki_sys::{
    CK_BYTE, CK_FLAGS, CK_FUNCTION_LIST, CK_MECHANISM, CK_NOTIFY, CK_OBJECT_HANDLE, CK_RV,
    CK_SESSION_HANDLE, CK_SLOT_ID, CK_ULONG, CK_USER_TYPE, CK_UTF8CHAR, CKR_DEVICE_ERROR,
    CKR_DEVICE_REMOVED, CKR_GENERAL_ERROR, CKR_OK, CKR_SESSION_HANDLE_INVALID,
    CKR_TOKEN_NOT_PRESENT,
};

/// The real module and the patched table handed to callers.
struct Shim {
    /// Keeps the real module loaded for the life of the process.
    _library: libloading::Library,
    real: CK_FUNCTION_LIST,
    patched: Box<CK_FUNCTION_LIST>,
}

// SAFETY: the function tables are plain function pointers, written once under OnceLock and
// only read afterwards; the PKCS#11 module itself is initialised with OS locking.
unsafe impl Send for Shim {}
unsafe impl Sync for Shim {}

static SHIM: OnceLock<Result<Shim, String>> = OnceLock::new();

/// Sessions opened while the token was present, tagged with the removal generation.
static SESSIONS: Mutex<Option<HashMap<CK_SESSION_HANDLE, u64>>> = Mutex::new(None);
/// Incremented each time the token goes from removed to present again.
static GENERATION: AtomicU64 = AtomicU64::new(0);
static WAS_REMOVED: Mutex<bool> = Mutex::new(false);
static RNG: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
struct Control {
    sign_fail_rate: f64,
    sign_fail_rv: CK_RV,
    removed: bool,
}

fn control() -> Control {
    let mut c = Control {
        sign_fail_rv: CKR_SESSION_HANDLE_INVALID,
        ..Control::default()
    };
    let Ok(path) = std::env::var("KUBESIGN_SHIM_CONTROL") else {
        return c;
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return c;
    };
    for line in text.lines() {
        match line.trim().split_once('=') {
            Some(("sign_fail_rate", v)) => c.sign_fail_rate = v.trim().parse().unwrap_or(0.0),
            Some(("sign_fail_rv", v)) => {
                c.sign_fail_rv = match v.trim() {
                    "device-error" => CKR_DEVICE_ERROR,
                    _ => CKR_SESSION_HANDLE_INVALID,
                }
            }
            Some(("removed", v)) => c.removed = v.trim() == "true",
            _ => {}
        }
    }
    // Re-insertion invalidates every session opened before the removal, as on real hardware.
    if let Ok(mut was) = WAS_REMOVED.lock() {
        if *was && !c.removed {
            GENERATION.fetch_add(1, Ordering::SeqCst);
        }
        *was = c.removed;
    }
    c
}

fn log(line: &str) {
    if let Ok(path) = std::env::var("KUBESIGN_SHIM_LOG")
        && let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path)
    {
        // One write per line: O_APPEND keeps concurrent callers' lines whole.
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

/// xorshift64*: good enough to pick which calls fail.
fn random_unit() -> f64 {
    let mut x = RNG.load(Ordering::Relaxed);
    if x == 0 {
        x = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15)
            | 1;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    RNG.store(x, Ordering::Relaxed);
    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

fn shim() -> Option<&'static Shim> {
    SHIM.get_or_init(load).as_ref().ok()
}

fn load() -> Result<Shim, String> {
    let path = std::env::var("KUBESIGN_SHIM_MODULE")
        .unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into());
    // SAFETY: loading a PKCS#11 module runs its initialisers; that is what a PKCS#11 caller does.
    let library = unsafe { libloading::Library::new(&path) }.map_err(|e| format!("{path}: {e}"))?;
    // SAFETY: C_GetFunctionList has this signature in every PKCS#11 module.
    let get: libloading::Symbol<'_, unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
        unsafe { library.get(b"C_GetFunctionList\0") }.map_err(|e| format!("{path}: {e}"))?;
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: `list` is a valid out-pointer; the module fills it with a pointer to its static table.
    let rv = unsafe { get(&mut list) };
    if rv != CKR_OK || list.is_null() {
        return Err(format!("{path}: C_GetFunctionList returned {rv}"));
    }
    // SAFETY: the module's table is valid for the life of the loaded library, which we keep.
    let real = unsafe { *list };
    let mut patched = Box::new(real);
    patched.C_GetFunctionList = Some(C_GetFunctionList);
    patched.C_Sign = Some(shim_sign);
    patched.C_SignInit = Some(shim_sign_init);
    patched.C_OpenSession = Some(shim_open_session);
    patched.C_Login = Some(shim_login);
    Ok(Shim {
        _library: library,
        real,
        patched,
    })
}

/// The one exported entry point: hands out the patched table.
///
/// # Safety
/// `list` must be a valid pointer to writable storage for one pointer, as PKCS#11 requires.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    let Some(s) = shim() else {
        return CKR_GENERAL_ERROR;
    };
    if list.is_null() {
        return cryptoki_sys::CKR_ARGUMENTS_BAD;
    }
    // SAFETY: checked non-null above; the table lives in a 'static OnceLock.
    unsafe { *list = std::ptr::addr_of!(*s.patched).cast_mut() };
    CKR_OK
}

fn stale(session: CK_SESSION_HANDLE) -> bool {
    let generation = GENERATION.load(Ordering::SeqCst);
    SESSIONS
        .lock()
        .ok()
        .and_then(|m| m.as_ref().and_then(|m| m.get(&session).copied()))
        .is_some_and(|g| g != generation)
}

unsafe extern "C" fn shim_open_session(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    app: *mut std::os::raw::c_void,
    notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    let Some(s) = shim() else {
        return CKR_GENERAL_ERROR;
    };
    if control().removed {
        log(&format!("C_OpenSession injected={CKR_TOKEN_NOT_PRESENT}"));
        return CKR_TOKEN_NOT_PRESENT;
    }
    let Some(real) = s.real.C_OpenSession else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: arguments are passed through unchanged from the caller to the real module.
    let rv = unsafe { real(slot, flags, app, notify, session) };
    if rv == CKR_OK && !session.is_null() {
        // SAFETY: the real module wrote the handle on success.
        let handle = unsafe { *session };
        if let Ok(mut m) = SESSIONS.lock() {
            m.get_or_insert_with(HashMap::new)
                .insert(handle, GENERATION.load(Ordering::SeqCst));
        }
    }
    rv
}

unsafe extern "C" fn shim_login(
    session: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    pin_len: CK_ULONG,
) -> CK_RV {
    let Some(s) = shim() else {
        return CKR_GENERAL_ERROR;
    };
    let Some(real) = s.real.C_Login else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: pass-through.
    let rv = unsafe { real(session, user, pin, pin_len) };
    log(&format!("C_Login rv={rv}"));
    rv
}

unsafe extern "C" fn shim_sign_init(
    session: CK_SESSION_HANDLE,
    mechanism: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    let Some(s) = shim() else {
        return CKR_GENERAL_ERROR;
    };
    let c = control();
    if c.removed {
        log(&format!("C_SignInit injected={CKR_DEVICE_REMOVED}"));
        return CKR_DEVICE_REMOVED;
    }
    if stale(session) {
        log(&format!(
            "C_SignInit injected={CKR_SESSION_HANDLE_INVALID} (session from before removal)"
        ));
        return CKR_SESSION_HANDLE_INVALID;
    }
    let Some(real) = s.real.C_SignInit else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: pass-through.
    unsafe { real(session, mechanism, key) }
}

unsafe extern "C" fn shim_sign(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    signature: *mut CK_BYTE,
    signature_len: *mut CK_ULONG,
) -> CK_RV {
    let Some(s) = shim() else {
        return CKR_GENERAL_ERROR;
    };
    let Some(real) = s.real.C_Sign else {
        return CKR_GENERAL_ERROR;
    };
    let c = control();
    if c.removed {
        log(&format!("C_Sign injected={CKR_DEVICE_REMOVED}"));
        return CKR_DEVICE_REMOVED;
    }
    // Length queries pass through untouched: only the signing call itself fails.
    if !signature.is_null() && c.sign_fail_rate > 0.0 && random_unit() < c.sign_fail_rate {
        // Finish the real operation into a scratch buffer so the token's state stays consistent,
        // then report the failure (and never hand out the signature).
        let mut scratch = vec![0u8; 1024];
        let mut len: CK_ULONG = scratch.len() as CK_ULONG;
        // SAFETY: scratch is large enough for any RSA-8192 or ECDSA signature.
        let _ = unsafe { real(session, data, data_len, scratch.as_mut_ptr(), &mut len) };
        log(&format!("C_Sign injected={}", c.sign_fail_rv));
        return c.sign_fail_rv;
    }
    // SAFETY: pass-through.
    let rv = unsafe { real(session, data, data_len, signature, signature_len) };
    if !signature.is_null() {
        log(&format!("C_Sign rv={rv}"));
    }
    rv
}
