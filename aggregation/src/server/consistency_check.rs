//! Stage 3, ConsistencyCheck (semi-malicious model), server side: each
//! survivor is told the survivor set around it and confirms it. Only clients
//! that confirm are asked for shares. (Signatures over the set come with the
//! malicious-server work.)

use super::ThresholdMet;
use super::unmasking::Unmasking;

/// Collecting confirmations; the running sum waits.
pub(super) struct ConsistencyCheck {
    sum: Vec<u32>,
}

impl ConsistencyCheck {
    pub(super) fn new(sum: Vec<u32>) -> Self {
        ConsistencyCheck { sum }
    }

    pub(super) fn into_unmasking(self, _met: ThresholdMet, num_clients: u32) -> Unmasking {
        Unmasking::new(self.sum, num_clients)
    }
}
