//! podflow's integration tests, as one binary with a module per feature (one link instead of one
//! per file; the helpers in one place, [`support`]). Privileged tests (network namespaces, BPF)
//! run as root: `cargo xtask test`; with `PODFLOW_SKIP_PRIVILEGED=1` they are skipped when not
//! root. Run one feature with `cargo test -p podflow --test it -- e2e_capture::`.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking, with a message"
)]

mod support;

mod advise_cli;
mod api_grpc;
mod capture_attach;
mod capture_drain;
mod capture_l3;
mod capture_netlink;
mod clickhouse_auth;
mod clickhouse_faults;
mod clickhouse_server;
mod clickhouse_store;
mod collector_files;
mod collector_refusals;
mod conntrack_events;
mod container_image;
mod container_manifest;
mod deploy_manifests;
mod e2e_advise;
mod e2e_capture;
mod e2e_clickhouse;
mod e2e_collector;
mod e2e_dns;
mod e2e_drops;
mod e2e_forged;
mod e2e_handshake;
mod e2e_least_privilege;
mod e2e_metadata;
mod e2e_ownership;
mod e2e_restart;
mod e2e_service;
mod e2e_wireguard;
mod export_collector;
mod export_outage;
mod export_recovery;
mod export_tls;
mod metadata_churn;
mod metadata_file;
mod metadata_kube;
mod metadata_memory;
mod metadata_scale;
mod metrics_prometheus;
mod privileges_setpriv;
mod prog_test_run;
