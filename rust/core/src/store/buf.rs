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

/// Buffers at least this large come straight from `mmap`, 2 MiB-aligned and advised
/// `MADV_HUGEPAGE`: a decode step streams every weight once per token, and on 4 KiB pages each
/// page of weight is a TLB miss (a 2048-wide Llama's 16-46 MiB layer matrices read at about
/// 26 GB/s on 4 KiB pages here, 33 GB/s on huge pages). Smaller ones come from the allocator.
/// Freed buffers of either kind are recycled by size (see `pool` below): no page faults and no
/// zeroing by the kernel when an expert of the same size was freed before (the steady state of
/// a cache that swaps tensors in and out).
const MMAP_MIN: usize = 2 << 20;
/// The huge page size the mappings are aligned to.
const HUGE: usize = 2 << 20;
const PAGE: usize = 4096;

// SAFETY: the buffer owns its allocation; shared access is read-only (mutation needs &mut).
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of `len` bytes for the caller to overwrite whole (its initial contents are
    /// unspecified: no pass is spent zeroing memory that a read or copy fills right after).
    /// An allocation failure is an error, not an abort.
    pub fn for_overwrite(len: usize) -> Result<AlignedBuf> {
        if let Some(b) = pool::take(len) {
            return Ok(b);
        }
        AlignedBuf::allocate(len)
    }

    fn allocate(len: usize) -> Result<AlignedBuf> {
        if len == 0 {
            return Ok(AlignedBuf {
                ptr: NonNull::<u64>::dangling().cast(),
                len: 0,
                mapped: false,
            });
        }
        if len >= MMAP_MIN {
            // Map HUGE bytes more than needed, then unmap the head before the first 2 MiB
            // boundary and the tail after the buffer, so the buffer starts on a huge page.
            let span = len
                .checked_add(HUGE)
                .ok_or_else(|| CoreError::Capacity(format!("cannot map {len} bytes")))?;
            // SAFETY: an anonymous private mapping; checked for failure below.
            let raw = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    span,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if raw == libc::MAP_FAILED {
                return Err(CoreError::Capacity(format!("out of memory mapping {len} bytes")));
            }
            let start = raw as usize;
            let aligned = start.next_multiple_of(HUGE);
            let end = (aligned + len).next_multiple_of(PAGE);
            // SAFETY: both ranges lie inside the mapping just made and outside the buffer.
            unsafe {
                if aligned > start {
                    libc::munmap(raw, aligned - start);
                }
                if start + span > end {
                    libc::munmap(end as *mut libc::c_void, start + span - end);
                }
            }
            let p = aligned as *mut libc::c_void;
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

impl AlignedBuf {
    /// Give the memory back (to the OS or the allocator), bypassing the pool.
    fn release(&mut self) {
        if self.mapped {
            // SAFETY: mapped in `allocate` with this length.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        } else if self.len > 0 {
            // SAFETY: allocated in `allocate` with this layout.
            unsafe {
                dealloc(self.ptr.as_ptr(), Layout::from_size_align_unchecked(self.len, ALIGN))
            }
        }
        self.len = 0;
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        let me = std::mem::replace(
            self,
            AlignedBuf { ptr: NonNull::<u64>::dangling().cast(), len: 0, mapped: false },
        );
        if let Err(mut b) = pool::give(me) {
            b.release();
            std::mem::forget(b);
        }
    }
}

/// Recycling of large buffers. A cache that swaps tensors in and out frees a buffer and soon
/// needs one of the same size (the next layer or expert of the same shape); handing the freed
/// one back avoids first-touch page faults and the kernel zeroing fresh pages, which otherwise
/// cost more than the read itself. Only buffers of at least [`pool::MIN`] bytes are kept, at most
/// [`pool::CAP`] bytes in all (memory held here is not counted by any tier), matched by exact size.
mod pool {
    use super::AlignedBuf;
    use parking_lot::Mutex;

    pub const MIN: usize = 1 << 20;
    pub const CAP: usize = 512 << 20;

    struct Pool {
        bufs: Vec<AlignedBuf>,
        bytes: usize,
    }

    static POOL: Mutex<Pool> = Mutex::new(Pool { bufs: Vec::new(), bytes: 0 });

    pub fn take(len: usize) -> Option<AlignedBuf> {
        if len < MIN {
            return None;
        }
        let mut p = POOL.try_lock()?; // never wait (a lock orphaned by fork must not hang us)
        let i = p.bufs.iter().rposition(|b| b.len == len)?;
        p.bytes -= len;
        Some(p.bufs.swap_remove(i))
    }

    /// Keep `b` for reuse, or hand it back to be released.
    pub fn give(b: AlignedBuf) -> Result<(), AlignedBuf> {
        if b.len < MIN || b.len > CAP {
            return Err(b);
        }
        let Some(mut p) = POOL.try_lock() else { return Err(b) };
        while p.bytes + b.len > CAP && !p.bufs.is_empty() {
            let mut old = p.bufs.remove(0); // oldest first
            p.bytes -= old.len;
            old.release();
            std::mem::forget(old);
        }
        p.bytes += b.len;
        p.bufs.push(b);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn buffers_are_recycled_by_size() {
        let mut a = AlignedBuf::for_overwrite(3 << 20).unwrap();
        a.as_mut_slice()[0] = 7;
        drop(a);
        let b = AlignedBuf::for_overwrite(3 << 20).unwrap();
        assert_eq!(b.len(), 3 << 20);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        let c = AlignedBuf::from_slice(&[1, 2, 3]).unwrap();
        assert_eq!(c.as_slice(), &[1, 2, 3]);
        assert_eq!(AlignedBuf::for_overwrite(0).unwrap().len(), 0);
        // Mapped buffers start on a huge page and hold their whole length.
        let mut big = AlignedBuf::allocate(5 * MMAP_MIN + 123).unwrap();
        assert!(big.mapped && big.as_ptr() as usize % HUGE == 0);
        big.as_mut_slice().fill(1);
        assert_eq!(big.as_slice().iter().map(|&v| v as usize).sum::<usize>(), big.len());
    }
}
