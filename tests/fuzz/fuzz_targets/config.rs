//! Any bytes as a configuration file: the loader returns a spec or
//! diagnostics, never panics, and every diagnostic has a position.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match netloom::core::spec::load_bytes("f.toml", data) {
        Ok(spec) => {
            // A valid file must resolve on a fresh host: validation runs
            // the allocator's checks, so IPAM may not fail here.
            let host = netloom::core::model::HostInfo::default();
            let prev = netloom::core::ipam::Allocations::default();
            if let Err(e) = netloom::core::model::resolve(&spec, &prev, &host) {
                panic!("a valid file failed to resolve: {e}");
            }
        }
        Err(d) => {
            assert!(!d.lines.is_empty(), "an invalid file without an error");
            for l in &d.lines {
                assert!(l.starts_with("f.toml:"), "diagnostic without a position: {l}");
            }
        }
    }
});
