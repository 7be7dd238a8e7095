//! The live instance of a program rule's [`Program`]: its store (linear
//! memory, globals) and its map, which op25b owns and sizes. The state holds
//! one per program rule, behind a lock, and a reload of the same program
//! carries it over; the config instantiates each program once on trial, so
//! that what fails here fails at load ([`trial`]).
//!
//! A call copies the packet to `__heap_base`, refuels, and calls `rule`. It
//! allocates nothing: the map is a `HashMap` made with room for all its
//! entries and refuses an insert beyond them.

use std::collections::HashMap;
use std::time::Instant;

use wasmi::{Caller, Func, Linker, Memory, Store, StoreLimits, StoreLimitsBuilder, TypedFunc, Val};

use crate::policy::program::{helpers, one_line, verdict_of, Program, FUEL, MAX_MEMORY_BYTES, PACKET_ROOM};
use crate::policy::{ProgramError, RuleVerdict};

/// Instantiates `program` once and drops it: what fails here (memory, a
/// start function) fails when the config is loaded, not in the data plane.
pub fn trial(program: &Program) -> Result<(), ProgramError> {
    Instance::new(program).map(drop).map_err(|e| ProgramError::Instantiate(one_line(&e)))
}

/// What a program's helpers reach: its map, and the limits of its store.
struct Data {
    map: HashMap<u64, u64, ahash::RandomState>,
    capacity: usize,
    limits: StoreLimits,
}

/// Why a call of a program failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// It used up its fuel (its instruction budget).
    Budget,
    /// It trapped (out-of-bounds access, unreachable, division by zero, ...).
    Trap,
    /// It returned a value that is not a verdict.
    BadVerdict(i32),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Budget => f.write_str("instruction budget exceeded"),
            Fault::Trap => f.write_str("trapped"),
            Fault::BadVerdict(v) => write!(f, "returned {v}, not a verdict (0 to 4)"),
        }
    }
}

/// A live program.
pub struct Instance {
    store: Store<Data>,
    rule: TypedFunc<(i32, i32, i32, i64, i64), i32>,
    memory: Memory,
    base: usize,
    /// Time zero of `now_ms`: the first packet this instance saw (the core
    /// reads no clock), kept with the instance over a reload.
    epoch: Option<Instant>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").field("map_entries", &self.store.data().map.len()).finish()
    }
}

impl Instance {
    /// Instantiates `program` with an empty map.
    pub fn new(program: &Program) -> Result<Instance, String> {
        let (engine, module) = program.parts();
        let data = Data {
            map: HashMap::with_capacity_and_hasher(program.map_size, ahash::RandomState::new()),
            capacity: program.map_size,
            limits: StoreLimitsBuilder::new().memory_size(MAX_MEMORY_BYTES).instances(1).build(),
        };
        let mut store = Store::new(engine, data);
        store.limiter(|d| &mut d.limits);
        let mut linker = Linker::<Data>::new(engine);
        for (name, ty) in helpers() {
            let f = match name {
                "map_get" => Func::wrap(&mut store, |c: Caller<'_, Data>, k: i64| -> i64 {
                    c.data().map.get(&(k as u64)).map_or(0, |v| *v as i64)
                }),
                "map_set" => Func::wrap(&mut store, |mut c: Caller<'_, Data>, k: i64, v: i64| -> i32 {
                    let d = c.data_mut();
                    if d.map.len() >= d.capacity && !d.map.contains_key(&(k as u64)) {
                        return -1;
                    }
                    d.map.insert(k as u64, v as u64);
                    0
                }),
                _ => Func::wrap(&mut store, |mut c: Caller<'_, Data>, k: i64| {
                    c.data_mut().map.remove(&(k as u64));
                }),
            };
            debug_assert_eq!(f.ty(&store), ty);
            linker.define("op25b", name, f).map_err(|e| e.to_string())?;
        }
        let instance = linker.instantiate_and_start(&mut store, module).map_err(|e| e.to_string())?;
        let rule = instance.get_typed_func(&store, "rule").map_err(|e| e.to_string())?;
        let memory = instance.get_memory(&store, "memory").ok_or("no memory")?;
        let base = match instance.get_global(&store, "__heap_base").map(|g| g.get(&store)) {
            Some(Val::I32(b)) => b as u32 as usize,
            _ => return Err("no __heap_base".into()),
        };
        let need = base.checked_add(PACKET_ROOM).ok_or("__heap_base out of range")?;
        let have = memory.data(&store).len();
        if need > have {
            let pages = (need - have).div_ceil(65_536) as u64;
            memory.grow(&mut store, pages).map_err(|e| format!("cannot make room for the packet: {e}"))?;
        }
        Ok(Instance { store, rule, memory, base, epoch: None })
    }

    /// Runs the program on one packet.
    pub fn run(&mut self, packet: &[u8], direction: i32, subscriber: u64, now: Instant) -> Result<RuleVerdict, Fault> {
        let epoch = *self.epoch.get_or_insert(now);
        let now_ms = now.saturating_duration_since(epoch).as_millis() as i64;
        let len = packet.len().min(PACKET_ROOM);
        // The room was made at instantiation and memory never shrinks.
        let Some(room) = self.memory.data_mut(&mut self.store).get_mut(self.base..self.base + len) else {
            return Err(Fault::Trap);
        };
        room.copy_from_slice(&packet[..len]);
        self.store.set_fuel(FUEL).map_err(|_| Fault::Trap)?;
        let args = (self.base as i32, len as i32, direction, subscriber as i64, now_ms);
        match self.rule.call(&mut self.store, args) {
            Ok(code) => verdict_of(code).ok_or(Fault::BadVerdict(code)),
            Err(e) if e.as_trap_code() == Some(wasmi::TrapCode::OutOfFuel) => Err(Fault::Budget),
            Err(_) => Err(Fault::Trap),
        }
    }

    /// Entries in its map.
    pub fn map_len(&self) -> usize {
        self.store.data().map.len()
    }
}
