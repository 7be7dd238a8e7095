//! The closed set of rules a [`super::Pipeline`] holds: the config's rules
//! (plain, program, plugin placeholder) and the rules a library user gives
//! in code. The pipeline, the State and the config's views match on the
//! kind; the open [`Rule`] trait is for rules given in code only.

use std::sync::Arc;

use super::program::ProgramRule;
use super::rules::{ConfigRule, PluginSlot, Rule, RuleContext};
use crate::packet::PacketView;

/// One rule of a pipeline.
#[non_exhaustive]
pub enum RuleKind {
    /// A `[[rule]]` table: indexed; a rate limit's buckets live in the State.
    Config(Box<ConfigRule>),
    /// A `[[rule]]` table with `program`: its fields indexed, its live
    /// instance (memory and map) in the State.
    Program(Box<ProgramRule>),
    /// A `[[rule]]` with `plugin`, where no rule given in code took its
    /// place (`op25b check`, `replay`): it matches nothing.
    Plugin(Box<PluginSlot>),
    /// A rule given in code ([`super::Policy::attach`]): the same object in
    /// every policy it is attached to, so its own state carries over.
    Code(Arc<dyn Rule>),
}

impl std::fmt::Debug for RuleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl From<ConfigRule> for RuleKind {
    fn from(r: ConfigRule) -> RuleKind {
        RuleKind::Config(Box::new(r))
    }
}

impl From<ProgramRule> for RuleKind {
    fn from(r: ProgramRule) -> RuleKind {
        RuleKind::Program(Box::new(r))
    }
}

impl From<PluginSlot> for RuleKind {
    fn from(r: PluginSlot) -> RuleKind {
        RuleKind::Plugin(Box::new(r))
    }
}

impl RuleKind {
    /// The rule's name (unique in a pipeline).
    pub fn name(&self) -> &str {
        match self {
            RuleKind::Config(r) => &r.name,
            RuleKind::Program(r) => &r.matcher.name,
            RuleKind::Plugin(r) => &r.name,
            RuleKind::Code(r) => r.name(),
        }
    }

    /// The fields the pipeline's index can use: a config rule's, or a
    /// program rule's matcher.
    #[inline]
    pub(crate) fn fields(&self) -> Option<&ConfigRule> {
        match self {
            RuleKind::Config(r) => Some(r),
            RuleKind::Program(r) => Some(&r.matcher),
            RuleKind::Plugin(_) | RuleKind::Code(_) => None,
        }
    }

    /// For traces: the first field on which `p` fails to match, if the
    /// rule can tell.
    pub(crate) fn mismatch(&self, p: &PacketView, cx: &RuleContext) -> Option<&'static str> {
        match self {
            RuleKind::Config(r) => r.first_mismatch(p, cx),
            RuleKind::Program(r) => r.matcher.first_mismatch(p, cx),
            RuleKind::Plugin(_) => Some("plugin not given here"),
            RuleKind::Code(r) => r.mismatch(p, cx),
        }
    }

    /// A one-line description for `op25b check`.
    pub(crate) fn describe(&self) -> String {
        match self {
            RuleKind::Config(r) => r.describe(),
            RuleKind::Program(r) => r.describe(),
            RuleKind::Plugin(r) => r.describe(),
            RuleKind::Code(r) => format!("{} (given in code)", r.describe()),
        }
    }
}
