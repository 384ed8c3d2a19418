//! Any bytes given to the server-message decoder: no panic, and anything it
//! accepts is canonical (re-encodes to the same bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_aggregation::ServerMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = ServerMessage::decode(data) {
        assert_eq!(message.encode(), data, "accepted a non-canonical encoding");
    }
});
