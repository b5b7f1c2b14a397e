//! The UMEM: one anonymous mapping cut into equal frames, registered with the kernel
//! through an AF_XDP socket, plus the [`Frame`] token and the per-worker [`FramePool`].

use std::{
    ptr::NonNull,
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
};

use super::{XskError, XDP_PACKET_HEADROOM};

/// Size of the UMEM and its fill/completion rings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UmemConfig {
    /// Bytes per frame: a power of two from 2048 to the page size.
    pub frame_size: u32,
    /// Number of frames.
    pub frame_count: u32,
    /// Bytes the kernel leaves free before each received packet, on top of its own
    /// 256 (`XDP_PACKET_HEADROOM`): room to prepend outer headers in place. At least 64.
    pub headroom: u32,
    /// Fill ring entries per device queue (power of two).
    pub fill_size: u32,
    /// Completion ring entries per device queue (power of two).
    pub completion_size: u32,
}

impl Default for UmemConfig {
    fn default() -> Self {
        Self {
            frame_size: 2048,
            frame_count: 4096,
            headroom: 64,
            fill_size: 2048,
            completion_size: 2048,
        }
    }
}

/// Minimum UMEM headroom: outer Ethernet + IPv4 + UDP + NTM header, rounded up.
pub const MIN_HEADROOM: u32 = 64;
/// A full untagged Ethernet frame must fit after the headrooms.
const MAX_ETH_FRAME: u32 = 1514;

impl UmemConfig {
    /// Checks the limits the kernel and the fast path need.
    pub fn validate(&self) -> Result<(), XskError> {
        let page = page_size();
        if !self.frame_size.is_power_of_two()
            || self.frame_size < 2048
            || self.frame_size as usize > page
        {
            return Err(XskError::Config(
                "frame_size must be a power of two from 2048 to the page size",
            ));
        }
        if self.frame_count == 0 {
            return Err(XskError::Config("frame_count must be at least 1"));
        }
        if (self.frame_size as usize)
            .checked_mul(self.frame_count as usize)
            .is_none_or(|len| len > isize::MAX as usize)
        {
            return Err(XskError::Config(
                "frame_size * frame_count does not fit in memory",
            ));
        }
        if self.headroom < MIN_HEADROOM {
            return Err(XskError::Config(
                "headroom must be at least 64 bytes (room for encapsulation)",
            ));
        }
        if self.headroom + XDP_PACKET_HEADROOM + MAX_ETH_FRAME > self.frame_size {
            return Err(XskError::Config(
                "headroom too large: a 1514-byte frame no longer fits after it",
            ));
        }
        if !self.fill_size.is_power_of_two() || !self.completion_size.is_power_of_two() {
            return Err(XskError::Config(
                "fill_size and completion_size must be powers of two",
            ));
        }
        Ok(())
    }

    /// Offset of packet data from the start of its frame, as the kernel places it on RX.
    pub const fn data_offset(&self) -> u32 {
        self.headroom + XDP_PACKET_HEADROOM
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions; it returns -1 only for unknown names.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).unwrap_or(4096)
}

/// Ownership token of one UMEM frame holding a packet at `addr` (UMEM offset) of `len`
/// bytes. Not `Clone`: at any time each frame has at most one token, or none while the
/// kernel owns it (fill, RX, TX and completion rings).
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    addr: u64,
    len: u32,
    umem: u32,
}

impl Frame {
    /// UMEM offset of the first packet byte.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Packet length.
    #[allow(
        clippy::len_without_is_empty,
        reason = "a frame is a buffer, not a collection"
    )]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub(super) fn desc_len(&self) -> u32 {
        self.len
    }

    pub(super) fn umem_id(&self) -> u32 {
        self.umem
    }
}

/// The mapping itself: frame arithmetic and byte access, free of sockets so it can be
/// tested without privileges.
pub(super) struct Area {
    ptr: NonNull<u8>,
    len: usize,
    frame_size: u32,
    id: u32,
}

// SAFETY: `Area` owns its mapping; the raw pointer is only dereferenced through
// `packet`/`packet_mut`, whose callers hold the frame's unique token (`&Frame` /
// `&mut Frame`), so sharing the area between threads never creates aliasing access.
unsafe impl Send for Area {}
// SAFETY: as above: `&Area` hands out bytes of a frame only against that frame's token.
unsafe impl Sync for Area {}

