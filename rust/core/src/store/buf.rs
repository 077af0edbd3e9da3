//! A 64-byte aligned, immutable-once-shared byte buffer: the payload of in-memory tiers.
//! Shared as `Arc<AlignedBuf>` so a NumPy view handed to Python stays valid after the tensor is
//! evicted or deleted (zero copy, no dangling pointer).

use crate::{CoreError, Result};
use std::alloc::{alloc, dealloc, Layout};
use std::ptr::NonNull;

pub const ALIGN: usize = 64;

pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    mapped: bool,
}

/// Buffers at least this large come straight from `mmap` (lazily faulted pages, huge pages where
/// available). Smaller ones come from the allocator, which reuses freed memory (no page faults and
/// no zeroing by the kernel when an expert of the same size was freed before: the steady state of
/// a cache that swaps tensors in and out).
const MMAP_MIN: usize = 64 << 20;

// SAFETY: the buffer owns its allocation; shared access is read-only (mutation needs &mut).
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of `len` bytes for the caller to overwrite whole (its initial contents are
    /// unspecified: no pass is spent zeroing memory that a read or copy fills right after).
    /// An allocation failure is an error, not an abort.
    pub fn for_overwrite(len: usize) -> Result<AlignedBuf> {
        if len == 0 {
            return Ok(AlignedBuf {
                ptr: NonNull::<u64>::dangling().cast(),
                len: 0,
                mapped: false,
            });
        }
        if len >= MMAP_MIN {
            // SAFETY: an anonymous private mapping; checked for failure below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(CoreError::Capacity(format!("out of memory mapping {len} bytes")));
            }
            // SAFETY: p is a mapping of len bytes; the advice is only a hint.
            unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
            let ptr = NonNull::new(p.cast::<u8>())
                .ok_or_else(|| CoreError::Capacity("mmap returned null".into()))?;
            return Ok(AlignedBuf { ptr, len, mapped: true });
        }
        let layout = Layout::from_size_align(len, ALIGN)
            .map_err(|_| CoreError::Capacity(format!("cannot allocate {len} bytes")))?;
        // SAFETY: layout has non-zero size.
        let p = unsafe { alloc(layout) };
        let ptr = NonNull::new(p)
            .ok_or_else(|| CoreError::Capacity(format!("out of memory allocating {len} bytes")))?;
        Ok(AlignedBuf { ptr, len, mapped: false })
    }

    /// A copy of `data`.
    pub fn from_slice(data: &[u8]) -> Result<AlignedBuf> {
        let mut b = AlignedBuf::for_overwrite(data.len())?;
        b.as_mut_slice().copy_from_slice(data);
        Ok(b)
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes (or dangling with len 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: mapped in `for_overwrite` with this length.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        } else if self.len > 0 {
            // SAFETY: allocated in `for_overwrite` with this layout.
            unsafe {
                dealloc(self.ptr.as_ptr(), Layout::from_size_align_unchecked(self.len, ALIGN))
            }
        }
    }
}
