//! The server state machine fed arbitrary sequences from many senders: raw
//! bytes, replays and impersonation among honest traffic (see
//! `tessera_fuzz`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_fuzz::{Focus, Scenario, run};

fuzz_target!(|scenario: Scenario| run(&scenario, Focus::Server));
