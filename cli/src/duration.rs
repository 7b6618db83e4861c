//! Go-style durations as kubeadm writes them (`8760h`, `87600h0m0s`, `30m`) and Kubernetes'
//! short human durations (`364d`, `9y`) for expiry columns.

use std::time::Duration;

/// Parses a Go duration string: one or more `<number><unit>` with units `h`, `m`, `s`, `ms`.
pub fn parse(s: &str) -> Result<Duration, String> {
    let err =
        || format!("{s:?} is not a duration: expected a Go duration such as 8760h, 720h30m or 90s");
    let s = s.trim();
    if s.is_empty() {
        return Err(err());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1000, 1)
        } else {
            return Err(err());
        };
        rest = &rest[len..];
        total = n
            .checked_mul(unit_ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
    }
    Ok(Duration::from_millis(total))
}

/// Kubernetes' ShortHumanDuration: `45s`, `12m`, `5h`, `364d`, `9y`; `<invalid>` when negative.
pub fn short_human(seconds: i64) -> String {
    if seconds < -1 {
        "<invalid>".into()
    } else if seconds < 0 {
        "0s".into()
    } else if seconds < 60 {
        format!("{seconds}s")
    } else if seconds < 3600 {
        format!("{}m", seconds / 60)
    } else if seconds < 86_400 {
        format!("{}h", seconds / 3600)
    } else if seconds < 86_400 * 365 {
        format!("{}d", seconds / 86_400)
    } else {
        format!("{}y", seconds / 86_400 / 365)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse("8760h"), Ok(Duration::from_secs(8760 * 3600)));
        assert_eq!(parse("87600h0m0s"), Ok(Duration::from_secs(87600 * 3600)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1500ms"), Ok(Duration::from_millis(1500)));
        for bad in ["", "h", "10", "10d", "-1h", "1.5h", "99999999999999999999h"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn short_human_like_kubernetes() {
        assert_eq!(short_human(-5), "<invalid>");
        assert_eq!(short_human(30), "30s");
        assert_eq!(short_human(364 * 86_400 + 5), "364d");
        assert_eq!(short_human(10 * 365 * 86_400), "10y");
    }
}
