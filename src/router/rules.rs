//! Stage 4, rules: the pipeline after the fast path; the first final verdict
//! wins. The router lends the pipeline its per-rule counters, the rate-limit
//! buckets of its state and, when tracing, the tracer ([`RuleHooks`]).

use std::net::IpAddr;
use std::ops::ControlFlow;
use std::time::Instant;

use super::trace::verdict_text;
use super::{DropReason, Packet, ReplyKind, Router, Tracer, Verdict};
use crate::packet::{proto, reply, IcmpError, PacketView};
use crate::policy::{Limit, Rule, RuleContext, RuleHooks, RuleStep, RuleVerdict};
use crate::state::State;
use crate::stats::RuleCounters;

/// The pipeline's hooks during one packet.
struct Hooks<'a, T> {
    counters: &'a RuleCounters,
    state: &'a State,
    tracer: &'a mut T,
}

impl<T: Tracer> RuleHooks for Hooks<'_, T> {
    const TRACE: bool = T::ON;

    #[inline]
    fn matched(&mut self, index: usize, bytes: usize) {
        self.counters.count(index, bytes);
    }

    fn allow(&mut self, index: usize, _limit: Limit, packet: &PacketView, now: Instant) -> bool {
        let src: IpAddr = packet.src;
        self.state.allow_rule(index, src, now)
    }

    fn step(&mut self, index: usize, rule: &dyn Rule, step: RuleStep) {
        self.tracer.note("rule", || match step {
            RuleStep::NoMatch(Some(field)) => format!("#{} {}: no match ({field})", index + 1, rule.name()),
            RuleStep::NoMatch(None) => format!("#{} {}: no match", index + 1, rule.name()),
            RuleStep::Matched(v) => format!("#{} {}: {}", index + 1, rule.name(), verdict_text(v)),
        });
    }
}

impl Router {
    #[inline]
    pub(super) fn rules<T: Tracer>(&self, p: &mut Packet<'_>, t: &mut T) -> ControlFlow<Verdict> {
        let rules = &self.policy.rules;
        if rules.is_empty() {
            return ControlFlow::Continue(());
        }
        let cx = RuleContext { direction: p.dir, now: p.now };
        let mut hooks = Hooks { counters: &self.rule_counters, state: &self.state, tracer: &mut *t };
        let Some((verdict, rule)) = rules.evaluate(&p.view, &cx, &mut hooks) else {
            t.note("rules", || "no final verdict: default forward".into());
            return ControlFlow::Continue(());
        };
        let (v, action) = match verdict {
            RuleVerdict::Drop => (Verdict::Drop(DropReason::RuleDrop), "drop"),
            RuleVerdict::Limited => (Verdict::Drop(DropReason::RateLimited), "rate-limit"),
            RuleVerdict::Reject => (self.reject(p), "reject"),
            _ => return ControlFlow::Continue(()),
        };
        if p.view.is_tcp_syn() {
            if let ends @ Some(_) = self.ends(&p.view) {
                self.note_block(ends, action, Some(rule), super::reply_name(v));
            }
        }
        ControlFlow::Break(v)
    }

    /// A rule's reject: an RST for TCP, ICMP administratively prohibited otherwise.
    fn reject(&self, p: &mut Packet<'_>) -> Verdict {
        if p.view.protocol == proto::TCP {
            if !reply::rst_allowed(&p.view) {
                return Verdict::Drop(DropReason::RuleReject);
            }
            return self.rst(p, DropReason::RuleReject);
        }
        if !reply::icmp_allowed(&p.view) {
            return Verdict::Drop(DropReason::RuleReject);
        }
        self.icmp(p, IcmpError::Prohibited, ReplyKind::Prohibited, DropReason::RuleReject)
    }
}
