//! The gRPC consumer API (`podflow.v1.FlowService`): a bounded ring of recent events, a broadcast
//! to followers, served on a unix socket (mode 0600) and optionally on TCP.
