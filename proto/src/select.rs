//! Source selection: the order in which an endpoint tries its candidate sources, as a pure
//! function of what probing them found out.
//!
//! The endpoint probes every candidate (endpoint/src/discovery.rs: QUIC handshake, then one
//! small request whose answer time stands for how loaded the source is) and ranks them with
//! [`rank`]; the simulator ranks its virtual reflectors with the same function, so both pick and
//! fail over the same way. The order: answering sources first; among them reflectors before the
//! seed; then the endpoint's own site, its own subnet, the least loaded (answer times within
//! [`LOAD_BUCKET`] count as equal, noise on a LAN), and finally the order the user gave.

use std::time::Duration;

/// Probe answer times within this of each other count as equally loaded.
pub const LOAD_BUCKET: Duration = Duration::from_millis(5);

/// What probing one candidate source found out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceCandidate<'a> {
    /// Position in the list the user gave (ties are broken by it).
    pub position: usize,
    /// None: the source did not answer the probe.
    pub answered: Option<ProbeAnswer<'a>>,
}

/// A source's answer to the probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeAnswer<'a> {
    /// The source is the seed (the datacenter origin), not a reflector.
    pub is_seed: bool,
    /// The site named in the source's certificate.
    pub site: Option<&'a str>,
    /// The source is on the endpoint's own subnet.
    pub same_subnet: bool,
    /// Time of the probe request after the handshake (stands for load).
    pub latency: Duration,
}

/// Sort key of one candidate (smaller is better); see the module docs for the order.
pub fn rank_key(
    c: &SourceCandidate<'_>,
    my_site: Option<&str>,
) -> (bool, bool, bool, bool, u128, usize) {
    match &c.answered {
        None => (true, true, true, true, u128::MAX, c.position),
        Some(a) => (
            false,
            a.is_seed,
            !(my_site.is_some() && a.site == my_site),
            !a.same_subnet,
            a.latency.as_nanos() / LOAD_BUCKET.as_nanos(),
            c.position,
        ),
    }
}

/// Indices of `candidates`, best first. The sort is stable and the key ends with the given
/// position, so the result is deterministic.
pub fn rank(candidates: &[SourceCandidate<'_>], my_site: Option<&str>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| rank_key(&candidates[i], my_site));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(
        position: usize,
        is_seed: bool,
        site: Option<&str>,
        same_subnet: bool,
        ms: u64,
    ) -> SourceCandidate<'_> {
        SourceCandidate {
            position,
            answered: Some(ProbeAnswer {
                is_seed,
                site,
                same_subnet,
                latency: Duration::from_millis(ms),
            }),
        }
    }

    #[test]
    fn answering_then_reflectors_then_site_subnet_load_then_given_order() {
        let v = [
            answered(0, true, None, true, 1),
            SourceCandidate { position: 1, answered: None },
            answered(2, false, Some("paris"), true, 1),
            answered(3, false, Some("lyon"), false, 1),
            answered(4, false, Some("lyon"), true, 40),
            answered(5, false, Some("lyon"), true, 2),
        ];
        let order: Vec<usize> = rank(&v, Some("lyon")).into_iter().map(|i| v[i].position).collect();
        assert_eq!(order, vec![5, 4, 3, 2, 0, 1]);
    }

    #[test]
    fn a_seed_that_answers_beats_a_reflector_that_does_not() {
        let v =
            [SourceCandidate { position: 0, answered: None }, answered(1, true, None, false, 900)];
        assert_eq!(rank(&v, Some("lyon")), vec![1, 0]);
    }

    #[test]
    fn answer_times_within_a_bucket_tie_and_the_given_order_decides() {
        // 6 ms and 9 ms fall in the same 5 ms bucket: position decides; 11 ms is slower.
        let v = [
            answered(0, false, Some("lyon"), true, 11),
            answered(1, false, Some("lyon"), true, 9),
            answered(2, false, Some("lyon"), true, 6),
        ];
        assert_eq!(rank(&v, Some("lyon")), vec![1, 2, 0]);
    }

    #[test]
    fn without_a_site_of_its_own_no_source_counts_as_same_site() {
        let v = [answered(0, false, Some("lyon"), false, 1), answered(1, false, None, true, 1)];
        // No own site: the subnet decides.
        assert_eq!(rank(&v, None), vec![1, 0]);
        // Own site lyon: the lyon reflector first although it is on another subnet.
        assert_eq!(rank(&v, Some("lyon")), vec![0, 1]);
    }

    #[test]
    fn unanswered_keep_the_given_order_at_the_end() {
        let v = [
            SourceCandidate { position: 0, answered: None },
            answered(1, false, None, false, 1),
            SourceCandidate { position: 2, answered: None },
        ];
        assert_eq!(rank(&v, None), vec![1, 0, 2]);
    }
}
