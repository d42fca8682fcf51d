//! The open loop's send schedule.
//!
//! At a target rate `R` over `C` connections, the run's `k`-th request is
//! due at `k / R` seconds after the start and belongs to connection
//! `k mod C`; so connection `c` sends its `j`-th request at
//! `(j * C + c) / R`. Latency is measured from that intended time, not from
//! when the request actually left: if the server stalls and the client falls
//! behind, the requests that should have been sent during the stall are
//! charged the stall (this is how an open loop avoids coordinated omission,
//! which a closed loop suffers by design).

use std::time::Duration;

/// One connection's share of an open-loop schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Requests per second over all connections. Invariant: positive.
    rate: f64,
    connections: u64,
    connection: u64,
}

impl Schedule {
    /// Connection `connection` of `connections` at `rate` requests/s in all.
    pub fn new(rate: f64, connections: usize, connection: usize) -> Schedule {
        assert!(rate > 0.0 && rate.is_finite(), "the rate must be positive, got {rate}");
        assert!(connection < connections, "connection {connection} of {connections}");
        Schedule { rate, connections: connections as u64, connection: connection as u64 }
    }

    /// When this connection's request `j` (0-based) is due, after the start.
    pub fn due(&self, j: u64) -> Duration {
        let k = j * self.connections + self.connection;
        Duration::from_secs_f64(k as f64 / self.rate)
    }

    /// How many requests this connection sends in the first `window` (those
    /// due strictly before its end).
    pub fn count_before(&self, window: Duration) -> u64 {
        // Requests k = j*C + c with k < R*w: j < (R*w - c) / C.
        let slots = window.as_secs_f64() * self.rate;
        let first = self.connection as f64;
        if slots <= first {
            return 0;
        }
        let mut count = ((slots - first) / self.connections as f64).ceil() as u64;
        // Guard the float rounding at the boundary with the exact predicate.
        while count > 0 && self.due(count - 1) >= window {
            count -= 1;
        }
        while self.due(count) < window {
            count += 1;
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_interleave_into_one_even_schedule() {
        // 1000/s over 4 connections: one request every millisecond overall.
        let schedules: Vec<Schedule> = (0..4).map(|c| Schedule::new(1_000.0, 4, c)).collect();
        let mut all: Vec<Duration> =
            schedules.iter().flat_map(|schedule| (0..250).map(move |j| schedule.due(j))).collect();
        all.sort();
        for (k, due) in all.iter().enumerate() {
            let expected = Duration::from_millis(k as u64);
            let error = due.abs_diff(expected);
            assert!(error < Duration::from_nanos(10), "request {k} due at {due:?}, expected {expected:?}");
        }
        assert_eq!(schedules[1].due(0), Duration::from_millis(1));
        assert_eq!(schedules[1].due(1), Duration::from_millis(5));
    }

    #[test]
    fn counts_in_a_window_add_up_to_rate_times_duration() {
        for (rate, connections, millis) in
            [(1_000.0, 4, 1_000u64), (333.0, 7, 2_500), (50_000.0, 64, 3_000), (1.0, 3, 10)]
        {
            let window = Duration::from_millis(millis);
            let total: u64 = (0..connections).map(|c| Schedule::new(rate, connections, c).count_before(window)).sum();
            let expected = (rate * window.as_secs_f64()).ceil() as u64;
            assert_eq!(total, expected, "rate {rate} over {connections} connections for {window:?}");
            for c in 0..connections {
                let schedule = Schedule::new(rate, connections, c);
                let count = schedule.count_before(window);
                assert!(count == 0 || schedule.due(count - 1) < window);
                assert!(schedule.due(count) >= window);
            }
        }
    }

    #[test]
    #[should_panic(expected = "the rate must be positive")]
    fn zero_rate_is_a_bug() {
        Schedule::new(0.0, 1, 0);
    }
}
