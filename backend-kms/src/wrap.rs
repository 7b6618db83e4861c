//! Wrapping key material for KMS `ImportKeyMaterial` with `RSA_AES_KEY_WRAP_SHA_256`.
//!
//! The scheme AWS specifies for asymmetric key material: generate a random 256-bit AES key,
//! wrap the PKCS#8 DER with it using AES Key Wrap with Padding (RFC 5649), encrypt the AES key
//! with RSAES-OAEP (SHA-256, MGF1 with SHA-256) under the wrapping public key from
//! `GetParametersForImport`, and send `OAEP(aes_key) || KWP(material)`. The AES key lives only in
//! a zeroizing buffer; the plaintext material is never copied.

use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrapPadded};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
use zeroize::Zeroizing;

/// Why wrapping failed. Never carries secret bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WrapError {
    /// The wrapping public key from KMS is not a usable RSA key.
    #[error("the wrapping public key from GetParametersForImport is not an RSA key: {0}")]
    WrappingKey(String),
    /// A cryptographic primitive failed.
    #[error("{0} failed")]
    Crypto(&'static str),
}

/// Wraps `material` (PKCS#8 DER) for `ImportKeyMaterial` under `wrapping_spki_der`, the DER
/// SubjectPublicKeyInfo KMS returned, as `RSA_AES_KEY_WRAP_SHA_256` prescribes.
pub fn wrap_key_material(wrapping_spki_der: &[u8], material: &[u8]) -> Result<Vec<u8>, WrapError> {
    let rng = SystemRandom::new();
    let mut aes_key = Zeroizing::new([0u8; 32]);
    rng.fill(aes_key.as_mut())
        .map_err(|_| WrapError::Crypto("generating the AES key"))?;
    wrap_with_aes_key(wrapping_spki_der, material, &aes_key)
}

fn wrap_with_aes_key(
    wrapping_spki_der: &[u8],
    material: &[u8],
    aes_key: &[u8; 32],
) -> Result<Vec<u8>, WrapError> {
    let public = PublicEncryptingKey::from_der(wrapping_spki_der)
        .map_err(|e| WrapError::WrappingKey(e.to_string()))?;
    let oaep =
        OaepPublicEncryptingKey::new(public).map_err(|_| WrapError::WrappingKey("OAEP".into()))?;

    let mut out = vec![0u8; oaep.ciphertext_size()];
    let n = oaep
        .encrypt(&OAEP_SHA256_MGF1SHA256, aes_key, &mut out, None)
        .map_err(|_| WrapError::Crypto("RSA-OAEP encryption of the AES key"))?
        .len();
    out.truncate(n);

    let kek = AesKek::new(&AES_256, aes_key).map_err(|_| WrapError::Crypto("AES key setup"))?;
    // RFC 5649 output: the plaintext padded to a multiple of 8, plus the 8-byte integrity block.
    let mut wrapped = vec![0u8; material.len().div_ceil(8) * 8 + 8];
    let m = kek
        .wrap_with_padding(material, &mut wrapped)
        .map_err(|_| WrapError::Crypto("AES key wrap with padding"))?
        .len();
    wrapped.truncate(m);
    out.extend_from_slice(&wrapped);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey};

    /// Unwraps as KMS does, to show the construction round-trips.
    fn unwrap(private: &PrivateDecryptingKey, blob: &[u8]) -> Vec<u8> {
        let k = private.key_size_bytes();
        let oaep = OaepPrivateDecryptingKey::new(private.clone()).unwrap();
        let mut aes = vec![0u8; oaep.min_output_size()];
        let aes = oaep
            .decrypt(&OAEP_SHA256_MGF1SHA256, &blob[..k], &mut aes, None)
            .unwrap()
            .to_vec();
        assert_eq!(aes.len(), 32);
        let kek = AesKek::new(&AES_256, &aes).unwrap();
        let mut out = vec![0u8; blob.len() - k];
        kek.unwrap_with_padding(&blob[k..], &mut out)
            .unwrap()
            .to_vec()
    }

    #[test]
    fn round_trips_with_2048_and_4096_bit_wrapping_keys() {
        for size in [KeySize::Rsa2048, KeySize::Rsa4096] {
            let private = PrivateDecryptingKey::generate(size).unwrap();
            let spki = private.public_key().as_der().unwrap();
            for len in [1usize, 7, 8, 138, 1217, 2375] {
                let material: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                let blob = wrap_key_material(spki.as_ref(), &material).unwrap();
                assert_eq!(
                    blob.len(),
                    private.key_size_bytes() + len.div_ceil(8) * 8 + 8
                );
                assert_eq!(unwrap(&private, &blob), material);
            }
        }
    }

    #[test]
    fn kwp_half_is_deterministic_and_oaep_half_is_not() {
        let private = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let spki = private.public_key().as_der().unwrap();
        let key = [7u8; 32];
        let a = wrap_with_aes_key(spki.as_ref(), b"material", &key).unwrap();
        let b = wrap_with_aes_key(spki.as_ref(), b"material", &key).unwrap();
        assert_eq!(a[256..], b[256..]);
        assert_ne!(a[..256], b[..256], "OAEP is randomized");
        assert!(!a.windows(8).any(|w| w == b"material"));
    }

    #[test]
    fn rejects_a_non_rsa_wrapping_key() {
        assert!(matches!(
            wrap_key_material(b"\x30\x03\x02\x01\x00", b"x"),
            Err(WrapError::WrappingKey(_))
        ));
    }
}
