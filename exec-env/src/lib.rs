//! `exec-env`: see DESIGN.md §2 (skeleton).
