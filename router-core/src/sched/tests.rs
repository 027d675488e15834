//! Unit tests of the link scheduler.

use super::*;
use std::time::Duration;

fn sched(rank: Box<dyn Rank>) -> (LinkScheduler<u32>, [ClassId; 2]) {
    let mut s = LinkScheduler::with_rank(SchedConfig::default(), rank);
    let a = s
        .add_class(ClassId::ROOT, ClassConfig::new(1).with_priority(1))
        .unwrap();
    let b = s
        .add_class(ClassId::ROOT, ClassConfig::new(1).with_priority(0))
        .unwrap();
    (s, [a, b])
}

fn drain(s: &mut LinkScheduler<u32>) -> Vec<u32> {
    std::iter::from_fn(|| s.dequeue(Instant::ZERO).map(|d| d.packet)).collect()
}

#[test]
fn root_without_children_is_a_fifo() {
    let mut s: LinkScheduler<u32> = LinkScheduler::new(SchedConfig::default());
    for k in 0..5 {
        s.enqueue(&PacketMeta::new(100, ClassId::ROOT), k, Instant::ZERO)
            .unwrap();
    }
    assert_eq!(drain(&mut s), vec![0, 1, 2, 3, 4]);
    assert!(s.is_empty());
}

#[test]
fn sfq_alternates_equal_weights_and_strict_priority_does_not() {
    let (mut s, [a, b]) = sched(Box::new(Sfq::new(16)));
    for k in 0..3 {
        s.enqueue(&PacketMeta::new(100, a), 10 + k, Instant::ZERO)
            .unwrap();
        s.enqueue(&PacketMeta::new(100, b), 20 + k, Instant::ZERO)
            .unwrap();
    }
    assert_eq!(drain(&mut s), vec![10, 20, 11, 21, 12, 22]);

    let (mut s, [a, b]) = sched(Box::new(StrictPriority));
    for k in 0..3 {
        s.enqueue(&PacketMeta::new(100, a), 10 + k, Instant::ZERO)
            .unwrap();
        s.enqueue(&PacketMeta::new(100, b), 20 + k, Instant::ZERO)
            .unwrap();
    }
    assert_eq!(drain(&mut s), vec![20, 21, 22, 10, 11, 12]);
}

#[test]
fn busy_periods_restart_virtual_time() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let rank = FnRank::new("probe", move |_: &PacketMeta, at: &RankContext| {
        if let Ok(mut v) = log.lock() {
            v.push((at.node.index(), at.vtime, at.busy_period, at.queued));
        }
        1000
    });
    let (mut s, [a, _]) = sched(Box::new(rank));
    let m = PacketMeta::new(100, a);
    s.enqueue(&m, 1, Instant::ZERO).unwrap();
    s.enqueue(&m, 2, Instant::ZERO).unwrap();
    assert!(s.dequeue(Instant::ZERO).is_some());
    s.enqueue(&m, 3, Instant::ZERO).unwrap();
    drain(&mut s);
    s.enqueue(&m, 4, Instant::ZERO).unwrap();
    let seen = seen.lock().unwrap().clone();
    let (ai, r) = (a.index(), ClassId::ROOT.index());
    assert_eq!(
        seen,
        vec![
            (ai, 0, 1, 0),
            (r, 0, 2, 0),
            (ai, 0, 1, 1),
            (r, 0, 2, 1),
            // After one dequeue the virtual time is the rank served.
            (ai, 1000, 1, 1),
            (r, 1000, 2, 1),
            // Emptied, then a new busy period: new numbers, time from 0.
            (ai, 0, 3, 0),
            (r, 0, 4, 0),
        ]
    );
}

