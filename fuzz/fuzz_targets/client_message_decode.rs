//! Any bytes given to the client-message decoder: no panic, and anything it
//! accepts is canonical (re-encodes to the same bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_aggregation::ClientMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = ClientMessage::decode(data) {
        assert_eq!(message.encode(), data, "accepted a non-canonical encoding");
    }
});
