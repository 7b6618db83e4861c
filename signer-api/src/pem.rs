//! PEM helpers: files written by kubeadm, openssl and cloud tools may hold several blocks (for
//! example `EC PARAMETERS` before `EC PRIVATE KEY`), so decoding works block by block.

use pem_rfc7468::LineEnding;

/// One decoded PEM block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemBlock {
    /// The label, e.g. `CERTIFICATE REQUEST`.
    pub label: String,
    /// The decoded DER bytes.
    pub der: Vec<u8>,
}

/// Why PEM input was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// No `-----BEGIN` line at all.
    #[error("no PEM block found (expected a -----BEGIN ...----- line)")]
    NoBlock,
    /// A block that starts but never ends, or whose body is not valid base64.
    #[error("malformed PEM block {label:?}: {reason}")]
    Malformed {
        /// The label of the broken block.
        label: String,
        /// What went wrong.
        reason: String,
    },
}

/// Whether `bytes` look like PEM (after leading whitespace).
pub fn is_pem(bytes: &[u8]) -> bool {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    bytes[start..].starts_with(b"-----BEGIN ")
}

/// Decodes every PEM block in `input`, in order. Text outside blocks is ignored (as openssl and
/// Go's encoding/pem do).
pub fn decode_all(input: &[u8]) -> Result<Vec<PemBlock>, PemError> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const END: &[u8] = b"-----END ";
    let mut blocks = Vec::new();
    let mut rest = input;
    while let Some(start) = find(rest, BEGIN) {
        let block_start = &rest[start..];
        let label_end =
            find(&block_start[BEGIN.len()..], b"-----").ok_or_else(|| PemError::Malformed {
                label: String::new(),
                reason: "unterminated BEGIN line".into(),
            })?;
        let label = String::from_utf8_lossy(&block_start[BEGIN.len()..BEGIN.len() + label_end])
            .into_owned();
        let end_marker = [END, label.as_bytes(), b"-----"].concat();
        let end = find(block_start, &end_marker).ok_or_else(|| PemError::Malformed {
            label: label.clone(),
            reason: format!("no matching -----END {label}----- line"),
        })? + end_marker.len();
        let (decoded_label, der) =
            pem_rfc7468::decode_vec(&block_start[..end]).map_err(|e| PemError::Malformed {
                label: label.clone(),
                reason: e.to_string(),
            })?;
        blocks.push(PemBlock {
            label: decoded_label.to_owned(),
            der,
        });
        rest = &block_start[end..];
    }
    if blocks.is_empty() {
        return Err(PemError::NoBlock);
    }
    Ok(blocks)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Encodes DER as a PEM block with LF line endings and 64-column lines, as Go's encoding/pem does.
pub fn encode(label: &str, der: &[u8]) -> String {
    pem_rfc7468::encode_string(label, LineEnding::LF, der).expect(
        "invariant: PEM labels used by kubesign are valid and encoding to a String cannot fail",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_blocks_and_noise() {
        let a = encode("EC PARAMETERS", &[6, 8, 42, 134, 72, 206, 61, 3, 1, 7]);
        let b = encode("EC PRIVATE KEY", &[1, 2, 3]);
        let input = format!("junk\n{a}between\n{b}");
        let blocks = decode_all(input.as_bytes()).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[1].label, "EC PRIVATE KEY");
        assert_eq!(blocks[1].der, vec![1, 2, 3]);
    }

    #[test]
    fn broken_input() {
        assert_eq!(decode_all(b"hello"), Err(PemError::NoBlock));
        assert!(matches!(
            decode_all(b"-----BEGIN X-----\nAAAA\n"),
            Err(PemError::Malformed { .. })
        ));
        assert!(matches!(
            decode_all(b"-----BEGIN X-----\n!!!!\n-----END X-----\n"),
            Err(PemError::Malformed { .. })
        ));
        assert!(is_pem(b"  \n-----BEGIN X-----"));
        assert!(!is_pem(&[0x30, 0x82]));
    }
}
