//! Rules given in code: [`Policy::attach`] puts them first, last, or in
//! the place of a config placeholder (`[[rule]] name = "x" plugin = "x"`).
//! The same object goes into every policy it is attached to (a reload
//! attaches it to the new one), so whatever state it keeps carries over, and
//! its counters carry over by name like a config rule's.

use std::collections::HashSet;
use std::sync::Arc;

use super::{Pipeline, Policy, Rule, RuleKind};

/// Where a rule given in code sits in the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Before the config's rules.
    First,
    /// After the config's rules.
    Last,
    /// In the place of the config's `[[rule]]` with `plugin = NAME`.
    Plugin(String),
}

/// Why rules given in code could not be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The policy's rules are in use by a router and cannot change in place.
    #[error("the policy's rules are shared with a running router; attach rules before building routers")]
    Shared,
    /// A config placeholder whose rule was not given.
    #[error("rule {rule:?}: plugin {plugin:?} is not given in code")]
    NotGiven {
        /// The placeholder's name.
        rule: String,
        /// The plugin it names.
        plugin: String,
    },
    /// A rule given for a placeholder the config does not have.
    #[error("rule {rule:?} given in code for plugin {plugin:?}: no [[rule]] has plugin = {plugin:?}")]
    NoPlaceholder {
        /// The rule given in code.
        rule: String,
        /// The plugin it was given for.
        plugin: String,
    },
    /// Two rules of one name: counters and state are kept by name.
    #[error("two rules are named {0:?} (counters and state are kept by name)")]
    Duplicate(String),
}

impl Policy {
    /// Puts the rules given in code into this policy's pipeline (just
    /// compiled, not yet shared with a router): each at its [`Place`]. Every
    /// placeholder of the config must be filled, every [`Place::Plugin`]
    /// must name one, and names stay unique. On an error the policy is as
    /// it was.
    pub fn attach(&mut self, rules: &[(Place, Arc<dyn Rule>)]) -> Result<(), AttachError> {
        let pipeline = std::mem::take(&mut self.rules);
        let config_rules = match Arc::try_unwrap(pipeline) {
            Ok(p) => p.into_rules(),
            Err(shared) => {
                self.rules = shared;
                return Err(AttachError::Shared);
            }
        };
        match arrange(&config_rules, rules) {
            Ok(order) => {
                let mut config_rules: Vec<Option<RuleKind>> = config_rules.into_iter().map(Some).collect();
                let out = order
                    .into_iter()
                    .filter_map(|o| match o {
                        Slot::Config(i) => config_rules[i].take(),
                        Slot::Code(i) => Some(RuleKind::Code(Arc::clone(&rules[i].1))),
                    })
                    .collect();
                self.rules = Arc::new(Pipeline::new(out));
                Ok(())
            }
            Err(e) => {
                self.rules = Arc::new(Pipeline::new(config_rules));
                Err(e)
            }
        }
    }
}

/// A rule of the attached pipeline: a config rule's or a given rule's index.
enum Slot {
    Config(usize),
    Code(usize),
}

/// The order of the attached pipeline, checked.
fn arrange(config_rules: &[RuleKind], rules: &[(Place, Arc<dyn Rule>)]) -> Result<Vec<Slot>, AttachError> {
    let code = |place: &Place| -> Vec<Slot> {
        rules.iter().enumerate().filter(|(_, (p, _))| p == place).map(|(i, _)| Slot::Code(i)).collect()
    };
    let name_of = |s: &Slot| match s {
        Slot::Config(i) => config_rules[*i].name().to_string(),
        Slot::Code(i) => rules[*i].1.name().to_string(),
    };
    let mut out = code(&Place::First);
    for (i, rule) in config_rules.iter().enumerate() {
        match rule {
            RuleKind::Plugin(slot) => {
                let given = code(&Place::Plugin(slot.plugin.clone()));
                if given.is_empty() {
                    return Err(AttachError::NotGiven { rule: slot.name.clone(), plugin: slot.plugin.clone() });
                }
                out.extend(given);
            }
            _ => out.push(Slot::Config(i)),
        }
    }
    for (place, rule) in rules {
        if let Place::Plugin(name) = place {
            if !out.iter().any(|s| name_of(s) == rule.name()) {
                return Err(AttachError::NoPlaceholder { rule: rule.name().to_string(), plugin: name.clone() });
            }
        }
    }
    out.extend(code(&Place::Last));
    let mut names = HashSet::new();
    if let Some(dup) = out.iter().map(name_of).find(|n| !names.insert(n.clone())) {
        return Err(AttachError::Duplicate(dup));
    }
    Ok(out)
}
