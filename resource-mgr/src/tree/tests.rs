use super::*;

#[test]
fn equal_weights_alternate() {
    let mut t = ShareTree::new(TreeConfig::default());
    let a = t.add_node(t.root(), 1, None).unwrap();
    let b = t.add_node(t.root(), 1, None).unwrap();
    for k in 0..4 {
        t.enqueue(a, ('a', k), 100).unwrap();
        t.enqueue(b, ('b', k), 100).unwrap();
    }
    let order: Vec<char> = std::iter::from_fn(|| t.dequeue(0))
        .map(|d| d.item.0)
        .collect();
    assert_eq!(order, vec!['a', 'b', 'a', 'b', 'a', 'b', 'a', 'b']);
    assert!(t.is_empty());
}

#[test]
fn weight_two_gets_two_items_per_one() {
    let mut t = ShareTree::new(TreeConfig::default());
    let a = t.add_node(t.root(), 2, None).unwrap();
    let b = t.add_node(t.root(), 1, None).unwrap();
    for _ in 0..30 {
        t.enqueue(a, 'a', 10).unwrap();
        t.enqueue(b, 'b', 10).unwrap();
    }
    let first: Vec<char> = (0..30)
        .filter_map(|_| t.dequeue(0))
        .map(|d| d.item)
        .collect();
    let na = first.iter().filter(|&&c| c == 'a').count();
    assert_eq!(na, 20);
}

#[test]
fn root_without_children_is_a_fifo() {
    let mut t = ShareTree::new(TreeConfig::default());
    let r = t.root();
    for k in 0..5 {
        t.enqueue(r, k, 1).unwrap();
    }
    let got: Vec<i32> = std::iter::from_fn(|| t.dequeue(0))
        .map(|d| d.item)
        .collect();
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    assert!(t.add_node(r, 1, None).is_ok());
    assert!(matches!(
        t.enqueue(r, 9, 1).map_err(|e| e.error),
        Err(ShareError::NotALeaf { .. })
    ));
}

#[test]
fn move_entry_keeps_order() {
    let mk = |start, seq, child| Entry { start, seq, child };
    let mut v = vec![mk(1, 1, 0), mk(2, 2, 1), mk(3, 3, 2), mk(5, 4, 3)];
    move_entry(&mut v, 1, 1, mk(4, 9, 0));
    let keys: Vec<u32> = v.iter().map(|e| e.child).collect();
    assert_eq!(keys, vec![1, 2, 0, 3]);
    move_entry(&mut v, 5, 4, mk(9, 10, 3));
    let keys: Vec<u32> = v.iter().map(|e| e.child).collect();
    assert_eq!(keys, vec![1, 2, 0, 3]);
    move_entry(&mut v, 2, 2, mk(2, 11, 1));
    let keys: Vec<u32> = v.iter().map(|e| e.child).collect();
    assert_eq!(keys, vec![1, 2, 0, 3]);
}

#[test]
fn tag_len_is_fixed_point() {
    assert_eq!(tag_len(3, 1), 3 << 32);
    assert_eq!(tag_len(1, 2), 1 << 31);
    assert_eq!(tag_len(u64::MAX, 1), u128::from(u64::MAX) << 32);
    // Both sides of the 64-bit fast path agree with the wide division.
    for cost in [u64::from(u32::MAX), u64::from(u32::MAX) + 1, 1 << 40] {
        for w in [1u32, 3, 7, u32::MAX] {
            let wide = (u128::from(cost) << 32) / u128::from(w);
            assert_eq!(tag_len(cost, w), wide, "cost {cost} weight {w}");
        }
    }
}
