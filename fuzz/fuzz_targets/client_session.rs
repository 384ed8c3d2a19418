//! Client state machines fed arbitrary message sequences: honest relays
//! interleaved with raw and mutated server messages (see `tessera_fuzz`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_fuzz::{Focus, Scenario, run};

fuzz_target!(|scenario: Scenario| run(&scenario, Focus::Clients));
