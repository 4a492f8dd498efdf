//! lb-bench
