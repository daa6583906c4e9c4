//! The integration tests: the real service on port 0 over real TLS, driven by a
//! real HTTPS client, and the real binary driven as a process.

mod admin;
mod aibot;
mod aibot_ws;
mod attacks;
mod bot;
mod callback;
mod channels;
mod cli;
mod connections;
mod crash;
mod deploy;
mod egress;
mod fake_ws;
mod fakes;
mod helpers;
mod hostile;
mod ingest;
mod kf;
mod layout;
mod media;
mod migrate;
mod monitoring;
mod operator_files;
mod outbound;
mod postgres;
mod properties;
mod quota;
mod replicas;
mod secrets;
mod server;
mod smtp;
mod stall;
mod store_conformance;
mod surface;
mod upgrade;
