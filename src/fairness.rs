//! Who goes next: strict arrival order, or a bounded bypass.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::layout::{FAIRNESS_BOUNDED, FAIRNESS_STRICT};

/// How a table orders its token requests, chosen when the table is created (and recorded in
/// it: every process that opens it follows the same rule).
///
/// * [`Strict`](Fairness::Strict) (the default): strictly first come, first served. Every
///   handover goes to the oldest request, even when its process is asleep and must be woken
///   first (a few microseconds of scheduler latency on every handover when more processes
///   wait than there are CPUs).
/// * [`Bounded(d)`](Fairness::Bounded): a running process may take the free exclusive token
///   *ahead* of the queue while the request whose turn it is cannot use it — asleep, or woken
///   and not yet run by the scheduler — whatever its age: no wake-up on the critical path, as
///   flock(2), Go's `sync.Mutex` and parking_lot let it. Once that request runs, nobody goes
///   ahead of it: it waits at most for the one bypassing holder already inside, for one
///   critical section. The queue behind it keeps arrival order. Shared requests always
///   queue. Crash safety, `previous_holder_died`, timeouts and status hold as in strict mode.
///   (`d` no longer limits anything — a bound that counted the head's wait for the scheduler
///   turned the mode into strict FIFO exactly where bypassing pays, issue 21 — and is kept in
///   the table format and shown by `status`.)
///
/// ```
/// use std::time::Duration;
/// use lockticket::Fairness;
///
/// assert_eq!(Fairness::default(), Fairness::Strict);
/// assert_eq!("bounded".parse::<Fairness>(), Ok(Fairness::bounded()));
/// assert_eq!(
///     "bounded:2.5".parse::<Fairness>(),
///     Ok(Fairness::Bounded(Duration::from_micros(2500)))
/// );
/// assert_eq!(Fairness::bounded().to_string(), "bounded:1ms");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Fairness {
    /// First come, first served, always.
    #[default]
    Strict,
    /// A running process may go ahead of a head that cannot use the token yet (asleep, or
    /// woken and not run since); once the head runs, it waits for one critical section at
    /// most. The duration (1 µs to about 71 minutes, kept to the microsecond) is recorded in
    /// the table and shown, and no longer limits anything (see above).
    Bounded(Duration),
}

impl Fairness {
    /// The default bound of [`Fairness::bounded`]: 1 ms (Go's `sync.Mutex` starvation
    /// threshold).
    pub const DEFAULT_BOUND: Duration = Duration::from_millis(1);

    /// `Bounded` with the [default bound](Self::DEFAULT_BOUND).
    ///
    /// ```
    /// assert_eq!(
    ///     lockticket::Fairness::bounded(),
    ///     lockticket::Fairness::Bounded(std::time::Duration::from_millis(1))
    /// );
    /// ```
    pub const fn bounded() -> Self {
        Fairness::Bounded(Self::DEFAULT_BOUND)
    }

    /// The header's encoding: mode and bound in microseconds. `None` for a bound out of
    /// range.
    pub(crate) fn encode(self) -> Option<(u32, u32)> {
        match self {
            Fairness::Strict => Some((FAIRNESS_STRICT, 0)),
            Fairness::Bounded(d) => {
                let us = u32::try_from(d.as_micros()).ok().filter(|&us| us > 0)?;
                Some((FAIRNESS_BOUNDED, us))
            }
        }
    }

    /// From a validated header.
    pub(crate) fn decode(fairness: u32, bound_us: u32) -> Self {
        if fairness == FAIRNESS_BOUNDED {
            Fairness::Bounded(Duration::from_micros(bound_us.into()))
        } else {
            Fairness::Strict
        }
    }

    /// The bound in nanoseconds; 0 for strict.
    pub(crate) fn bound_ns(self) -> u64 {
        match self {
            Fairness::Strict => 0,
            Fairness::Bounded(d) => u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1),
        }
    }
}

impl fmt::Display for Fairness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fairness::Strict => f.write_str("strict"),
            Fairness::Bounded(d) if d.subsec_nanos() % 1_000_000 == 0 => {
                write!(f, "bounded:{}ms", d.as_millis())
            }
            Fairness::Bounded(d) => write!(f, "bounded:{}us", d.as_micros()),
        }
    }
}

/// Why a fairness text was not understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid fairness {0:?}: give `strict`, `bounded` (a 1 ms bound) or `bounded:MS` with a \
     bound in milliseconds from 0.001 to 4294967 (for example `bounded:0.5`)"
)]
pub struct ParseFairnessError(String);

impl FromStr for Fairness {
    type Err = ParseFairnessError;

    /// `strict`, `bounded`, or `bounded:MS` (milliseconds, fractions allowed; an `ms` or `us`
    /// suffix is accepted too, as [`Display`](fmt::Display) writes it).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseFairnessError(s.to_string());
        match s {
            "strict" => return Ok(Fairness::Strict),
            "bounded" => return Ok(Fairness::bounded()),
            _ => {}
        }
        let bound = s.strip_prefix("bounded:").ok_or_else(err)?;
        let (number, scale) = if let Some(us) = bound.strip_suffix("us") {
            (us, 1e-6)
        } else {
            (bound.strip_suffix("ms").unwrap_or(bound), 1e-3)
        };
        let value: f64 = number.trim().parse().map_err(|_| err())?;
        let d = Duration::try_from_secs_f64(value * scale).map_err(|_| err())?;
        let f = Fairness::Bounded(Duration::from_micros(
            u64::try_from(d.as_micros()).map_err(|_| err())?,
        ));
        f.encode().ok_or_else(err)?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_round_trip_and_bad_ones_are_refused() {
        for f in [
            Fairness::Strict,
            Fairness::bounded(),
            Fairness::Bounded(Duration::from_micros(250)),
            Fairness::Bounded(Duration::from_secs(3)),
        ] {
            assert_eq!(f.to_string().parse::<Fairness>(), Ok(f));
            let (mode, us) = f.encode().unwrap();
            assert_eq!(Fairness::decode(mode, us), f);
        }
        for bad in [
            "",
            "fifo",
            "bounded:",
            "bounded:0",
            "bounded:-1",
            "bounded:x",
            "bounded:1e12",
        ] {
            assert!(bad.parse::<Fairness>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(Fairness::Bounded(Duration::ZERO).encode(), None);
    }
}
