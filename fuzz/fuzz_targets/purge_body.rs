//! Purge bodies (admin API, peer events) parse or fail cleanly; validation never panics.
#![no_main]

use corral_core::invalidation::{InvalidationEvent, SelectorLimits, Selectors};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = serde_json::from_slice::<Selectors>(data) {
        let _ = s.validate(&SelectorLimits::default());
    }
    let _ = serde_json::from_slice::<InvalidationEvent>(data);
});
