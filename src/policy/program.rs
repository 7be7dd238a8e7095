//! Program rules: a config rule whose decision is made by a WebAssembly
//! program loaded at start or reload (`program = "rules/limit.wasm"`), run by
//! the wasmi interpreter. Why WebAssembly and not eBPF: docs/RUNTIME-RULES.md.
//!
//! The policy holds the validated, compiled [`Program`]; each [`crate::state::State`]
//! holds an instance of it (crate::state::program) (its linear memory and its map), which a reload of
//! the same program under the same name carries over.
//!
//! What a program must be, checked at load so that a bad one is refused with
//! one line: at most [`MAX_PROGRAM_BYTES`]; a valid module; it exports
//! `rule(packet: i32, len: i32, direction: i32, subscriber: i64, now_ms: i64) -> i32`,
//! its `memory` and the `__heap_base` global (where op25b copies the packet);
//! it imports nothing but op25b's map helpers (module `op25b`:
//! `map_get(key: i64) -> i64`, `map_set(key: i64, value: i64) -> i32`,
//! `map_delete(key: i64)`); its memory is at most [`MAX_MEMORY_BYTES`].
//! At run time each call gets [`FUEL`] units of fuel (about one per
//! instruction); running out, or any trap, is a fault: the rule answers its
//! `on_error` verdict and counts an error.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use wasmi::{Engine, ExternType, FuncType, Module, ValType};

use super::rules::{ConfigRule, Rule, RuleVerdict};

/// Largest program file accepted.
pub const MAX_PROGRAM_BYTES: usize = 1 << 20;
/// Largest linear memory a program may have or grow to.
pub const MAX_MEMORY_BYTES: usize = 16 << 20;
/// Room after `__heap_base` for the packet copied in.
pub const PACKET_ROOM: usize = 65_536;
/// Fuel per call: a program that needs more is stopped (a fault).
pub const FUEL: u64 = 100_000;
/// Entries of a program's map when the config does not say.
pub const DEFAULT_MAP_SIZE: usize = 65_536;
/// Most entries a program's map may be given.
pub const MAX_MAP_SIZE: usize = 1 << 22;

/// What a program's return value means.
pub mod code {
    /// The rule does not apply (not counted); go on with the next.
    pub const CONTINUE: i32 = 0;
    /// The rule applies (counted) and decides nothing.
    pub const COUNT: i32 = 1;
    /// Forward, skipping later rules.
    pub const ACCEPT: i32 = 2;
    /// Drop silently.
    pub const DROP: i32 = 3;
    /// Drop and answer (TCP RST, ICMP prohibited).
    pub const REJECT: i32 = 4;
}

/// The verdict of a program's return value; `None` for a value that is none.
pub fn verdict_of(code: i32) -> Option<RuleVerdict> {
    Some(match code {
        code::CONTINUE => RuleVerdict::NoMatch,
        code::COUNT => RuleVerdict::Continue,
        code::ACCEPT => RuleVerdict::Accept,
        code::DROP => RuleVerdict::Drop,
        code::REJECT => RuleVerdict::Reject,
        _ => return None,
    })
}

/// Why a program was refused at load.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProgramError {
    /// Larger than `MAX_PROGRAM_BYTES`.
    #[error("the program is {0} bytes, more than the {MAX_PROGRAM_BYTES} allowed")]
    TooLarge(usize),
    /// Not a valid WebAssembly module.
    #[error("not a valid WebAssembly module: {0}")]
    Invalid(String),
    /// An export op25b needs is missing or has the wrong type.
    #[error("{0}")]
    Export(String),
    /// The module imports something op25b does not offer.
    #[error("imports {0}, which op25b does not offer (only op25b.map_get, op25b.map_set, op25b.map_delete)")]
    Import(String),
    /// The module's memory is declared larger than allowed.
    #[error("its memory starts at {0} bytes, more than the {MAX_MEMORY_BYTES} allowed")]
    Memory(u64),
    /// The module could not be instantiated.
    #[error("cannot be instantiated: {0}")]
    Instantiate(String),
}

/// A validated program, ready to instantiate.
pub struct Program {
    engine: Engine,
    module: Module,
    /// A hash of the program's bytes: a reload keeps the instance of the same program.
    pub digest: u64,
    /// Entries of its map.
    pub map_size: usize,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program").field("digest", &self.digest).field("map_size", &self.map_size).finish()
    }
}

fn func(params: &[ValType], results: &[ValType]) -> FuncType {
    FuncType::new(params.iter().copied(), results.iter().copied())
}

