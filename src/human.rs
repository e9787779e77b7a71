//! Sizes and ages for people, as `list`, `drill` and the daemon's health
//! messages print them. Outside `ops/` so that commands share them without
//! depending on one another.

/// Bytes for people: `512 B`, `3.4 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Seconds for people: `42s`, `5m 3s`, `7h 12m`, `3d 4h`.
pub fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_size(5), "5 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn ages_for_people() {
        assert_eq!(human_age(-3), "0s");
        assert_eq!(human_age(303), "5m 3s");
        assert_eq!(human_age(7 * 3600 + 12 * 60), "7h 12m");
        assert_eq!(human_age(3 * 86_400 + 4 * 3600), "3d 4h");
    }
}
