//! End-to-end tests of Tessera: a real server and real clients over
//! loopback gRPC. One test binary rather than one per file: each binary
//! links the whole stack (about 120 MB in the dev profile), so two dozen of
//! them cost gigabytes of disk and most of CI's link time. Run one file's
//! tests with `cargo test -p tessera-tests --test end_to_end load::`.

mod bad_input;
mod blame;
mod cohort;
mod connections;
mod dp;
mod dp_ftrl;
mod extras;
mod ftrl_recovery;
mod identity_join;
mod load;
mod malicious;
mod metrics_scrape;
mod redteam_1b25ae4;
mod redteam_connection_slots;
mod redteam_dp;
mod redteam_f4d296b;
mod redteam_is15;
mod redteam_is15_fixed;
mod redteam_join;
mod redteam_session_review;
mod rounds;
mod sdk_api;
mod store_faults;
mod strategies;
