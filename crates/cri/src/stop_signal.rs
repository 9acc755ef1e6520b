//! Container stop signals (KEP-4960): `ContainerConfig.stop_signal` names a
//! signal that StopContainer sends instead of the image's STOPSIGNAL, and
//! ContainerStatus reports the one in force. The CRI's `Signal` enum
//! numbers are its own: signals are matched by name, the real-time ones as
//! Go's runtimes count them (RTMIN 34, RTMAX 64).

use crate::error::{invalid, Result};
use berth_cri_api::v1::{ContainerConfig, Signal};

const RTMIN: i32 = 34;
const RTMAX: i32 = 64;

/// The signal number of a CRI `Signal`; None for RUNTIME_DEFAULT.
pub fn number(s: Signal) -> Option<i32> {
    let name = s.as_str_name();
    if s == Signal::RuntimeDefault {
        return None;
    }
    if let Some(k) = name.strip_prefix("SIGRTMINPLUS") {
        return k.parse::<i32>().ok().map(|k| RTMIN + k);
    }
    if let Some(k) = name.strip_prefix("SIGRTMAXMINUS") {
        return k.parse::<i32>().ok().map(|k| RTMAX - k);
    }
    match name {
        "SIGRTMIN" => Some(RTMIN),
        "SIGRTMAX" => Some(RTMAX),
        _ => berth_oci::container::parse_signal(name).ok(),
    }
}

/// The CRI `Signal` of a signal number (the first name of aliases).
pub fn of_number(n: i32) -> Signal {
    (1..=65)
        .filter_map(|v| Signal::try_from(v).ok())
        .find(|&s| number(s) == Some(n))
        .unwrap_or(Signal::RuntimeDefault)
}

/// The stop signal a container's config asks for, if any; an unknown value
/// is refused naming the field.
pub fn from_config(cfg: &ContainerConfig) -> Result<Option<i32>> {
    let s = Signal::try_from(cfg.stop_signal).map_err(|_| {
        invalid(
            "config.stop_signal",
            format!("{} is not a signal", cfg.stop_signal),
        )
    })?;
    Ok(number(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_has_its_number_and_back() {
        assert_eq!(number(Signal::RuntimeDefault), None);
        assert_eq!(number(Signal::Sigterm), Some(libc::SIGTERM));
        assert_eq!(number(Signal::Sigkill), Some(libc::SIGKILL));
        assert_eq!(number(Signal::Sigcld), Some(libc::SIGCHLD));
        assert_eq!(number(Signal::Sigpoll), Some(libc::SIGIO));
        assert_eq!(number(Signal::Sigrtmin), Some(34));
        assert_eq!(number(Signal::Sigrtminplus15), Some(49));
        assert_eq!(number(Signal::Sigrtmaxminus1), Some(63));
        assert_eq!(number(Signal::Sigrtmax), Some(64));
        for v in 1..=65 {
            let s = Signal::try_from(v).unwrap();
            assert!(number(s).is_some(), "{s:?}");
        }
        assert_eq!(of_number(libc::SIGTERM), Signal::Sigterm);
        assert_eq!(of_number(libc::SIGUSR1), Signal::Sigusr1);
        assert_eq!(of_number(40), Signal::Sigrtminplus6);
    }

    #[test]
    fn unknown_values_are_refused_by_field() {
        let cfg = ContainerConfig {
            stop_signal: 99,
            ..Default::default()
        };
        let e = from_config(&cfg).unwrap_err().to_string();
        assert!(e.contains("config.stop_signal"), "{e}");
    }
}
