//! Ids that look like the providers' own, and the `created` clock.

/// A random id: `prefix` + `len` characters of `[A-Za-z0-9]`.
pub(crate) fn random_id(prefix: &str, len: usize) -> String {
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    id.extend(std::iter::repeat_with(fastrand::alphanumeric).take(len));
    id
}

/// A random id: `prefix` + `len` lowercase hex digits.
pub(crate) fn random_hex(prefix: &str, len: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    id.extend(std::iter::repeat_with(|| char::from(HEX[fastrand::usize(..16)])).take(len));
    id
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_real() {
        let id = random_id("chatcmpl-", 29);
        assert!(id.starts_with("chatcmpl-") && id.len() == 38);
        assert!(id[9..].chars().all(|c| c.is_ascii_alphanumeric()));
        let hex = random_hex("req_", 32);
        assert!(hex[4..].chars().all(|c| c.is_ascii_hexdigit()));
    }
}
