//! corral-http
