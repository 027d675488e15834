//! Log hygiene (issue 14 item 6): what a module logs is escaped, bounded and
//! written as a field of one record, so it cannot forge lines of the router.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use common::{candidates, from_wat, request, wat_policy};
use exec_env::host::{MAX_LOGGED_LEN, TRUNCATION_MARKER, escape_log_text};
use exec_env::manifest::Capability;
use exec_env::vm::{Vm, VmConfig};
use router_core::policy::{Decision, Policy};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

#[test]
fn control_characters_are_escaped() {
    let e = escape_log_text(
        "ok\nFAKE router line\r\t\\ \u{1b}[31m \u{7f}\u{85}\u{2028}é",
        512,
    );
    assert_eq!(
        e.text,
        "ok\\nFAKE router line\\r\\t\\\\ \\u{1b}[31m \\u{7f}\\u{85}\\u{2028}é"
    );
    assert!(!e.truncated);
    assert!(!e.text.chars().any(char::is_control));
}

#[test]
fn long_text_is_cut_on_a_character_boundary_with_a_marker() {
    let text = "é".repeat(400); // 800 bytes
    let e = escape_log_text(&text, MAX_LOGGED_LEN);
    assert!(e.truncated);
    assert!(e.text.len() <= MAX_LOGGED_LEN, "{}", e.text.len());
    assert!(e.text.ends_with(TRUNCATION_MARKER));
    let kept = e.text.strip_suffix(TRUNCATION_MARKER).unwrap();
    assert!(kept.chars().all(|c| c == 'é'));
    // An escape is never split: 200 newlines escape to 400 bytes, cut whole.
    let e = escape_log_text(&"\n".repeat(300), 100);
    let kept = e.text.strip_suffix(TRUNCATION_MARKER).unwrap();
    assert_eq!(kept, "\\n".repeat(kept.len() / 2));
    // Exactly the bound is not cut.
    let e = escape_log_text(&"a".repeat(512), 512);
    assert!(!e.truncated);
    assert_eq!(e.text.len(), 512);
}

/// One captured event: its target and fields as text.
#[derive(Debug, Clone)]
struct Captured {
    target: String,
    fields: BTreeMap<String, String>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// A subscriber that keeps every event.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Captured {
            target: event.metadata().target().to_owned(),
            fields,
        });
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn a_forged_newline_in_a_module_log_stays_in_one_record() {
    let forged = "ok\nFAKE router line";
    let wat = wat_policy(
        r#"(import "pronto" "log" (func $log (param i32 i32 i32)))
  (data (i32.const 16) "ok\nFAKE router line")"#,
        &format!(
            "(call $log (i32.const 2) (i32.const 16) (i32.const {})) (i32.const 0)",
            forged.len()
        ),
    );
    let vm = Vm::new(VmConfig::default()).unwrap();
    let policy = vm
        .load(
            &from_wat("chatty", "1.0.0", &[Capability::Log], &wat),
            &[Capability::Log],
        )
        .unwrap();
    let capture = Capture::default();
    tracing::subscriber::with_default(capture.clone(), || {
        assert_eq!(
            policy.select(&request(1), &candidates(2)),
            Ok(Decision::Select(0))
        );
    });
    let events = capture.0.lock().unwrap().clone();
    let module: Vec<_> = events
        .iter()
        .filter(|e| e.target == "pronto::module")
        .collect();
    assert_eq!(module.len(), 1, "{events:?}");
    let fields = &module[0].fields;
    assert_eq!(fields["text"], "ok\\nFAKE router line", "{fields:?}");
    assert_eq!(fields["message"], "module log");
    assert_eq!(fields["module"], "chatty");
    assert_eq!(fields["truncated"], "false");
    assert!(
        events
            .iter()
            .flat_map(|e| e.fields.values())
            .all(|v| !v.contains('\n')),
        "{events:?}"
    );
}
