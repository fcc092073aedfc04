//! Super-batching is exact: groups of the method's batch sharing one forward/backward pass
//! score every singular value as one group per pass does, and prune the same set.

mod common;

use common::{relative_gap, sweep_both_ways};
use eigenprune_engine::Component;

#[test]
fn forty_groups_per_pass_score_as_one_group_per_pass() {
    let task = eigenprune_engine::tasks::builtin("int-mult").unwrap();
    for arch in ["gpt2", "phi", "llama", "mistral", "qwen2", "gemma3"] {
        let m = common::load_fixture(arch);
        let (a, b, passes) =
            sweep_both_ways(&m, &task.train, &[Component::K, Component::MlpIn], 40, None);
        assert_eq!(
            passes.iter().sum::<usize>(),
            task.train.len() / 5,
            "{arch}: {passes:?}"
        );
        assert!(
            passes.iter().any(|&g| g >= 40),
            "{arch}: passes held {passes:?} groups"
        );
        let gap = relative_gap(&a.flat(), &b.flat());
        eprintln!(
            "{arch}: {} passes, scores differ by {gap:e} of the largest",
            passes.len()
        );
        assert!(
            gap <= 1e-5,
            "{arch}: scores differ by {gap:e} of the largest"
        );
        for (x, y) in a.input_means.iter().zip(&b.input_means) {
            assert!(relative_gap(x, y) <= 1e-5, "{arch}: input means differ");
        }
        assert_eq!((a.examples, a.tokens), (b.examples, b.tokens), "{arch}");
    }
}