#[test]
fn failing_rank_calls_fall_back_to_virtual_time_and_count() {
    struct Broken;
    impl Rank for Broken {
        fn name(&self) -> &str {
            "broken"
        }
        fn rank(&mut self, _: &PacketMeta, _: &RankContext) -> Result<u64, RankError> {
            Err(RankError::Timeout)
        }
    }
    let (mut s, [a, b]) = sched(Box::new(Broken));
    s.enqueue(&PacketMeta::new(100, a), 1, Instant::ZERO)
        .unwrap();
    s.enqueue(&PacketMeta::new(100, b), 2, Instant::ZERO)
        .unwrap();
    assert_eq!(drain(&mut s), vec![1, 2]);
    assert_eq!(s.counters().rank_faults, 4);
    assert_eq!(s.counters().rank_calls, 4);
}

#[test]
fn shaper_waits_for_credit() {
    let link = RateLimit::new(1000, 1500).unwrap();
    let mut s: LinkScheduler<u32> =
        LinkScheduler::new(SchedConfig::default().with_link(Some(link)));
    for k in 0..3 {
        s.enqueue(&PacketMeta::new(1000, ClassId::ROOT), k, Instant::ZERO)
            .unwrap();
    }
    let t0 = Instant::ZERO;
    assert_eq!(s.dequeue(t0).map(|d| d.packet), Some(0));
    // 500 bytes of credit left, 1000 needed: 0.5 s at 1000 B/s.
    assert_eq!(s.next_ready(t0), Some(Instant::from_millis(500)));
    assert!(s.dequeue(Instant::from_millis(499)).is_none());
    assert_eq!(s.counters().shaped, 1);
    assert_eq!(
        s.dequeue(Instant::from_millis(500)).map(|d| d.packet),
        Some(1)
    );
    assert_eq!(
        s.next_ready(Instant::from_millis(500)),
        Some(Instant::from_secs(1) + Duration::from_millis(500))
    );
}

#[test]
fn class_management_is_checked() {
    let mut s: LinkScheduler<u32> = LinkScheduler::new(SchedConfig::default().with_max_classes(3));
    assert_eq!(
        s.add_class(ClassId::ROOT, ClassConfig::new(0)),
        Err(SchedError::InvalidWeight { weight: 0 })
    );
    let a = s.add_class(ClassId::ROOT, ClassConfig::new(1)).unwrap();
    s.enqueue(&PacketMeta::new(10, a), 1, Instant::ZERO)
        .unwrap();
    assert!(matches!(
        s.add_class(a, ClassConfig::new(1)),
        Err(SchedError::HasBacklog { .. })
    ));
    assert!(matches!(
        s.remove_class(a),
        Err(SchedError::HasBacklog { .. })
    ));
    let b = s.add_class(ClassId::ROOT, ClassConfig::new(1)).unwrap();
    assert!(matches!(
        s.add_class(ClassId::ROOT, ClassConfig::new(1)),
        Err(SchedError::TooManyClasses { limit: 3 })
    ));
    assert_eq!(
        s.remove_class(ClassId::ROOT),
        Err(SchedError::RootNotRemovable)
    );
    s.remove_class(b).unwrap();
    // A removed id stays dead even when its index is reused.
    let c = s.add_class(ClassId::ROOT, ClassConfig::new(1)).unwrap();
    assert_eq!(c.index(), b.index());
    assert_ne!(c, b);
    let refused = s
        .enqueue(&PacketMeta::new(10, b), 2, Instant::ZERO)
        .unwrap_err();
    assert_eq!(
        (refused.packet, refused.reason),
        (2, QueueDrop::UnknownClass)
    );
    let refused = s
        .enqueue(&PacketMeta::new(10, ClassId::ROOT), 3, Instant::ZERO)
        .unwrap_err();
    assert_eq!(refused.reason, QueueDrop::NotALeaf);
    assert_eq!(s.counters().dropped_total(), 2);
    assert_eq!(drain(&mut s), vec![1]);
}

#[test]
fn sfq_tags_follow_the_formula() {
    assert_eq!(sfq_tag_len(1, 1), 1 << 16);
    assert_eq!(sfq_tag_len(1500, 3), (1500 << 16) / 3);
    assert_eq!(sfq_tag_len(7, 0), sfq_tag_len(7, 1));
    assert_eq!(sfq_tag_len(u32::MAX, 1), u64::from(u32::MAX) << 16);
}
