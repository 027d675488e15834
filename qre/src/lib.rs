//! `qre`: Pronto's query and response engine (DESIGN.md §2): typed queries over a
//! running router's state, the JSON management API's routing, bounded latency
//! histograms and Prometheus text exposition.
//!
//! The crate is sans-IO and knows no operating system: a daemon implements
//! [`RouterState`] over its engine, control side and execution environments,
//! moves HTTP requests' bytes into [`api::handle`] and the [`api::Response`] back
//! out. Everything here is testable with a fake state (see the tests of
//! [`api`]).
//!
//! | endpoint | answer |
//! | --- | --- |
//! | `GET /v1/summary` | [`RouterSummary`] |
//! | `GET /v1/flows?vip=&client=&next_hop=&limit=` | [`FlowsResponse`] |
//! | `GET /v1/table?subnet=` | [`TableResponse`] |
//! | `GET /v1/peers` | [`PeersResponse`] |
//! | `GET /v1/modules` | [`ModulesResponse`] |
//! | `GET /v1/queues` | [`QueuesResponse`] |
//! | `GET /v1/counters` | [`CountersResponse`] |
//! | `GET /metrics` | Prometheus text format 0.0.4 |
//! | `POST /v1/modules/load` (body: signed module) | [`ModuleOpReport`] |
//! | `POST /v1/modules/swap` (body: signed module) | [`ModuleOpReport`] |
//! | `POST /v1/modules/{name}/rollback` | [`ModuleOpReport`] |
//! | `DELETE /v1/modules/{name}` | [`ModuleOpReport`] |
//!
//! Every error is an [`ApiError`] body: `{"error": code, "message", "hint"}`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod metrics;
pub mod query;
pub mod response;
pub mod state;

pub use api::{ApiError, Method, Request, Response};
pub use metrics::{Histogram, HistogramSnapshot, MetricFamily, MetricKind, MetricValue, Sample};
pub use query::{
    AddrMatch, BindingQuery, EnvQuery, FlowCollector, FlowQuery, FlowSample, QueryError, TableQuery,
};
pub use response::*;
pub use state::{ErrorKind, ModuleOp, RouterState, StateError};
