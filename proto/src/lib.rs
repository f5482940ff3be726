//! The wire: generated gRPC code and what surrounds it.
//!
//! - [`config`]: loading the daemons' TOML config files with precise errors.
//! - [`pb`]: code generated from `proto/tandem/v1/*.proto` (build.rs, protox; no `protoc`).
//! - [`model`]: domain types and their `TryFrom` conversions; prost types stop at the gRPC layer.
//! - [`order`]: the typed orders the controller sends to agents (one `oneof` per kind of work).
//! - [`verdict`], [`window`]: a set's verdict, and a maintenance window with its plan, as the
//!   controller keeps them and tandemctl reads them.
//! - [`request`]: the controller calls whose fields mean more than a name, typed.
//! - [`tls`], [`identity`]: mutual TLS from PEM files, and who is calling (SAN URIs).
//! - [`telemetry`], [`propagation`]: tracing set-up shared by all three binaries, and
//!   W3C trace context carried in gRPC metadata.
//! - [`metrics`]: the Prometheus endpoint of the controller and the agent.
//! - [`process`]: start-up every `main` shares (crypto provider, runtime) and the stop signals.
//! - [`leader`]: several controllers, one leader: the "not the leader" answer, the
//!   address list clients are given, and a channel that goes to the leader.
//! - [`wal`]: what a WAL archive holds per timeline, and whether a roll-forward reads through it.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tandem.v1");
}

pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod order;
pub mod process;
pub mod propagation;
pub mod request;
pub mod telemetry;
pub mod tls;
pub mod verdict;
pub mod wal;
pub mod window;
