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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::rules::{ports_of, ConfigRule, Rule, RuleContext, RuleVerdict};
use crate::packet::PacketView;
use std::net::IpAddr;

/// One rule with its counters.
pub struct Slot {
    /// The rule.
    pub rule: Box<dyn Rule>,
    /// Packets that matched it.
    pub packets: AtomicU64,
    /// Bytes that matched it.
    pub bytes: AtomicU64,
}

enum Stage {
    /// Config rules `first..first + classifier.len` indexed together.
    Indexed { first: usize, classifier: Box<Classifier> },
    /// An opaque rule, evaluated on its own.
    Opaque(usize),
}

/// What the pipeline decided, and which rule decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The final verdict (or `Continue` when no rule decided).
    pub verdict: RuleVerdict,
    /// Index of the deciding rule.
    pub rule: Option<usize>,
}

/// The ordered rules, shared by all workers.
#[derive(Default)]
pub struct Pipeline {
    slots: Vec<Slot>,
    stages: Vec<Stage>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.slots.iter().map(|s| s.rule.describe())).finish()
    }
}

impl Pipeline {
    /// A pipeline of `rules` in order.
    pub fn new(rules: Vec<Box<dyn Rule>>) -> Pipeline {
        let slots: Vec<Slot> =
            rules.into_iter().map(|rule| Slot { rule, packets: AtomicU64::new(0), bytes: AtomicU64::new(0) }).collect();
        let mut stages = Vec::new();
        let mut i = 0;
        while i < slots.len() {
            if slots[i].rule.as_config_rule().is_none() {
                stages.push(Stage::Opaque(i));
                i += 1;
                continue;
            }
            let first = i;
            while i < slots.len() && slots[i].rule.as_config_rule().is_some() {
                i += 1;
            }
            let run: Vec<&ConfigRule> = slots[first..i].iter().filter_map(|s| s.rule.as_config_rule()).collect();
            stages.push(Stage::Indexed { first, classifier: Box::new(Classifier::new(&run)) });
        }
        Pipeline { slots, stages }
    }

    /// Takes the rules back out (counters are dropped).
    pub fn into_rules(self) -> Vec<Box<dyn Rule>> {
        self.slots.into_iter().map(|s| s.rule).collect()
    }

    /// The rules with their counters.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Runs the rules over a packet until one gives a final verdict.
    #[inline]
    pub fn evaluate(&self, p: &PacketView, cx: &RuleContext) -> Outcome {
        for stage in &self.stages {
            let decided = match stage {
                Stage::Opaque(i) => self.run(*i, p, cx),
                Stage::Indexed { first, classifier } => classifier.candidates(p, cx, |i| self.run(first + i, p, cx)),
            };
            if let Some((verdict, rule)) = decided {
                return Outcome { verdict, rule: Some(rule) };
            }
        }
        Outcome { verdict: RuleVerdict::Continue, rule: None }
    }

    /// Runs every rule in order without the index (for traces and tests).
    pub fn evaluate_linear(&self, p: &PacketView, cx: &RuleContext) -> Outcome {
        for i in 0..self.slots.len() {
            if let Some((verdict, rule)) = self.run(i, p, cx) {
                return Outcome { verdict, rule: Some(rule) };
            }
        }
        Outcome { verdict: RuleVerdict::Continue, rule: None }
    }

    #[inline]
    fn run(&self, i: usize, p: &PacketView, cx: &RuleContext) -> Option<(RuleVerdict, usize)> {
        let slot = &self.slots[i];
        let v = slot.rule.evaluate(p, cx);
        if v != RuleVerdict::NoMatch {
            slot.packets.fetch_add(1, Ordering::Relaxed);
            slot.bytes.fetch_add(p.len as u64, Ordering::Relaxed);
        }
        v.is_final().then_some((v, i))
    }
}

/// Shared handle used by the router.
pub type SharedPipeline = Arc<Pipeline>;

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
