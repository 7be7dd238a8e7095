//! Stage 4, rules: the pipeline after the fast path; the first final verdict
//! wins. The router lends the pipeline its per-rule counters, the rate-limit
//! buckets of its state and, when tracing, the tracer ([`RuleHooks`]).

use std::net::IpAddr;
use std::ops::ControlFlow;
use std::time::Instant;

use super::trace::verdict_text;
use super::{BlockAction, BlockReply, DropReason, Packet, ReplyKind, Router, Tracer, Verdict};
use crate::packet::Direction;
use crate::packet::{proto, reply, IcmpError, PacketView};
use crate::policy::{Limit, ProgramRule, RuleContext, RuleHooks, RuleKind, RuleStep, RuleVerdict};
use crate::state::subscriber_key;
use crate::state::State;
use crate::stats::RuleCounters;

/// The pipeline's hooks during one packet.
struct Hooks<'a, T> {
    /// The packet's bytes, for program rules.
    bytes: &'a [u8],
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

    fn program(&mut self, index: usize, rule: &ProgramRule, packet: &PacketView, cx: &RuleContext) -> RuleVerdict {
        let (direction, inside) = match cx.direction {
            Direction::Outbound => (0, packet.src),
            Direction::Inbound => (1, packet.dst),
        };
        let run = self.state.run_program(index, self.bytes, direction, subscriber_key(inside), cx.now);
        match run {
            Some(Ok(v)) => {
                self.tracer.note("program", || format!("{}: returned {}", rule.file, verdict_text(v)));
                v
            }
            fault => {
                self.counters.error(index);
                let v = rule.on_error.verdict();
                self.tracer.note("program", || {
                    let why = match fault {
                        Some(Err(f)) => f.to_string(),
                        _ => "not instantiated".to_string(),
                    };
                    format!("{}: {why}; on_error -> {}", rule.file, verdict_text(v))
                });
                v
            }
        }
    }

    fn step(&mut self, index: usize, rule: &RuleKind, step: RuleStep) {
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
        let cx = RuleContext { direction: p.dir, now: p.now, tunnel: p.tunnel };
        let bytes = &p.buf[..p.view.len.min(p.buf.len())];
        let mut hooks = Hooks { bytes, counters: &self.rule_counters, state: &self.state, tracer: &mut *t };
        let Some((verdict, rule)) = rules.evaluate(&p.view, &cx, &mut hooks) else {
            t.note("rules", || "no final verdict: default forward".into());
            return ControlFlow::Continue(());
        };
        let (v, action) = match verdict {
            RuleVerdict::Drop => (Verdict::Drop(DropReason::RuleDrop), BlockAction::RuleDrop),
            RuleVerdict::Limited => (Verdict::Drop(DropReason::RateLimited), BlockAction::RateLimit),
            RuleVerdict::Reject => (self.reject(p), BlockAction::RuleReject),
            _ => return ControlFlow::Continue(()),
        };
        if p.view.is_tcp_syn() {
            // Only when blocks are noted: a retransmitted SYN is not noted again.
            if let ends @ Some(_) = self.ends(&p.view) {
                if self.first_attempt(p, t) {
                    self.note_block(ends, action, Some(rule), BlockReply::of(v));
                }
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
