//! `slr-policy-wasm`: see DESIGN.md §2 (skeleton).
