//! Flows in user space: turn drained kernel entries into flow records, counting each packet once.