static NEXT_UMEM_ID: AtomicU32 = AtomicU32::new(1);

impl Area {
    pub(super) fn map(cfg: &UmemConfig) -> Result<Self, XskError> {
        cfg.validate()?;
        let len = cfg.frame_size as usize * cfg.frame_count as usize;
        // SAFETY: anonymous private mapping with no address hint: no existing memory is
        // touched. The result is checked against MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(XskError::os("mmap of the UMEM"));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(XskError::Config("mmap returned NULL"))?;
        Ok(Self {
            ptr,
            len,
            frame_size: cfg.frame_size,
            id: NEXT_UMEM_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    pub(super) fn as_slice_ptr(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.len)
    }

    pub(super) fn id(&self) -> u32 {
        self.id
    }

    pub(super) fn frame_count(&self) -> u32 {
        (self.len / self.frame_size as usize) as u32
    }

    fn mask(&self) -> u64 {
        !(u64::from(self.frame_size) - 1)
    }

    /// Start of the frame holding `addr`.
    pub(super) fn frame_base(&self, addr: u64) -> u64 {
        addr & self.mask()
    }

    /// A token for a descriptor the kernel handed back (RX ring), if it lies inside one
    /// frame of this area. Trusts the kernel to hand out each frame once.
    pub(super) fn frame_from_desc(&self, addr: u64, len: u32) -> Option<Frame> {
        let end = addr.checked_add(u64::from(len))?;
        let frame_end = self.frame_base(addr) + u64::from(self.frame_size);
        (end <= frame_end && frame_end <= self.len as u64).then_some(Frame {
            addr,
            len,
            umem: self.id,
        })
    }

    fn check(&self, frame: &Frame) {
        // A token of another UMEM would alias a frame of this one: a programming error.
        assert_eq!(
            frame.umem, self.id,
            "frame used with a UMEM it does not belong to"
        );
    }

    fn range(&self, frame: &Frame) -> (usize, usize) {
        self.check(frame);
        // In bounds by construction: tokens are made only by `frame_from_desc` and the pool,
        // and changed only by the checked adjusters below.
        (frame.addr as usize, frame.len as usize)
    }

    pub(super) fn packet<'a>(&'a self, frame: &'a Frame) -> &'a [u8] {
        let (off, len) = self.range(frame);
        // SAFETY: [off, off+len) lies inside one frame of the live mapping (see `range`);
        // the shared borrow of the unique token `frame` excludes writers for 'a.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) }
    }

    pub(super) fn packet_mut<'a>(&'a self, frame: &'a mut Frame) -> &'a mut [u8] {
        let (off, len) = self.range(frame);
        // SAFETY: [off, off+len) lies inside one frame of the live mapping (see `range`);
        // the exclusive borrow of the unique token `frame` makes this the only access for 'a.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(off), len) }
    }

    pub(super) fn headroom(&self, frame: &Frame) -> usize {
        self.check(frame);
        (frame.addr - self.frame_base(frame.addr)) as usize
    }

    pub(super) fn tailroom(&self, frame: &Frame) -> usize {
        self.check(frame);
        let end = frame.addr + u64::from(frame.len);
        (self.frame_base(frame.addr) + u64::from(self.frame_size) - end) as usize
    }

    pub(super) fn push_front(&self, frame: &mut Frame, n: usize) -> bool {
        if n > self.headroom(frame) {
            return false;
        }
        frame.addr -= n as u64;
        frame.len += n as u32;
        true
    }

    pub(super) fn pull_front(&self, frame: &mut Frame, n: usize) -> bool {
        self.check(frame);
        if n > frame.len as usize {
            return false;
        }
        frame.addr += n as u64;
        frame.len -= n as u32;
        true
    }

    pub(super) fn set_len(&self, frame: &mut Frame, len: usize) -> bool {
        if len > frame.len as usize + self.tailroom(frame) {
            return false;
        }
        frame.len = len as u32;
        true
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `map`. No token can outlive the
        // area: every holder of frame bytes borrows the `Umem` that owns it. The kernel
        // pins the pages it registered and releases them itself, so it never writes
        // into memory we unmapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The UMEM: the mapping, registered with the kernel. Share it as `Arc<Umem>` between
/// the control thread (which binds [`super::Port`]s) and the workers (which read and
/// write frames).
pub struct Umem {
    // Dropped first: the kernel registration, then the mapping.
    pub(super) setup: Mutex<Setup>,
    area: Area,
    cfg: UmemConfig,
    assigned: AtomicU32,
}

/// Socket set-up state, used only when binding ports (never per packet).
pub(super) struct Setup {
    pub(super) xsk: SendUmem,
    /// Whether the UMEM's own socket is bound: the first port uses it, later ports
    /// bind their own sockets with `XDP_SHARED_UMEM`.
    pub(super) owner_bound: bool,
    /// The mode the first port obtained; shared ports inherit it.
    pub(super) mode: Option<super::XskMode>,
}

/// `xdpilone::Umem` is `!Send` only because it stores the pointer to our mapping.
pub(super) struct SendUmem(pub(super) xdpilone::Umem);

// SAFETY: xdpilone::Umem holds a pointer to the UMEM mapping (owned by `Area`, alive as
// long as the `Umem` holding both), an `Arc` of its socket fd and a spin-locked set of
// bound queues. We never call its `frame()` (our `Area` does the frame arithmetic), so
// the pointer is not dereferenced from another thread; the fd and the set are
// thread-safe. It is only reached through a `Mutex`.
unsafe impl Send for SendUmem {}

impl Umem {
    /// Maps `cfg.frame_count` frames and registers them with the kernel.
    pub fn new(cfg: UmemConfig) -> Result<Self, XskError> {
        let area = Area::map(&cfg)?;
        let xcfg = xdpilone::UmemConfig {
            fill_size: cfg.fill_size,
            complete_size: cfg.completion_size,
            frame_size: cfg.frame_size,
            headroom: cfg.headroom,
            flags: 0,
        };
        // SAFETY: the area is page aligned (mmap), valid for its whole length, and
        // outlives the registration: `setup` is declared before `area`, so it drops first.
        let xsk = unsafe { xdpilone::Umem::new(xcfg, area.as_slice_ptr()) }.map_err(|e| {
            XskError::Os {
                op: "AF_XDP UMEM registration (needs CAP_NET_RAW)",
                source: std::io::Error::from_raw_os_error(e.get_raw().abs()),
            }
        })?;
        Ok(Self {
            setup: Mutex::new(Setup {
                xsk: SendUmem(xsk),
                owner_bound: false,
                mode: None,
            }),
            area,
            cfg,
            assigned: AtomicU32::new(0),
        })
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &UmemConfig {
        &self.cfg
    }

    /// Frames not yet handed to a pool.
    pub fn unassigned(&self) -> u32 {
        self.area.frame_count() - self.assigned.load(Ordering::Relaxed)
    }

    /// Hands `count` frames, not given to any other pool, to a new worker pool.
    pub fn pool(&self, count: u32) -> Result<FramePool, XskError> {
        let total = self.area.frame_count();
        let first = self
            .assigned
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                a.checked_add(count).filter(|end| *end <= total)
            })
            .map_err(|a| XskError::Exhausted {
                requested: count,
                available: total - a,
            })?;
        Ok(FramePool::new(&self.area, &self.cfg, first, count))
    }

    /// The packet bytes of `frame`.
    pub fn packet<'a>(&'a self, frame: &'a Frame) -> &'a [u8] {
        self.area.packet(frame)
    }

    /// The packet bytes of `frame`, writable.
    pub fn packet_mut<'a>(&'a self, frame: &'a mut Frame) -> &'a mut [u8] {
        self.area.packet_mut(frame)
    }

    /// Free bytes in front of the packet (for outer headers).
    pub fn headroom(&self, frame: &Frame) -> usize {
        self.area.headroom(frame)
    }

    /// Free bytes after the packet (for a tag).
    pub fn tailroom(&self, frame: &Frame) -> usize {
        self.area.tailroom(frame)
    }

    /// Grows the packet by `n` bytes at the front (encapsulation); false if the
    /// headroom is too small.
    pub fn push_front(&self, frame: &mut Frame, n: usize) -> bool {
        self.area.push_front(frame, n)
    }

    /// Removes `n` bytes from the front (decapsulation); false if the packet is shorter.
    pub fn pull_front(&self, frame: &mut Frame, n: usize) -> bool {
        self.area.pull_front(frame, n)
    }

    /// Sets the packet length, growing into the tailroom or shrinking; false if it
    /// would leave the frame.
    pub fn set_len(&self, frame: &mut Frame, len: usize) -> bool {
        self.area.set_len(frame, len)
    }

    pub(super) fn area(&self) -> &Area {
        &self.area
    }
}

/// A worker's free frames: a plain stack, owned by one thread, so no lock per packet.
pub struct FramePool {
    free: Vec<u64>,
    umem: u32,
    data_offset: u64,
    mask: u64,
}

impl FramePool {
    fn new(area: &Area, cfg: &UmemConfig, first: u32, count: u32) -> Self {
        let size = u64::from(cfg.frame_size);
        // Highest frame on top: frames are then handed out in ascending order.
        let free = (first..first + count)
            .rev()
            .map(|i| u64::from(i) * size)
            .collect();
        Self {
            free,
            umem: area.id(),
            data_offset: u64::from(cfg.data_offset()),
            mask: area.mask(),
        }
    }

    /// Free frames.
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// Whether no frame is free.
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// A free frame with an empty packet placed where the kernel puts received ones
    /// (same headroom), for frames that userspace builds itself.
    pub fn alloc(&mut self) -> Option<Frame> {
        let base = self.free.pop()?;
        Some(Frame {
            addr: base + self.data_offset,
            len: 0,
            umem: self.umem,
        })
    }

    /// Returns a frame to the pool.
    pub fn free(&mut self, frame: Frame) {
        assert_eq!(
            frame.umem, self.umem,
            "frame returned to another UMEM's pool"
        );
        self.free.push(frame.addr & self.mask);
    }

    /// Takes back the frames of `burst` (addresses of frames a panic may
    /// have lost on the way) that are neither free here nor in `held`
    /// (frames still queued for TX); returns how many. Linear in the pool:
    /// for a worker's recovery, not per packet.
    pub fn reclaim(&mut self, burst: &[u64], held: impl IntoIterator<Item = u64>) -> usize {
        let mut known: std::collections::HashSet<u64> = self.free.iter().copied().collect();
        known.extend(held.into_iter().map(|a| a & self.mask));
        let before = self.free.len();
        for a in burst {
            let base = a & self.mask;
            if known.insert(base) {
                self.free.push(base);
            }
        }
        self.free.len() - before
    }

    /// Frame base for the fill ring.
    pub(super) fn pop_base(&mut self) -> Option<u64> {
        self.free.pop()
    }

    /// A frame the completion ring gave back (any address inside it).
    pub(super) fn push_addr(&mut self, addr: u64) {
        self.free.push(addr & self.mask);
    }

    pub(super) fn umem_id(&self) -> u32 {
        self.umem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(count: u32) -> UmemConfig {
        UmemConfig {
            frame_count: count,
            ..UmemConfig::default()
        }
    }

    #[test]
    fn config_limits() {
        assert!(UmemConfig::default().validate().is_ok());
        let bad = |f: fn(&mut UmemConfig)| {
            let mut c = UmemConfig::default();
            f(&mut c);
            c.validate().is_err()
        };
        assert!(bad(|c| c.frame_size = 3000));
        assert!(bad(|c| c.frame_size = 1024));
        assert!(bad(|c| c.frame_count = 0));
        assert!(bad(|c| c.headroom = 32));
        assert!(bad(|c| c.headroom = 512));
        assert!(bad(|c| c.fill_size = 1000));
        assert_eq!(UmemConfig::default().data_offset(), 320);
    }

    #[test]
    fn pool_hands_out_distinct_frames_and_takes_them_back() {
        let c = cfg(8);
        let area = Area::map(&c).unwrap();
        let mut pool = FramePool::new(&area, &c, 2, 4);
        let frames: Vec<Frame> = std::iter::from_fn(|| pool.alloc()).collect();
        assert_eq!(frames.len(), 4);
        assert!(pool.is_empty());
        let bases: Vec<u64> = frames.iter().map(|f| area.frame_base(f.addr())).collect();
        assert_eq!(bases, vec![2 * 2048, 3 * 2048, 4 * 2048, 5 * 2048]);
        for f in &frames {
            assert_eq!(area.headroom(f), 320);
            assert_eq!(f.len(), 0);
        }
        for f in frames {
            pool.free(f);
        }
        assert_eq!(pool.len(), 4);
    }

    #[test]
    fn frames_a_panic_lost_are_reclaimed_once() {
        let c = cfg(8);
        let area = Area::map(&c).unwrap();
        let mut pool = FramePool::new(&area, &c, 0, 6);
        // A burst of four: one went back to the pool, one to a TX queue, two
        // were lost (the one in hand and the rest of the burst).
        let burst: Vec<Frame> = (0..4).filter_map(|_| pool.alloc()).collect();
        let addrs: Vec<u64> = burst.iter().map(Frame::addr).collect();
        let mut it = burst.into_iter();
        pool.free(it.next().unwrap());
        let queued = it.next().unwrap();
        assert_eq!(pool.len(), 3);
        let n = pool.reclaim(&addrs, [queued.addr()]);
        assert_eq!((n, pool.len()), (2, 5));
        // Again: nothing more to give back, and no frame twice.
        assert_eq!(pool.reclaim(&addrs, [queued.addr()]), 0);
        let mut bases: Vec<u64> = std::iter::from_fn(|| pool.alloc())
            .map(|f| area.frame_base(f.addr()))
            .collect();
        bases.sort_unstable();
        bases.dedup();
        assert_eq!(bases.len(), 5);
        assert!(!bases.contains(&area.frame_base(queued.addr())));
    }

    #[test]
    fn frame_adjustments_stay_inside_the_frame() {
        let c = cfg(2);
        let area = Area::map(&c).unwrap();
        let mut pool = FramePool::new(&area, &c, 0, 2);
        let mut f = pool.alloc().unwrap();
        assert!(area.set_len(&mut f, 100));
        area.packet_mut(&mut f).fill(0xab);
        // Encapsulate: 44 bytes in front, 16 behind.
        assert!(area.push_front(&mut f, 44));
        assert_eq!(area.headroom(&f), 320 - 44);
        assert_eq!(&area.packet(&f)[44..], &[0xab; 100][..]);
        assert!(area.set_len(&mut f, 160));
        assert_eq!(area.tailroom(&f), 2048 - 276 - 160);
        // Decapsulate back.
        assert!(area.pull_front(&mut f, 44));
        assert!(area.set_len(&mut f, 100));
        assert!(area.packet(&f).iter().all(|b| *b == 0xab));
        // Out of bounds requests are refused and change nothing.
        assert!(!area.push_front(&mut f, 321 + 44));
        assert!(!area.pull_front(&mut f, 101));
        assert!(!area.set_len(&mut f, 2048));
        assert_eq!(f.len(), 100);
        // Writing one frame leaves the neighbour untouched.
        let mut g = pool.alloc().unwrap();
        assert!(area.set_len(&mut g, 10));
        assert!(area.packet(&g).iter().all(|b| *b == 0));
    }

    #[test]
    fn kernel_descriptors_are_checked() {
        let c = cfg(2);
        let area = Area::map(&c).unwrap();
        assert!(area.frame_from_desc(320, 1514).is_some());
        assert!(area.frame_from_desc(2048 + 320, 1728).is_some());
        // Crossing into the next frame, or past the area.
        assert!(area.frame_from_desc(320, 1729).is_none());
        assert!(area.frame_from_desc(4096 + 320, 10).is_none());
        assert!(area.frame_from_desc(u64::MAX - 4, 10).is_none());
    }

    #[test]
    #[should_panic(expected = "does not belong")]
    fn frames_of_another_umem_are_refused() {
        let c = cfg(1);
        let a = Area::map(&c).unwrap();
        let b = Area::map(&c).unwrap();
        let mut pool = FramePool::new(&a, &c, 0, 1);
        let f = pool.alloc().unwrap();
        let _ = b.packet(&f);
    }
}
