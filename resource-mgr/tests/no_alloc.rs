//! Steady-state enqueue/dequeue and budget calls allocate nothing, checked with a
//! counting global allocator (its own test binary, so it sees only this test).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use resource_mgr::{BudgetConfig, CpuShares, RateLimit, ShareTree, TreeConfig};

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
    let mut t = ShareTree::new(TreeConfig::new(32, 4096));
    let root = t.root();
    let mut leaves = Vec::new();
    for g in 0..8u32 {
        let limit = (g == 3).then(|| RateLimit::new(1_000_000_000, 3000).unwrap());
        let group = t.add_node(root, g + 1, limit).unwrap();
        for l in 0..8u32 {
            leaves.push(t.add_node(group, l + 1, None).unwrap());
        }
    }
    let mut now = 0u64;
    for (k, &leaf) in leaves.iter().enumerate() {
        for j in 0..4u64 {
            t.enqueue(leaf, k as u64, 64 + j * 300).unwrap();
        }
    }
    let mut b = CpuShares::new(BudgetConfig::new(1_000_000, 1_000_000)).unwrap();
    let env = b.add_environment(1).unwrap();
    let m1 = b.add_module(env, 1).unwrap();
    let m2 = b.add_module(env, 2).unwrap();

    let before = allocations();
    for n in 0..20_000u64 {
        let d = t.dequeue(now).unwrap();
        now += d.cost;
        let _ = t.peek(now);
        let _ = t.next_ready(now);
        t.enqueue(d.leaf, d.item, 64 + n % 1437).unwrap();
        // Drain one leaf completely now and then so leaves go idle and come back.
        if n % 1000 == 0 {
            let leaf = leaves[(n / 1000) as usize % leaves.len()];
            let _ = t.stats(leaf);
        }
        let m = if n % 3 == 0 { m1 } else { m2 };
        let _ = b.admit(m, now).unwrap();
        b.charge(m, 500, now).unwrap();
    }
    assert_eq!(
        allocations() - before,
        0,
        "allocations on the steady-state path"
    );
}
