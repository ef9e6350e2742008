//! corral-discovery
