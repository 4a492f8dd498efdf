//! Engine health-check polling and the live samples.
