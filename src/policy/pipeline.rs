//! The rule pipeline: an ordered list of rules after the OP25B fast path; the
//! first final verdict wins, the default is forward.
//!
//! Runs of config rules are indexed with a bit-vector classifier (Lakshman and
//! Stiliadis, SIGCOMM '98): for each field the value space is cut into
//! elementary intervals, and each interval stores a bitmap of the rules that
//! can match a value in it. A packet costs one lookup per field (a binary
//! search over interval bounds) and an AND of the bitmaps, then a full check of
//! only the candidate rules, in rule order. So the cost hardly grows with the
//! number of rules or prefixes. The bitmaps only ever prune: the full check of
//! each candidate is what decides, so the index cannot make a rule match that
//! would not.

use std::net::IpAddr;
use std::time::Instant;

use super::program::ProgramRule;
use super::rules::{ports_of, ConfigRule, RuleContext, RuleVerdict};
use super::{Limit, RuleKind};
use crate::packet::PacketView;

/// What the pipeline needs from its caller while it evaluates: the counters
/// of matched rules and the rate-limit buckets (runtime state the policy does
/// not hold), and, for traces, each step.
pub trait RuleHooks {
    /// Whether steps are reported. A tracing evaluation walks every rule in
    /// order (so the trace names the field each one failed on); otherwise the
    /// index picks the candidates. Both reach the same verdict.
    const TRACE: bool;

    /// Rule `index` matched a packet of `bytes` bytes.
    fn matched(&mut self, index: usize, bytes: usize);

    /// Rate-limit rule `index` matched: take a token from the bucket of the
    /// packet's source; false when it is empty.
    fn allow(&mut self, index: usize, limit: Limit, packet: &PacketView, now: Instant) -> bool;

    /// Program rule `index` matched its fields: run its program. Without an
    /// instance to run, its `on_error` verdict.
    fn program(&mut self, _index: usize, rule: &ProgramRule, _packet: &PacketView, _cx: &RuleContext) -> RuleVerdict {
        rule.on_error.verdict()
    }

    /// One step of the evaluation (only called when [`RuleHooks::TRACE`]).
    fn step(&mut self, _index: usize, _rule: &RuleKind, _step: RuleStep) {}
}

/// One rule's result in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuleStep {
    /// The rule does not match; the first field that failed, if it can tell.
    NoMatch(Option<&'static str>),
    /// The rule matched with this verdict.
    Matched(RuleVerdict),
}

enum Stage {
    /// Config rules `first..first + classifier.len` indexed together.
    Indexed { first: usize, last: usize, classifier: Box<Classifier> },
    /// A rule the index cannot see into (a placeholder, a rule given in
    /// code), evaluated on its own.
    Opaque(usize),
}

/// The ordered rules, shared by all workers; immutable.
#[derive(Default)]
pub struct Pipeline {
    rules: Vec<RuleKind>,
    stages: Vec<Stage>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.rules.iter().map(|r| r.describe())).finish()
    }
}

impl Pipeline {
    /// A pipeline of `rules` in order.
    pub(crate) fn new(rules: Vec<RuleKind>) -> Pipeline {
        let mut stages = Vec::new();
        let mut i = 0;
        // Program rules are indexed by their matching fields like config
        // rules: a packet those fields exclude never reaches the program.
        while i < rules.len() {
            if rules[i].fields().is_none() {
                stages.push(Stage::Opaque(i));
                i += 1;
                continue;
            }
            let first = i;
            while i < rules.len() && rules[i].fields().is_some() {
                i += 1;
            }
            let run: Vec<&ConfigRule> = rules[first..i].iter().filter_map(RuleKind::fields).collect();
            stages.push(Stage::Indexed { first, last: i, classifier: Box::new(Classifier::new(&run)) });
        }
        Pipeline { rules, stages }
    }

