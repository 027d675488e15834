//! `resource-mgr`: see DESIGN.md §2 (skeleton).
