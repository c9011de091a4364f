//! Formatting shared by the commands: sizes, errors, JSON.

use anyhow::Result;
use serde::Serialize;

pub use d4c_host::units::parse_size;

/// Bytes in a short human form.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// An error and its causes on one line.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        // Skip a cause whose text its parent already included.
        if parts.last().is_some_and(|p| p.contains(&s)) {
            continue;
        }
        parts.push(s.lines().next().unwrap_or_default().to_string());
    }
    parts.join(": ")
}

/// Prints one JSON document on stdout, digests as `sha256:<hex>`
/// (docs/CLI.md).
pub fn print_json<T: Serialize>(v: &T) -> Result<()> {
    let text = d4c_host::digest::in_oci_form(|| serde_json::to_string_pretty(v))?;
    println!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(1536), "1.50 KiB");
    }
}