    /// Takes the rules back out.
    pub(crate) fn into_rules(self) -> Vec<RuleKind> {
        self.rules
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[RuleKind] {
        &self.rules
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Runs the rules over a packet until one gives a final verdict: that
    /// verdict and the index of the deciding rule, or `None` (forward).
    #[inline]
    pub fn evaluate<H: RuleHooks>(
        &self,
        p: &PacketView,
        cx: &RuleContext,
        hooks: &mut H,
    ) -> Option<(RuleVerdict, usize)> {
        for stage in &self.stages {
            let decided = match stage {
                Stage::Opaque(i) => self.run(*i, p, cx, hooks),
                Stage::Indexed { first, last, .. } if H::TRACE => {
                    (*first..*last).find_map(|i| self.run(i, p, cx, hooks))
                }
                Stage::Indexed { first, classifier, .. } => {
                    classifier.candidates(p, cx, |i| self.run(first + i, p, cx, hooks))
                }
            };
            if decided.is_some() {
                return decided;
            }
        }
        None
    }

    #[inline]
    fn run<H: RuleHooks>(
        &self,
        i: usize,
        p: &PacketView,
        cx: &RuleContext,
        hooks: &mut H,
    ) -> Option<(RuleVerdict, usize)> {
        let rule = &self.rules[i];
        let v = match rule {
            RuleKind::Config(c) => match c.first_mismatch(p, cx) {
                Some(field) => {
                    if H::TRACE {
                        hooks.step(i, rule, RuleStep::NoMatch(Some(field)));
                    }
                    return None;
                }
                None => c.verdict(|limit| hooks.allow(i, limit, p, cx.now)),
            },
            RuleKind::Program(pr) => match pr.matcher.first_mismatch(p, cx) {
                Some(field) => {
                    if H::TRACE {
                        hooks.step(i, rule, RuleStep::NoMatch(Some(field)));
                    }
                    return None;
                }
                None => hooks.program(i, pr, p, cx),
            },
            RuleKind::Plugin(_) => RuleVerdict::NoMatch,
            RuleKind::Code(r) => r.evaluate(p, cx),
        };
        if H::TRACE {
            let step = match v {
                RuleVerdict::NoMatch => RuleStep::NoMatch(rule.mismatch(p, cx)),
                v => RuleStep::Matched(v),
            };
            hooks.step(i, rule, step);
        }
        if v == RuleVerdict::NoMatch {
            return None;
        }
        hooks.matched(i, p.len);
        v.is_final().then_some((v, i))
    }
}

/// A field's value space cut into intervals, each with a bitmap of rules.
#[derive(Debug)]
struct Dim<K> {
    /// Start of each interval, ascending; the first is the type's minimum.
    bounds: Vec<K>,
    /// `words` u64s per interval.
    masks: Vec<u64>,
}

impl<K: Copy + Ord> Dim<K> {
    /// Builds from each rule's ranges (`None` = the whole space). `succ` gives
    /// the next key (None at the top of the space).
    fn new(min: K, rules: &[Option<Vec<(K, K)>>], words: usize, succ: impl Fn(K) -> Option<K>) -> Dim<K> {
        let mut bounds = vec![min];
        for ranges in rules.iter().flatten() {
            for &(s, e) in ranges {
                bounds.push(s);
                if let Some(n) = succ(e) {
                    bounds.push(n);
                }
            }
        }
        bounds.sort_unstable();
        bounds.dedup();
        let mut masks = vec![0u64; bounds.len() * words];
        for (r, ranges) in rules.iter().enumerate() {
            let (w, bit) = (r / 64, 1u64 << (r % 64));
            match ranges {
                None => (0..bounds.len()).for_each(|i| masks[i * words + w] |= bit),
                Some(ranges) => {
                    for &(s, e) in ranges {
                        let lo = bounds.partition_point(|b| *b < s);
                        let hi = bounds.partition_point(|b| *b <= e);
                        (lo..hi).for_each(|i| masks[i * words + w] |= bit);
                    }
                }
            }
        }
        Dim { bounds, masks }
    }

    #[inline]
    fn lookup(&self, k: K, words: usize) -> &[u64] {
        let i = self.bounds.partition_point(|b| *b <= k).saturating_sub(1);
        &self.masks[i * words..(i + 1) * words]
    }
}

/// The bit-vector index over one run of config rules.
#[derive(Debug)]
struct Classifier {
    words: usize,
    /// Per direction (Outbound, Inbound).
    dir: Vec<u64>,
    /// Per protocol number.
    proto: Vec<u64>,
    src4: Dim<u32>,
    dst4: Dim<u32>,
    src6: Dim<u128>,
    dst6: Dim<u128>,
    sport: Dim<u32>,
    dport: Dim<u32>,
    /// Rules without port constraints, for packets without ports.
    portless: Vec<u64>,
}

impl Classifier {
    fn new(rules: &[&ConfigRule]) -> Classifier {
        let words = rules.len().div_ceil(64).max(1);
        let mut dir = vec![0u64; 2 * words];
        let mut proto = vec![0u64; 256 * words];
        let mut portless = vec![0u64; words];
        for (r, rule) in rules.iter().enumerate() {
            let (w, bit) = (r / 64, 1u64 << (r % 64));
            for (d, mask) in dir.chunks_mut(words).enumerate() {
                if rule.direction.is_none_or(|want| want as usize == d) {
                    mask[w] |= bit;
                }
            }
            for (p, mask) in proto.chunks_mut(words).enumerate() {
                if rule.protocol.is_none_or(|want| usize::from(want) == p) {
                    mask[w] |= bit;
                }
            }
            if rule.src_ports.is_none() && rule.dst_ports.is_none() {
                portless[w] |= bit;
            }
        }
        let v4 = |f: fn(&ConfigRule) -> Option<&super::PrefixSet>| -> Vec<Option<Vec<(u32, u32)>>> {
            rules.iter().map(|r| f(r).map(|s| s.v4_ranges().to_vec())).collect()
        };
        let v6 = |f: fn(&ConfigRule) -> Option<&super::PrefixSet>| -> Vec<Option<Vec<(u128, u128)>>> {
            rules.iter().map(|r| f(r).map(|s| s.v6_ranges().to_vec())).collect()
        };
        let ports = |f: fn(&ConfigRule) -> Option<&super::PortSet>| -> Vec<Option<Vec<(u32, u32)>>> {
            rules
                .iter()
                .map(|r| {
                    f(r).map(|set| {
                        let mut out: Vec<(u32, u32)> = Vec::new();
                        for p in set.iter().map(u32::from) {
                            match out.last_mut() {
                                Some(last) if last.1 + 1 == p => last.1 = p,
                                _ => out.push((p, p)),
                            }
                        }
                        out
                    })
                })
                .collect()
        };
        let s32 = |k: u32| k.checked_add(1);
        let s128 = |k: u128| k.checked_add(1);
        Classifier {
            words,
            dir,
            proto,
            src4: Dim::new(0, &v4(|r| r.src.as_ref()), words, s32),
            dst4: Dim::new(0, &v4(|r| r.dst.as_ref()), words, s32),
            src6: Dim::new(0, &v6(|r| r.src.as_ref()), words, s128),
            dst6: Dim::new(0, &v6(|r| r.dst.as_ref()), words, s128),
            sport: Dim::new(0, &ports(|r| r.src_ports.as_ref()), words, s32),
            dport: Dim::new(0, &ports(|r| r.dst_ports.as_ref()), words, s32),
            portless,
        }
    }

    /// Calls `run` on each candidate rule index in order until it returns Some.
    #[inline]
    fn candidates<T>(&self, p: &PacketView, cx: &RuleContext, mut run: impl FnMut(usize) -> Option<T>) -> Option<T> {
        let w = self.words;
        let d = cx.direction as usize;
        let dir = &self.dir[d * w..(d + 1) * w];
        let pr = usize::from(p.protocol);
        let proto = &self.proto[pr * w..(pr + 1) * w];
        let (src, dst) = match (p.src, p.dst) {
            (IpAddr::V4(s), IpAddr::V4(t)) => (self.src4.lookup(s.into(), w), self.dst4.lookup(t.into(), w)),
            (IpAddr::V6(s), IpAddr::V6(t)) => (self.src6.lookup(s.into(), w), self.dst6.lookup(t.into(), w)),
            _ => return None,
        };
        let (sport, dport) = match ports_of(p) {
            Some((s, t)) => (self.sport.lookup(s.into(), w), self.dport.lookup(t.into(), w)),
            None => (&self.portless[..], &self.portless[..]),
        };
        for i in 0..w {
            let mut m = dir[i] & proto[i] & src[i] & dst[i] & sport[i] & dport[i];
            while m != 0 {
                let bit = m.trailing_zeros() as usize;
                m &= m - 1;
                if let Some(t) = run(i * 64 + bit) {
                    return Some(t);
                }
            }
        }
        None
    }
}
