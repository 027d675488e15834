//! `signaling`: see DESIGN.md §2 (skeleton).
