//! Runs `examples/custom_rule.rs`: a Rust rule added to a router from outside the core.

#[path = "../examples/custom_rule.rs"]
#[allow(dead_code)]
mod custom_rule;

#[test]
fn custom_rule_example_limits_submission_connections() {
    assert_eq!(custom_rule::scenario(), (3, 3));
    // The example's own main asserts the same and prints the figures.
    custom_rule::main();
}
