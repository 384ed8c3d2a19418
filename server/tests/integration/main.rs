//! The server library's integration tests: settings, the state key and the
//! privacy terms across restarts. One test binary rather than one per file,
//! since each links the whole server (about 60 MB in the dev profile).

mod settings_merge;
mod state_key;
mod terms_attacks;
