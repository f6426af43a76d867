//! `podflow agent`: the run loop.
