//! Giving freed heap memory back to the system.
//!
//! A pull allocates decompression and hashing buffers on several threads
//! at once; glibc keeps what they free in per-thread arenas, so without a
//! trim berthd's resident memory would stay near the pull's peak for the
//! rest of its life.

/// Returns the free memory of every malloc arena to the system.
pub fn release_free_heap() {
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks;
    // it has no preconditions and touches no memory the caller owns.
    unsafe {
        libc::malloc_trim(0);
    }
}