/// The helpers op25b offers a program, with their types.
pub(crate) fn helpers() -> [(&'static str, FuncType); 3] {
    use ValType::{I32, I64};
    [("map_get", func(&[I64], &[I64])), ("map_set", func(&[I64, I64], &[I32])), ("map_delete", func(&[I64], &[]))]
}

impl Program {
    /// Validates and compiles `bytes`, with a map of `map_size` entries.
    pub(crate) fn load(bytes: &[u8], map_size: usize) -> Result<Program, ProgramError> {
        use ValType::{I32, I64};
        if bytes.len() > MAX_PROGRAM_BYTES {
            return Err(ProgramError::TooLarge(bytes.len()));
        }
        let mut config = wasmi::Config::default();
        config.consume_fuel(true);
        let engine = Engine::new(&config);
        let module = Module::new(&engine, bytes).map_err(|e| ProgramError::Invalid(one_line(&e.to_string())))?;
        let helpers = helpers();
        for import in module.imports() {
            let offered = import.module() == "op25b"
                && helpers
                    .iter()
                    .any(|(name, ty)| *name == import.name() && matches!(import.ty(), ExternType::Func(f) if f == ty));
            if !offered {
                return Err(ProgramError::Import(format!("{}.{}", import.module(), import.name())));
            }
        }
        let want_rule = func(&[I32, I32, I32, I64, I64], &[I32]);
        let (mut rule, mut memory, mut heap_base) = (false, false, false);
        for export in module.exports() {
            match (export.name(), export.ty()) {
                ("rule", ExternType::Func(f)) if *f == want_rule => rule = true,
                ("rule", _) => {
                    return Err(ProgramError::Export(
                        "exports `rule` with the wrong type: it must be (i32 packet, i32 len, i32 direction, \
                         i64 subscriber, i64 now_ms) -> i32"
                            .into(),
                    ))
                }
                ("memory", ExternType::Memory(m)) => {
                    let start = m.minimum().saturating_mul(65_536);
                    if start > MAX_MEMORY_BYTES as u64 {
                        return Err(ProgramError::Memory(start));
                    }
                    memory = true;
                }
                ("__heap_base", ExternType::Global(g)) if g.content() == I32 => heap_base = true,
                _ => {}
            }
        }
        for (ok, what) in [
            (rule, "a function `rule`"),
            (memory, "its `memory`"),
            (heap_base, "the global `__heap_base` (link with -Wl,--export=__heap_base)"),
        ] {
            if !ok {
                return Err(ProgramError::Export(format!("does not export {what}")));
            }
        }
        let digest = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            map_size.hash(&mut h);
            h.finish()
        };
        // The config instantiates it once more, on trial (crate::state::program).
        Ok(Program { engine, module, digest, map_size })
    }

    /// The engine and module, for instantiating.
    pub(crate) fn parts(&self) -> (&Engine, &Module) {
        (&self.engine, &self.module)
    }
}

/// A message on one line (the runtime's may span several).
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What a program rule answers when its program faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Not a match: go on with the next rule (the default).
    Continue,
    /// Forward.
    Accept,
    /// Drop.
    Drop,
    /// Drop and answer.
    Reject,
}

impl OnError {
    /// Parses a config value.
    pub fn parse(s: &str) -> Option<OnError> {
        Some(match s {
            "continue" => OnError::Continue,
            "accept" => OnError::Accept,
            "drop" => OnError::Drop,
            "reject" => OnError::Reject,
            _ => return None,
        })
    }

    /// The verdict it stands for.
    pub fn verdict(self) -> RuleVerdict {
        match self {
            OnError::Continue => RuleVerdict::NoMatch,
            OnError::Accept => RuleVerdict::Accept,
            OnError::Drop => RuleVerdict::Drop,
            OnError::Reject => RuleVerdict::Reject,
        }
    }

    /// The config's spelling.
    pub fn name(self) -> &'static str {
        match self {
            OnError::Continue => "continue",
            OnError::Accept => "accept",
            OnError::Drop => "drop",
            OnError::Reject => "reject",
        }
    }
}

/// A config rule whose matching fields pick the packets a program then judges.
#[derive(Debug)]
pub struct ProgramRule {
    /// The cheap fields (its action is unused).
    pub matcher: ConfigRule,
    /// The program file as the config names it (for messages).
    pub file: String,
    /// The program.
    pub program: Arc<Program>,
    /// The verdict when the program faults.
    pub on_error: OnError,
}

impl ProgramRule {
    /// A one-line description for `op25b check`.
    pub fn describe(&self) -> String {
        let fields = self.matcher.describe();
        let fields = fields.rsplit_once(" -> ").map_or(fields.as_str(), |(f, _)| f);
        format!("{fields} -> program {} (map {}, on_error {})", self.file, self.program.map_size, self.on_error.name())
    }
}
