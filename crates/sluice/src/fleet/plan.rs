//! What a fleet member wants its pool limit to be: pure decisions, tested beside them.

/// Slots kept above the connections in use when an instance gives slots back to another
/// that has waiters, so its next borrower does not wait for a heartbeat.
pub const HEADROOM: usize = 1;

/// The static share: what each instance may hold without Redis (at least 1).
pub fn share(budget: usize, expected_instances: usize) -> usize {
    (budget / expected_instances.max(1)).max(1)
}

/// This instance's use of its pool at one heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Connections lent (or being opened).
    pub borrowed: usize,
    /// Borrowers waiting in line.
    pub waiters: usize,
}

/// The limit this instance would like, holding `held` slots now: more when its own
/// borrowers wait; down toward its use plus [`HEADROOM`] when others' borrowers wait and
/// its own do not; else what it holds.
pub fn desired(held: usize, usage: Usage, others_waiting: usize) -> usize {
    if usage.waiters > 0 {
        held + usage.waiters
    } else if others_waiting > 0 {
        held.min(usage.borrowed + HEADROOM)
    } else {
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_divides_the_budget_and_never_reaches_zero() {
        assert_eq!(share(12, 3), 4);
        assert_eq!(share(10, 3), 3);
        assert_eq!(share(2, 3), 1);
        assert_eq!(share(5, 0), 5);
    }

    #[test]
    fn waiters_ask_for_more_and_demand_elsewhere_gives_idle_slots_back() {
        let idle = Usage {
            borrowed: 1,
            waiters: 0,
        };
        let busy = Usage {
            borrowed: 4,
            waiters: 3,
        };
        assert_eq!(desired(4, busy, 0), 7, "own waiters ask for more");
        assert_eq!(desired(4, busy, 5), 7, "own waiters come first");
        assert_eq!(desired(4, idle, 2), 2, "use plus headroom");
        assert_eq!(desired(4, idle, 0), 4, "no demand: keep");
        let full = Usage {
            borrowed: 4,
            waiters: 0,
        };
        assert_eq!(desired(4, full, 2), 4, "never above what it holds");
    }
}
