//! The queue manager's steady state allocates nothing: classify, enqueue (with
//! refusals), rank, dequeue and shape 100 000 packets, checked with a counting
//! global allocator (its own test binary, so it sees only this test).

#![allow(
    clippy::unwrap_used,
    reason = "test setup: a failure is a test failure"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;

use resource_mgr::RateLimit;
use router_core::Instant;
use router_core::packet::HEADROOM;
use router_core::queue::{PacketPool, QueueManager, SourceClassifier};
use router_core::sched::{ClassConfig, ClassId, LinkScheduler, SchedConfig};
use router_core::synth::PacketSpec;
use router_core::wire::TcpFlags;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call forwards to `System` with the caller's arguments unchanged; the
// only extra work is bumping a thread-local counter, which does not allocate.
#[expect(
    unsafe_code,
    reason = "a global allocator is the only way to count allocations"
)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn steady_state_does_not_allocate() {
    // Two tenants of two VIP subnets each under a shaped 100 Mbyte/s link.
    let link = RateLimit::new(100_000_000, 6000).unwrap();
    let mut s = LinkScheduler::new(SchedConfig::new(256, 1 << 20).with_link(Some(link)));
    let mut c = SourceClassifier::new(16, [1, 2, 3, 4]);
    for (t, w) in [(0_u8, 20_u32), (1, 80)] {
        let tenant = s.add_class(ClassId::ROOT, ClassConfig::new(w)).unwrap();
        for v in 0..2_u8 {
            let leaf = s
                .add_class(
                    tenant,
                    ClassConfig::new(u32::from(v) + 1).with_limits(40, 1 << 20),
                )
                .unwrap();
            c.insert(format!("192.200.{}.0/24", t * 2 + v).parse().unwrap(), leaf)
                .unwrap();
        }
    }
    let mut q = QueueManager::new(c, s);
    let mut pool = PacketPool::new(512, 1500);
    let mut held = Vec::with_capacity(512);
    for k in 0..400_u16 {
        let src: SocketAddr = format!("192.200.{}.9:443", k % 4).parse().unwrap();
        let dst: SocketAddr = format!("198.51.100.1:{}", 1024 + k).parse().unwrap();
        let spec = PacketSpec::tcp(src, dst, TcpFlags::ACK).with_payload(100 + usize::from(k) * 3);
        let mut p = pool.take().unwrap();
        let n = spec.write(&mut p.storage_mut()[HEADROOM..]).unwrap();
        p.set_frame(HEADROOM, n).unwrap();
        held.push(p);
    }

    let mut now = Instant::ZERO;
    let before = allocations();
    let mut sent = 0_u64;
    for round in 0..100_000_usize {
        // Offer two packets per packet sent: the class limits refuse the excess.
        for _ in 0..2 {
            if let Some(p) = held.pop()
                && let Err(refused) = q.enqueue(p, now)
            {
                held.insert(0, refused.packet);
            }
        }
        now = q.next_ready(now).unwrap_or(now);
        if let Some(d) = q.dequeue(now) {
            held.insert(0, d.packet);
            sent += 1;
        }
        if round % 1000 == 0 {
            now = now + Duration::from_micros(1);
        }
    }
    let after = allocations();
    assert_eq!(after - before, 0, "allocations in steady state");
    assert!(sent > 90_000, "{sent}");
    let counters = q.scheduler().counters();
    assert!(counters.dropped_total() > 0, "refusals were exercised");
    assert_eq!(counters.dequeued, sent);
}
