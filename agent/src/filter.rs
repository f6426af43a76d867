//! Flow filters (`podflow.v1.FlowFilter`), compiled once and matched against every event.
