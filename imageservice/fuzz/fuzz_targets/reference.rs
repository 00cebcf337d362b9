//! Image references: parsing never panics, and a parsed reference prints
//! names that parse again to the same reference.
#![no_main]

use berth_imageservice::testing::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(reference) = text.parse::<Reference>() else {
        return;
    };
    if let Some(tag) = reference.repo_tag() {
        let again: Reference = tag.parse().expect("a repo tag parses");
        assert_eq!(again.repo_tag(), Some(tag));
    }
    if let Some(digest) = reference.digest() {
        let name = reference.repo_digest(digest);
        let again: Reference = name.parse().expect("a repo digest parses");
        assert_eq!(again.digest(), Some(digest));
    }
});
