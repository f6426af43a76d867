//! Command-line front ends: `podflow tail`.
