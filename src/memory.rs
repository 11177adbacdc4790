//! Giving memory back while idle: free heap pages, and the code pages start-up mapped.
//!
//! Most of an idle proxy's resident memory is code, not data (measured in
//! `docs/performance.md`, "Memory (issue 16)"): the kernel maps a program's code in 64 KiB
//! windows around each page it runs (fault-around), so the start-up code (command line,
//! TOML, the log filter's regular expressions, TLS setup, the first login) leaves most of the
//! binary mapped although a request runs a seventh of it. Unmapping the read-only segments
//! hands those pages back; the page cache keeps them, so the ones a request needs come back
//! as minor faults (a few microseconds, once), never as disk reads. That they are few is the
//! release build's layout (`build.rs`): the request path's functions sit together.
//!
//! Unmapping lowers RSS, not what a container is charged: the pages stay in the page cache,
//! charged to the cgroup that read them, and `container_memory_working_set_bytes` does not
//! drop (measured in `docs/performance.md`, "RSS, page cache and a pod's working set"). The
//! heap trim is what a pod saves; unmapped code only goes first when memory runs short.

/// Give free heap pages back to the system and unmap the code pages mapped so far. Cheap
/// enough to call whenever the proxy goes idle; never call it per request.
pub(crate) fn release_unused() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
    release_code_pages();
}

/// Unmap the code pages mapped so far once `start_up` has finished: start-up ends with the
/// first logins' answers, and load may follow right away, so at once rather than after a
/// timer (an idle proxy must not wake for this). After one more turn of the runtime, so the
/// login drivers' log lines are written first.
pub(crate) fn release_code_after(start_up: impl std::future::Future<Output = ()> + Send + 'static) {
    tokio::spawn(async move {
        start_up.await;
        tokio::task::yield_now().await;
        release_code_pages();
    });
}

/// Give free heap pages back to the system now, unless that was done less than `min_gap`
/// ago. For the moment a burst of connections has ended: one `malloc_trim` walks the heap
/// (well under a millisecond for the few MiB a proxy holds), and the gap bounds what a
/// pattern of one connection at a time could cost.
pub(crate) fn trim_heap(min_gap: std::time::Duration) {
    use std::sync::Mutex;
    use std::time::Instant;
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let now = Instant::now();
    {
        let Ok(mut last) = LAST.lock() else {
            return;
        };
        if last.is_some_and(|t| now.duration_since(t) < min_gap) {
            return;
        }
        *last = Some(now);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Unmap (`MADV_DONTNEED`) the whole pages of every loaded object's non-writable `PT_LOAD`
/// segments: code and read-only data, which are never written, so the next access maps the
/// same bytes from the file again. Writable segments (data, relocated RELRO) are left alone:
/// unmapping their private copies would lose what was written. Returns the bytes unmapped.
///
/// A debugger's software breakpoint is a private write to a code page and would be dropped;
/// the proxy is not run under one in production.
#[cfg(target_os = "linux")]
pub(crate) fn release_code_pages() -> usize {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid entry and our `data` pointer.
        let (info, released) = unsafe { (&*info, &mut *data.cast::<usize>()) };
        if !info.dlpi_name.is_null() {
            // SAFETY: a NUL-terminated name owned by the dynamic linker.
            let name = unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes();
            // The vDSO is the kernel's own mapping, not a file's.
            if name.starts_with(b"linux-vdso") || name.starts_with(b"linux-gate") {
                return 0;
            }
        }
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as usize,
            _ => return 0,
        };
        for i in 0..usize::from(info.dlpi_phnum) {
            // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type != libc::PT_LOAD || ph.p_flags & libc::PF_W != 0 {
                continue;
            }
            let start = (info.dlpi_addr as usize).wrapping_add(ph.p_vaddr as usize);
            let end = start.wrapping_add(ph.p_memsz as usize);
            // Only pages wholly inside the segment.
            let (start, end) = (start.next_multiple_of(page), end / page * page);
            if end > start {
                // SAFETY: a mapped, never-written range of this process: the next access maps
                // the file's bytes again.
                if unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
                } == 0
                {
                    *released += end - start;
                }
            }
        }
        0
    }
    let mut released = 0usize;
    // SAFETY: `each` only reads the entries and writes to `released`, which outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(each), (&raw mut released).cast());
    }
    released
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn release_code_pages() -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_still_runs_after_its_pages_are_unmapped() {
        let released = release_code_pages();
        if cfg!(target_os = "linux") {
            assert!(released > 0);
        }
        // Code, read-only data and relocated data all still what they were.
        let v: Vec<String> = (0..3).map(|i| format!("{i}:{}", "x".repeat(i))).collect();
        assert_eq!(v, ["0:", "1:x", "2:xx"]);
        release_unused();
        assert_eq!(format!("{:?}", Some(1.5f64)), "Some(1.5)");
    }
}
