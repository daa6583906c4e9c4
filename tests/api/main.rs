//! The integration tests: the real service on port 0 over real TLS, driven by a
//! real HTTPS client, and the real binary driven as a process.

mod callback;
mod cli;
mod fakes;
mod helpers;
mod ingest;
mod kf;
mod monitoring;
mod server;
mod smtp;
