//! Giving freed heap memory back to the system.
//!
//! A pull allocates decompression and hashing buffers on several threads
//! at once; glibc keeps what they free in per-thread arenas, so without a
//! trim berthd's resident memory would stay near the pull's peak for the
//! rest of its life.

/// malloc arenas berthd uses at most. glibc gives threads up to eight
/// arenas per core; berthd's threads (tokio workers, the blocking pool of
/// pulls and store writes) then leave freed memory scattered over many
/// arenas that are never trimmed together. Two keep contention low.
const ARENA_MAX: i32 = 2;

/// Caps the number of malloc arenas; call before any thread starts.
pub fn limit_arenas() {
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets a glibc malloc parameter; it has no
    // preconditions and is called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}

/// Returns the free memory of every malloc arena to the system.
pub fn release_free_heap() {
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks;
    // it has no preconditions and touches no memory the caller owns.
    unsafe {
        libc::malloc_trim(0);
    }
}
