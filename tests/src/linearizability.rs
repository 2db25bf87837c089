//! Linearizability checker for key/value histories recorded by randomized cluster tests.
//!
//! A history is a list of operations, each with an invocation time (`call`), a return time
//! (`ret`, `None` when the client never got an answer) and the answer it got. The history is
//! linearizable if every operation can be given a single instant inside `[call, ret]` such that
//! replaying the operations in the order of those instants through a sequential key/value store
//! gives exactly the recorded answers. An unanswered operation has `ret = +∞`: it may take effect
//! at any instant after its call, or never.
//!
//! # Algorithm
//!
//! Wing & Gong's search with Lowe's "just-in-time" linearization and memoization, the approach of
//! the Porcupine checker (implemented here from the papers):
//!
//! * Calls and returns become entries of one doubly linked list sorted by time (on equal times
//!   calls come first, so touching intervals count as overlapping, which can only allow more
//!   orders, never reject a good history).
//! * The search walks the list from its head. At a call entry it tries to linearize that
//!   operation next: if the sequential model accepts it from the current state, the operation's
//!   call and return entries are unlinked from the list, the previous state is pushed on a stack,
//!   and the walk restarts at the head. At a return entry the operation it belongs to was not
//!   linearized before it returned, so the last choice is undone (entries relinked in reverse
//!   order, state popped) and the walk goes on after the undone call.
//! * A (set of linearized operations, search state) pair fully determines what the rest of the
//!   search can do, so each pair is explored once: a pair seen before is a known dead end. The
//!   search state is the model's value plus the flag of the pruning rule below.
//! * The search succeeds as soon as every *answered* operation is linearized; unanswered ones left
//!   over are the ones that never took effect. It fails when it must undo with an empty stack.
//! * An unanswered operation is placed only where it changes the value and the next operation
//!   placed is not a put: otherwise leaving it out is equivalent. This keeps many timed-out writes
//!   on one key from making the search try every subset of them.
//!
//! The problem is NP-complete in general: k *answered* operations that all overlap one another
//! can still cost up to 2^k steps, so a key with a score of them in flight at once may exhaust the
//! budget, giving [`Verdict::Unknown`]. Histories from a few concurrent clients stay cheap.
//!
//! # Per-key checking
//!
//! Every operation reads or writes exactly one key, and the keys are independent registers, so
//! each key is an object of its own. Linearizability is a local property (Herlihy & Wing): a
//! history is linearizable if and only if the subhistory of each object is. Checking each key on
//! its own is therefore exact, not an approximation, and it keeps the searched state space to the
//! operations of one key at a time.
//!
//! # Recording rules
//!
//! * `call` must be taken before the request is sent and `ret` after its answer arrived (a wider
//!   interval is always safe; a narrower one can report false violations).
//! * An operation that *definitely* did not take effect (the server refused it before proposing
//!   it, e.g. a validation error or "not the leader" answered without forwarding) must be left out
//!   of the history ([`Recorder::discard`]); recording it as a completed put would be wrong, and as
//!   an unknown one merely weakens the check.
//! * An operation whose outcome is unknown (timeout, connection lost, "maybe committed" errors)
//!   gets `ret: None, output: None` ([`Recorder::finish_unknown`]): it may be linearized anywhere
//!   after its call, or never. An operation with a `ret` but no `output` is treated the same way,
//!   since it too may still take effect after the client gave up. Unanswered gets are dropped: they
//!   constrain nothing.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// What a client asked for, on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvInput {
    /// Set the value; `None` deletes the key.
    Put(Option<Vec<u8>>),
    /// Set the value to `new` (`None` deletes) if the current value is `expected` (`None` = the
    /// key must be absent).
    Cas { expected: Option<Vec<u8>>, new: Option<Vec<u8>> },
    /// Read the value.
    Get,
}

/// What the server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOutput {
    /// Answer to a [`KvInput::Put`].
    Ok,
    /// Answer to a [`KvInput::Cas`]: `true` = applied, `false` = the condition did not hold.
    Cas(bool),
    /// Answer to a [`KvInput::Get`]: the value, `None` if the key is absent.
    Value(Option<Vec<u8>>),
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvOp {
    pub client: usize,
    pub key: String,
    /// Invocation time (ns from any fixed base, same monotonic clock for the whole history).
    pub call: u64,
    /// Return time; `None` if no answer ever came (the operation may or may not have happened).
    pub ret: Option<u64>,
    pub input: KvInput,
    /// The answer; `None` when the outcome is unknown.
    pub output: Option<KvOutput>,
}

/// Result of [`check_kv`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// The operations on `key` admit no linearization (or are malformed, which the explanation
    /// says).
    NotLinearizable {
        key: String,
        explanation: String,
    },
    /// The search on `key` ran out of budget before deciding (and no key was found
    /// non-linearizable).
    Unknown {
        key: String,
    },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::NotLinearizable { key, explanation } => {
                write!(f, "key {key:?} is not linearizable: {explanation}")
            }
            Verdict::Unknown { key } => write!(f, "key {key:?}: search budget exhausted, verdict unknown"),
        }
    }
}

/// Checks `history` key by key. `budget_per_key` bounds the search steps (one attempt to
/// linearize an operation, or one undo) spent on each key; a key that needs more yields
/// [`Verdict::Unknown`] unless another key is found non-linearizable. Indices in explanations
/// (`#i`) are positions in `history`.
pub fn check_kv(history: &[KvOp], budget_per_key: u64) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        by_key.entry(op.key.as_str()).or_default().push(index);
    }
    let mut exhausted: Option<&str> = None;
    for (key, indices) in by_key {
        match check_key(history, &indices, budget_per_key) {
            KeyResult::Linearizable => {}
            KeyResult::Exhausted => {
                exhausted.get_or_insert(key);
            }
            KeyResult::Violation(explanation) => {
                return Verdict::NotLinearizable { key: key.to_string(), explanation };
            }
        }
    }
    match exhausted {
        Some(key) => Verdict::Unknown { key: key.to_string() },
        None => Verdict::Linearizable,
    }
}

/// Records a history from concurrent tasks. Cloning shares the history.
///
/// Call [`Recorder::start`] right before sending a request, then exactly one of
/// [`Recorder::finish`] (answered), [`Recorder::finish_unknown`] (no answer / outcome unknown) or
/// [`Recorder::discard`] (definitely not applied). An operation started and never finished (task
/// cancelled, handle dropped) stays recorded as unknown, which is the safe reading.
#[derive(Clone, Debug)]
pub struct Recorder {
    base: Instant,
    ops: Arc<Mutex<Vec<Option<KvOp>>>>,
}

/// An operation started on a [`Recorder`]; give it back to the same recorder to finish it.
#[must_use = "finish the operation with finish, finish_unknown or discard"]
#[derive(Debug)]
pub struct OpHandle {
    index: usize,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder { base: Instant::now(), ops: Arc::new(Mutex::new(Vec::new())) }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn with_ops<T>(&self, f: impl FnOnce(&mut Vec<Option<KvOp>>) -> T) -> T {
        let mut ops = self.ops.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut ops)
    }

    /// Records the invocation of `input` on `key` by `client`, timestamped now.
    pub fn start(&self, client: usize, key: impl Into<String>, input: KvInput) -> OpHandle {
        let key = key.into();
        let call = self.now();
        self.with_ops(|ops| {
            ops.push(Some(KvOp { client, key, call, ret: None, input, output: None }));
            OpHandle { index: ops.len() - 1 }
        })
    }

    /// Records the answer `output`, timestamped now.
    pub fn finish(&self, op: OpHandle, output: KvOutput) {
        let ret = self.now();
        self.with_ops(|ops| {
            if let Some(Some(entry)) = ops.get_mut(op.index) {
                entry.ret = Some(ret);
                entry.output = Some(output);
            }
        });
    }

    /// The operation got no answer (or an answer that does not say whether it applied): it may
    /// take effect at any time after its call, or never.
    pub fn finish_unknown(&self, op: OpHandle) {
        let _ = op;
    }

    /// The operation definitely did not take effect: removes it from the history.
    pub fn discard(&self, op: OpHandle) {
        self.with_ops(|ops| {
            if let Some(slot) = ops.get_mut(op.index) {
                *slot = None;
            }
        });
    }

    /// A copy of the history recorded so far (unfinished operations as unknown).
    pub fn history(&self) -> Vec<KvOp> {
        self.with_ops(|ops| ops.iter().flatten().cloned().collect())
    }

    /// [`check_kv`] on [`Recorder::history`].
    pub fn check(&self, budget_per_key: u64) -> Verdict {
        check_kv(&self.history(), budget_per_key)
    }
}

// ---------------------------------------------------------------------------------------------
// One key.

/// Interned value id: `ABSENT` or 1 + index into `Interner::values`.
type ValueId = u32;
const ABSENT: ValueId = 0;

/// An operation of one key with its values interned and its outcome normalized.
#[derive(Clone, Copy, Debug)]
enum Step {
    Put {
        value: ValueId,
    },
    /// `outcome` is `None` when unknown: the condition decides.
    Cas {
        expected: ValueId,
        new: ValueId,
        outcome: Option<bool>,
    },
    Get {
        value: ValueId,
    },
}

#[derive(Clone, Copy, Debug)]
struct Op {
    /// Index in the whole history.
    global: usize,
    call: u64,
    /// `None` = +∞ (outcome unknown).
    ret: Option<u64>,
    step: Step,
}

/// The sequential model: the state after `step` from `state`, or `None` if the recorded answer
/// is impossible from `state`.
fn apply(state: ValueId, step: Step) -> Option<ValueId> {
    match step {
        Step::Put { value } => Some(value),
        Step::Cas { expected, new, outcome } => match (outcome, state == expected) {
            (Some(true) | None, true) => Some(new),
            (Some(false) | None, false) => Some(state),
            (Some(true), false) | (Some(false), true) => None,
        },
        Step::Get { value } => (state == value).then_some(state),
    }
}

enum KeyResult {
    Linearizable,
    Exhausted,
    Violation(String),
}

struct Interner<'a> {
    ids: HashMap<&'a [u8], ValueId>,
    values: Vec<&'a [u8]>,
}

impl<'a> Interner<'a> {
    fn id(&mut self, value: &'a Option<Vec<u8>>) -> ValueId {
        let Some(bytes) = value else { return ABSENT };
        let next = ValueId::try_from(self.values.len() + 1).unwrap_or(ValueId::MAX);
        *self.ids.entry(bytes.as_slice()).or_insert_with(|| {
            self.values.push(bytes.as_slice());
            next
        })
    }

    fn value(&self, id: ValueId) -> Option<&'a [u8]> {
        let index = usize::try_from(id).ok()?.checked_sub(1)?;
        self.values.get(index).copied()
    }
}

fn check_key(history: &[KvOp], indices: &[usize], budget: u64) -> KeyResult {
    let mut interner = Interner { ids: HashMap::new(), values: Vec::new() };
    let mut ops = Vec::with_capacity(indices.len());
    for &global in indices {
        let op = &history[global];
        if op.ret.is_some_and(|ret| ret < op.call) {
            return KeyResult::Violation(format!(
                "malformed operation {}: returns before its call",
                describe(global, op)
            ));
        }
        // An operation without an answer may still take effect after the client gave up.
        let ret = if op.output.is_some() { op.ret } else { None };
        let step = match (&op.input, &op.output) {
            (KvInput::Put(value), None | Some(KvOutput::Ok)) => Step::Put { value: interner.id(value) },
            (KvInput::Cas { expected, new }, None) => {
                Step::Cas { expected: interner.id(expected), new: interner.id(new), outcome: None }
            }
            (KvInput::Cas { expected, new }, Some(KvOutput::Cas(applied))) => {
                Step::Cas { expected: interner.id(expected), new: interner.id(new), outcome: Some(*applied) }
            }
            // An unanswered get constrains nothing.
            (KvInput::Get, None) => continue,
            (KvInput::Get, Some(KvOutput::Value(value))) => Step::Get { value: interner.id(value) },
            _ => {
                return KeyResult::Violation(format!(
                    "malformed operation {}: output does not match input",
                    describe(global, op)
                ))
            }
        };
        ops.push(Op { global, call: op.call, ret, step });
    }
    match search(&ops, budget) {
        Search::Linearizable => KeyResult::Linearizable,
        Search::Exhausted => KeyResult::Exhausted,
        Search::Stuck { best } => KeyResult::Violation(explain(history, &ops, &interner, &best)),
    }
}

// ---------------------------------------------------------------------------------------------
// The search.

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// The call/return entries of one key's operations, as a doubly linked list in time order.
/// Node 0 is the head sentinel.
struct List {
    /// Operation (index into the key's ops) of each node.
    op: Vec<usize>,
    is_call: Vec<bool>,
    /// For a call node, its return node (`NIL` for an unanswered operation).
    ret_node: Vec<usize>,
    prev: Vec<usize>,
    next: Vec<usize>,
}

impl List {
    fn new(ops: &[Op]) -> List {
        // (time, 0 = call / 1 = return, op): calls first on equal times.
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * ops.len());
        for (index, op) in ops.iter().enumerate() {
            events.push((op.call, 0, index));
            if let Some(ret) = op.ret {
                events.push((ret, 1, index));
            }
        }
        events.sort_unstable();
        let nodes = events.len() + 1;
        let mut list = List {
            op: vec![NIL; nodes],
            is_call: vec![false; nodes],
            ret_node: vec![NIL; nodes],
            prev: (0..nodes).map(|n| n.wrapping_sub(1)).collect(),
            next: (1..=nodes).map(|n| if n == nodes { NIL } else { n }).collect(),
        };
        let mut call_node = vec![NIL; ops.len()];
        for (position, &(_, kind, op)) in events.iter().enumerate() {
            let node = position + 1;
            list.op[node] = op;
            if kind == 0 {
                list.is_call[node] = true;
                call_node[op] = node;
            } else {
                list.ret_node[call_node[op]] = node;
            }
        }
        list
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next != NIL {
            self.prev[next] = node;
        }
    }

    /// Removes a call node and its return node.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        if self.ret_node[call] != NIL {
            self.unlink(self.ret_node[call]);
        }
    }

    /// Undoes the latest [`List::lift`] still in effect, which must be of `call`.
    fn unlift(&mut self, call: usize) {
        if self.ret_node[call] != NIL {
            self.relink(self.ret_node[call]);
        }
        self.relink(call);
    }
}

/// The set of linearized operations.
struct Bits(Vec<u64>);

impl Bits {
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

enum Search {
    Linearizable,
    Exhausted,
    /// No linearization; `best` is the longest linearizable prefix met (ops in order).
    Stuck {
        best: Vec<usize>,
    },
}

/// Search state besides the linearized set: the model's value, and whether the last linearized
/// operation is an unanswered one that changed it (see [`search`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct State {
    value: ValueId,
    unanswered_effect: bool,
}

/// Wing & Gong / Lowe search over one key's operations (see the module documentation).
///
/// Two rules prune placements of unanswered operations (ret = +∞) without losing any
/// linearization, since an unanswered operation may always be left out instead:
/// 1. one that would not change the value is not placed (leaving it out is the same);
/// 2. right after one that changed the value, no put is placed (the put hides the effect, so
///    leaving the unanswered one out gives the same values everywhere).
///
/// Any linearization can be turned into one obeying both by dropping offending unanswered
/// operations one at a time. Without the rules, k unanswered writes made the search visit up to
/// 2^k subsets of them; with them, an unanswered write is placed only right before an operation
/// that observes it.
fn search(ops: &[Op], budget: u64) -> Search {
    let mut list = List::new(ops);
    let mut linearized = Bits(vec![0; ops.len().div_ceil(64)]);
    // Explored (linearized set, state) pairs; few states per set, so a list per set.
    let mut seen: HashMap<Vec<u64>, Vec<State>> = HashMap::new();
    // (call node, state before it) of each linearized operation, in order.
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut best: Vec<usize> = Vec::new();
    let mut best_len = 0;
    // The stack grew past `best` and `best` is not updated yet (done lazily, before the next undo).
    let mut best_stale = false;
    let mut state = State { value: ABSENT, unanswered_effect: false };
    let mut answered_left = ops.iter().filter(|op| op.ret.is_some()).count();
    let mut node = list.next[HEAD];
    let mut steps: u64 = 0;
    loop {
        if answered_left == 0 {
            return Search::Linearizable;
        }
        if steps >= budget {
            return Search::Exhausted;
        }
        steps += 1;
        // While an answered operation is left, its return node lies ahead, so `NIL` is not met;
        // it is handled like a return node anyway.
        if node != NIL && list.is_call[node] {
            let op = list.op[node];
            if let Some(after) = next_state(state, &ops[op]) {
                linearized.set(op);
                let fresh = match seen.get_mut(linearized.0.as_slice()) {
                    Some(states) if states.contains(&after) => false,
                    Some(states) => {
                        states.push(after);
                        true
                    }
                    None => {
                        seen.insert(linearized.0.clone(), vec![after]);
                        true
                    }
                };
                if fresh {
                    stack.push((node, state));
                    if stack.len() > best_len {
                        best_len = stack.len();
                        best_stale = true;
                    }
                    state = after;
                    list.lift(node);
                    if ops[op].ret.is_some() {
                        answered_left -= 1;
                    }
                    node = list.next[HEAD];
                    continue;
                }
                linearized.clear(op);
            }
            node = list.next[node];
        } else {
            // The operation returning here was not linearized in time: undo the last choice.
            if best_stale {
                best = stack.iter().map(|&(call, _)| list.op[call]).collect();
                best_stale = false;
            }
            let Some((call, before)) = stack.pop() else {
                return Search::Stuck { best };
            };
            let op = list.op[call];
            linearized.clear(op);
            state = before;
            list.unlift(call);
            if ops[op].ret.is_some() {
                answered_left += 1;
            }
            node = list.next[call];
        }
    }
}

/// The state after placing `op` next, or `None` if it cannot or need not be placed there.
fn next_state(state: State, op: &Op) -> Option<State> {
    if state.unanswered_effect && matches!(op.step, Step::Put { .. }) {
        return None;
    }
    let value = apply(state.value, op.step)?;
    match op.ret {
        Some(_) => Some(State { value, unanswered_effect: false }),
        None if value == state.value => None,
        None => Some(State { value, unanswered_effect: true }),
    }
}

// ---------------------------------------------------------------------------------------------
// Explanations.

/// Most operations of the best prefix, and of the candidates, listed in an explanation.
const EXPLAIN_OPS_MAX: usize = 8;

fn explain(history: &[KvOp], ops: &[Op], interner: &Interner<'_>, best: &[usize]) -> String {
    let show = |id: ValueId| format_value(interner.value(id));
    let mut state = ABSENT;
    let mut placed = vec![false; ops.len()];
    for &op in best {
        state = apply(state, ops[op].step).unwrap_or(state);
        placed[op] = true;
    }
    let answered = ops.iter().filter(|op| op.ret.is_some()).count();
    let mut text = format!(
        "{} operations ({answered} answered); longest linearizable prefix found has {} of them",
        ops.len(),
        best.len()
    );
    if !best.is_empty() {
        let skipped = best.len().saturating_sub(EXPLAIN_OPS_MAX);
        text.push_str(if skipped > 0 { ", ending with:" } else { ":" });
        if skipped > 0 {
            text.push_str(&format!(" [{skipped} earlier]"));
        }
        for &op in &best[skipped..] {
            text.push_str(&format!("\n  {}", describe(ops[op].global, &history[ops[op].global])));
        }
    }
    text.push_str(&format!("\nvalue after that prefix: {}", show(state)));
    // The answered operation that must be placed first: the earliest return among those left.
    let deadline = (0..ops.len())
        .filter(|&op| !placed[op])
        .filter_map(|op| ops[op].ret.map(|ret| (ret, ops[op].call, op)))
        .min();
    let Some((deadline_ret, _, deadline_op)) = deadline else {
        return text;
    };
    let global = ops[deadline_op].global;
    text.push_str(&format!(
        "\n{} returns at {deadline_ret}, so it or an operation called before then must come next; none \
         can be placed:",
        describe(global, &history[global])
    ));
    let (mut candidates, unanswered): (Vec<usize>, Vec<usize>) = (0..ops.len())
        .filter(|&op| !placed[op] && ops[op].call <= deadline_ret)
        .partition(|&op| ops[op].ret.is_some());
    candidates.sort_by_key(|&op| (ops[op].call, op));
    for &op in candidates.iter().take(EXPLAIN_OPS_MAX) {
        let reason = match (ops[op].step, apply(state, ops[op].step)) {
            (Step::Get { value }, None) => format!("reads {}, but the value is {}", show(value), show(state)),
            (Step::Cas { expected, .. }, None) if state != expected => {
                format!("reports applied, but the value is {}, not {}", show(state), show(expected))
            }
            (Step::Cas { .. }, None) => format!("reports not applied, but the value is {}", show(state)),
            _ => "fits here, but no continuation after it works".to_string(),
        };
        let global = ops[op].global;
        text.push_str(&format!("\n  {}: {reason}", describe(global, &history[global])));
    }
    if candidates.len() > EXPLAIN_OPS_MAX {
        text.push_str(&format!("\n  [{} more]", candidates.len() - EXPLAIN_OPS_MAX));
    }
    if !unanswered.is_empty() {
        text.push_str(&format!(
            "\n  (and {} unanswered operations, which may take effect there or never)",
            unanswered.len()
        ));
    }
    text
}

/// `#index client c [call..ret] input => output`.
fn describe(index: usize, op: &KvOp) -> String {
    let ret = op.ret.map_or_else(|| "∞".to_string(), |ret| ret.to_string());
    let input = match &op.input {
        KvInput::Put(Some(value)) => format!("put {}", format_value(Some(value))),
        KvInput::Put(None) => "delete".to_string(),
        KvInput::Cas { expected, new } => {
            format!("cas {} -> {}", format_value(expected.as_deref()), format_value(new.as_deref()))
        }
        KvInput::Get => "get".to_string(),
    };
    let output = match &op.output {
        None => "unknown".to_string(),
        Some(KvOutput::Ok) => "ok".to_string(),
        Some(KvOutput::Cas(applied)) => if *applied { "applied" } else { "not applied" }.to_string(),
        Some(KvOutput::Value(value)) => format_value(value.as_deref()),
    };
    format!("#{index} client {} [{}..{ret}] {input} => {output}", op.client, op.call)
}

/// Most bytes of a value shown in an explanation.
const VALUE_SHOWN_MAX: usize = 24;

fn format_value(value: Option<&[u8]>) -> String {
    let Some(bytes) = value else { return "absent".to_string() };
    let shown = &bytes[..bytes.len().min(VALUE_SHOWN_MAX)];
    let more = if bytes.len() > shown.len() { format!("…({} bytes)", bytes.len()) } else { String::new() };
    match std::str::from_utf8(shown) {
        Ok(text) if text.chars().all(|c| c.is_ascii_graphic() || c == ' ') => format!("{text:?}{more}"),
        _ => {
            let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}{more}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: u64 = 1_000_000;

    fn v(text: &str) -> Option<Vec<u8>> {
        Some(text.as_bytes().to_vec())
    }

    fn op(client: usize, call: u64, ret: Option<u64>, input: KvInput, output: Option<KvOutput>) -> KvOp {
        KvOp { client, key: "k".to_string(), call, ret, input, output }
    }

    fn put(client: usize, call: u64, ret: u64, value: &str) -> KvOp {
        op(client, call, Some(ret), KvInput::Put(v(value)), Some(KvOutput::Ok))
    }

    fn put_unknown(client: usize, call: u64, value: &str) -> KvOp {
        op(client, call, None, KvInput::Put(v(value)), None)
    }

    fn delete(client: usize, call: u64, ret: u64) -> KvOp {
        op(client, call, Some(ret), KvInput::Put(None), Some(KvOutput::Ok))
    }

    fn get(client: usize, call: u64, ret: u64, value: Option<&str>) -> KvOp {
        op(client, call, Some(ret), KvInput::Get, Some(KvOutput::Value(value.and_then(v))))
    }

    fn cas(
        client: usize,
        call: u64,
        ret: u64,
        expected: Option<&str>,
        new: Option<&str>,
        applied: bool,
    ) -> KvOp {
        op(
            client,
            call,
            Some(ret),
            KvInput::Cas { expected: expected.and_then(v), new: new.and_then(v) },
            Some(KvOutput::Cas(applied)),
        )
    }

    fn assert_linearizable(history: &[KvOp]) {
        let verdict = check_kv(history, BUDGET);
        assert!(verdict.is_linearizable(), "{verdict}\nhistory: {history:#?}");
    }

    fn assert_violation(history: &[KvOp]) -> String {
        match check_kv(history, BUDGET) {
            Verdict::NotLinearizable { explanation, .. } => explanation,
            other => panic!("expected a violation, got {other}\nhistory: {history:#?}"),
        }
    }

    #[test]
    fn empty_and_sequential_histories_pass() {
        assert_linearizable(&[]);
        assert_linearizable(&[
            get(0, 0, 1, None),
            put(0, 2, 3, "a"),
            get(1, 4, 5, Some("a")),
            put(1, 6, 7, "b"),
            get(0, 8, 9, Some("b")),
            delete(0, 10, 11),
            get(1, 12, 13, None),
        ]);
    }

    #[test]
    fn sequential_wrong_read_fails() {
        assert_violation(&[put(0, 0, 1, "a"), get(0, 2, 3, Some("b"))]);
        assert_violation(&[get(0, 0, 1, Some("a"))]);
        assert_violation(&[put(0, 0, 1, "a"), delete(0, 2, 3), get(0, 4, 5, Some("a"))]);
    }

    #[test]
    fn stale_read_fails() {
        // Write 1 completes, then a read that starts later returns the old value.
        let history = [put(0, 0, 10, "old"), put(0, 20, 30, "new"), get(1, 40, 50, Some("old"))];
        let explanation = assert_violation(&history);
        assert!(explanation.contains("longest linearizable prefix found has 2"), "{explanation}");
        assert!(explanation.contains("#2 client 1"), "{explanation}");
        assert!(explanation.contains("reads \"old\", but the value is \"new\""), "{explanation}");
    }

    #[test]
    fn concurrent_overlapping_ops_pass_in_valid_orders() {
        // A read overlapping a write may see either value.
        assert_linearizable(&[put(0, 0, 100, "a"), get(1, 10, 20, None)]);
        assert_linearizable(&[put(0, 0, 100, "a"), get(1, 10, 20, Some("a"))]);
        // Two overlapping reads see old then new, in either real-time arrangement.
        assert_linearizable(&[
            put(0, 0, 5, "a"),
            put(0, 10, 100, "b"),
            get(1, 20, 30, Some("a")),
            get(2, 40, 50, Some("b")),
        ]);
        // Reads that overlap each other may see new then old if both overlap the write.
        assert_linearizable(&[
            put(0, 0, 5, "a"),
            put(0, 10, 100, "b"),
            get(1, 20, 50, Some("b")),
            get(2, 30, 40, Some("a")),
        ]);
        // Concurrent writes: the later read decides their order.
        assert_linearizable(&[put(0, 0, 50, "a"), put(1, 0, 50, "b"), get(2, 60, 70, Some("a"))]);
        assert_linearizable(&[put(0, 0, 50, "a"), put(1, 0, 50, "b"), get(2, 60, 70, Some("b"))]);
        // Touching intervals count as overlapping.
        assert_linearizable(&[put(0, 0, 5, "a"), get(1, 5, 6, None)]);
    }

    #[test]
    fn new_then_old_read_inversion_fails() {
        // Read 1 sees the new value and returns; read 2 starts after and sees the old one.
        let explanation = assert_violation(&[
            put(0, 0, 5, "a"),
            put(0, 10, 100, "b"),
            get(1, 20, 30, Some("b")),
            get(2, 40, 50, Some("a")),
        ]);
        assert!(explanation.contains("#3 client 2"), "{explanation}");
        // Concurrent writes read in both orders by sequential reads.
        assert_violation(&[
            put(0, 0, 50, "a"),
            put(1, 0, 50, "b"),
            get(2, 60, 70, Some("a")),
            get(2, 80, 90, Some("b")),
        ]);
    }

    #[test]
    fn cas_semantics() {
        assert_linearizable(&[
            cas(0, 0, 1, None, Some("a"), true),
            cas(0, 2, 3, None, Some("b"), false),
            cas(0, 4, 5, Some("b"), Some("c"), false),
            cas(0, 6, 7, Some("a"), Some("c"), true),
            get(0, 8, 9, Some("c")),
            cas(0, 10, 11, Some("c"), None, true),
            get(0, 12, 13, None),
        ]);
        // Applied although the key was absent and "a" was expected.
        assert!(assert_violation(&[cas(0, 0, 1, Some("a"), Some("b"), true)]).contains("reports applied"));
        // Not applied although the condition held.
        assert!(assert_violation(&[put(0, 0, 1, "a"), cas(0, 2, 3, Some("a"), Some("b"), false)])
            .contains("reports not applied"));
        // Two concurrent CAS from the same value: at most one may win.
        assert_linearizable(&[
            put(0, 0, 1, "a"),
            cas(1, 2, 10, Some("a"), Some("b"), true),
            cas(2, 2, 10, Some("a"), Some("c"), false),
            get(0, 11, 12, Some("b")),
        ]);
        assert_violation(&[
            put(0, 0, 1, "a"),
            cas(1, 2, 10, Some("a"), Some("b"), true),
            cas(2, 2, 10, Some("a"), Some("c"), true),
        ]);
        // A failed CAS must have seen a value other than the expected one.
        assert_linearizable(&[put(0, 0, 1, "a"), cas(1, 2, 3, None, Some("b"), false), delete(0, 4, 5)]);
        assert_violation(&[delete(0, 0, 1), cas(1, 2, 3, None, Some("b"), false)]);
        // ... unless it overlaps a write that made the condition false.
        assert_linearizable(&[delete(0, 0, 1), cas(1, 2, 5, None, Some("b"), false), put(0, 3, 4, "a")]);
    }

    #[test]
    fn pending_write_may_or_may_not_apply() {
        let base = || vec![put(0, 0, 1, "old"), put_unknown(1, 2, "new")];
        let with = |reads: &[KvOp]| {
            let mut history = base();
            history.extend_from_slice(reads);
            history
        };
        assert_linearizable(&base());
        assert_linearizable(&with(&[get(2, 10, 11, Some("old"))]));
        assert_linearizable(&with(&[get(2, 10, 11, Some("new"))]));
        assert_linearizable(&with(&[get(2, 10, 11, Some("old")), get(2, 20, 21, Some("new"))]));
        assert_linearizable(&with(&[get(2, 10, 11, Some("new")), get(2, 20, 21, Some("new"))]));
        // Once seen, the write cannot be undone.
        assert_violation(&with(&[get(2, 10, 11, Some("new")), get(2, 20, 21, Some("old"))]));
        // It cannot take effect before its call either.
        assert_violation(&[put(0, 0, 1, "old"), get(2, 2, 3, Some("new")), put_unknown(1, 4, "new")]);
        // A pending CAS applies only if its condition holds where it is placed.
        let pending_cas = op(1, 2, None, KvInput::Cas { expected: v("old"), new: v("new") }, None);
        assert_linearizable(&[put(0, 0, 1, "old"), pending_cas.clone(), get(2, 10, 11, Some("new"))]);
        assert_violation(&[put(0, 0, 1, "other"), pending_cas.clone(), get(2, 10, 11, Some("new"))]);
        // An answer-less operation with a return time is unknown too.
        let mut late = put_unknown(1, 2, "new");
        late.ret = Some(3);
        assert_linearizable(&[put(0, 0, 1, "old"), late, get(2, 10, 11, Some("old"))]);
        // Unanswered gets are ignored.
        assert_linearizable(&[op(0, 0, None, KvInput::Get, None), get(1, 1, 2, None)]);
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut history = vec![put(0, 0, 10, "a"), get(1, 20, 30, Some("a"))];
        history.push(KvOp { key: "other".to_string(), ..get(1, 40, 50, Some("a")) });
        match check_kv(&history, BUDGET) {
            Verdict::NotLinearizable { key, .. } => assert_eq!(key, "other"),
            other => panic!("expected a violation on \"other\", got {other}"),
        }
        history.pop();
        history.push(KvOp { key: "other".to_string(), ..put(1, 40, 50, "x") });
        history.push(KvOp { key: "other".to_string(), ..get(0, 60, 70, Some("x")) });
        assert_linearizable(&history);
    }

    #[test]
    fn malformed_operations_are_reported() {
        let explanation = assert_violation(&[op(0, 0, Some(1), KvInput::Get, Some(KvOutput::Ok))]);
        assert!(explanation.contains("malformed"), "{explanation}");
        let explanation = assert_violation(&[put(0, 5, 4, "a")]);
        assert!(explanation.contains("malformed"), "{explanation}");
    }

    #[test]
    fn budget_exhaustion_gives_unknown() {
        let mut history: Vec<KvOp> = (0..10).map(|i| put(i, 0, 100, &format!("v{i}"))).collect();
        history.push(get(99, 200, 201, Some("v3")));
        assert_eq!(check_kv(&history, 5), Verdict::Unknown { key: "k".to_string() });
        assert_linearizable(&history);
        // A violation on another key wins over an unknown.
        history.push(KvOp { key: "j".to_string(), ..get(0, 0, 1, Some("x")) });
        assert!(matches!(check_kv(&history, 5), Verdict::NotLinearizable { key, .. } if key == "j"));
    }

    #[test]
    fn many_unanswered_writes_are_checked_quickly() {
        // 60 timed-out writes, interleaved with reads that see a few of them take effect.
        let mut history = vec![put(0, 0, 1, "init")];
        for i in 0..60 {
            history.push(put_unknown(1 + i, 10 * i as u64 + 2, &format!("v{i}")));
        }
        for (t, value) in [(250, "init"), (300, "v20"), (400, "v20"), (500, "v35"), (700, "v59")] {
            history.push(get(99, t, t + 1, Some(value)));
        }
        assert_linearizable(&history);
        // Reading v20 again after v35 was seen: v20's write cannot take effect twice.
        history.push(get(99, 800, 801, Some("v20")));
        assert_violation(&history);
    }

    #[test]
    fn format_value_shows_text_or_hex() {
        assert_eq!(format_value(None), "absent");
        assert_eq!(format_value(Some(b"ab c")), "\"ab c\"");
        assert_eq!(format_value(Some(&[0, 255])), "0x00ff");
        assert!(format_value(Some(&[b'x'; 40])).ends_with("…(40 bytes)"));
    }

    #[test]
    fn recorder_records_answered_unknown_and_discarded() {
        let recorder = Recorder::new();
        let a = recorder.start(0, "k", KvInput::Put(v("a")));
        let b = recorder.start(1, "k", KvInput::Put(v("b")));
        let c = recorder.start(2, "k", KvInput::Put(v("c")));
        recorder.finish(a, KvOutput::Ok);
        recorder.finish_unknown(b);
        recorder.discard(c);
        let shared = recorder.clone();
        let d = shared.start(3, "k", KvInput::Get);
        shared.finish(d, KvOutput::Value(v("a")));
        let history = recorder.history();
        assert_eq!(history.len(), 3);
        assert_eq!(history[0].output, Some(KvOutput::Ok));
        assert!(history[0].ret.is_some_and(|ret| ret >= history[0].call));
        assert_eq!((history[1].ret, &history[1].output), (None, &None));
        assert_eq!(history[2].client, 3);
        assert!(recorder.check(BUDGET).is_linearizable());
    }

    // -----------------------------------------------------------------------------------------
    // Randomized histories.

    /// SplitMix64.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }
    }

    const KEYS: [&str; 3] = ["x", "y", "z"];
    const VALUES: [Option<&str>; 4] = [None, Some("a"), Some("b"), Some("c")];

    fn random_input(rng: &mut Rng) -> KvInput {
        match rng.below(3) {
            0 => KvInput::Put(rng.pick(&VALUES).and_then(v)),
            1 => KvInput::Cas { expected: rng.pick(&VALUES).and_then(v), new: rng.pick(&VALUES).and_then(v) },
            _ => KvInput::Get,
        }
    }

    /// Applies `input` to a sequential store; returns the answer.
    fn apply_model(store: &mut HashMap<String, Option<Vec<u8>>>, key: &str, input: &KvInput) -> KvOutput {
        let current = store.entry(key.to_string()).or_insert(None);
        match input {
            KvInput::Put(value) => {
                *current = value.clone();
                KvOutput::Ok
            }
            KvInput::Cas { expected, new } => {
                let applied = current == expected;
                if applied {
                    *current = new.clone();
                }
                KvOutput::Cas(applied)
            }
            KvInput::Get => KvOutput::Value(current.clone()),
        }
    }

    #[derive(Clone, Copy)]
    enum Client {
        Idle,
        /// Waiting for operation `op`; `done` once it took effect.
        Waiting {
            op: usize,
            done: bool,
        },
    }

    /// Simulates `clients` clients against a linearizable store: each operation takes effect at
    /// one instant between its call and its return. With `timeouts`, some operations lose their
    /// answer; those take effect before the timeout, at some later instant, or never.
    fn random_history(seed: u64, clients: usize, total: usize, timeouts: bool) -> Vec<KvOp> {
        let mut rng = Rng(seed);
        let mut store = HashMap::new();
        let mut history: Vec<KvOp> = Vec::new();
        let mut answers: Vec<Option<KvOutput>> = Vec::new();
        let mut state = vec![Client::Idle; clients];
        let mut floating: Vec<usize> = Vec::new();
        let mut time = 0;
        while history.len() < total || state.iter().any(|c| matches!(c, Client::Waiting { .. })) {
            time += 1 + rng.below(4);
            if !floating.is_empty() && rng.below(10) == 0 {
                let lost = floating.swap_remove(rng.below(floating.len() as u64) as usize);
                apply_model(&mut store, &history[lost].key, &history[lost].input);
                continue;
            }
            let client = rng.below(clients as u64) as usize;
            match state[client] {
                Client::Idle if history.len() < total => {
                    let key = rng.pick(&KEYS).to_string();
                    history.push(KvOp {
                        client,
                        key,
                        call: time,
                        ret: None,
                        input: random_input(&mut rng),
                        output: None,
                    });
                    answers.push(None);
                    state[client] = Client::Waiting { op: history.len() - 1, done: false };
                }
                Client::Idle => {}
                Client::Waiting { op, done } if timeouts && rng.below(15) == 0 => {
                    // The answer is lost; the operation happened, will happen, or never will.
                    match (done, rng.below(3)) {
                        (true, _) | (false, 0) => {}
                        (false, 1) => floating.push(op),
                        (false, _) => {
                            apply_model(&mut store, &history[op].key, &history[op].input);
                        }
                    }
                    state[client] = Client::Idle;
                }
                Client::Waiting { op, done: false } => {
                    answers[op] = Some(apply_model(&mut store, &history[op].key, &history[op].input));
                    state[client] = Client::Waiting { op, done: true };
                }
                Client::Waiting { op, done: true } => {
                    history[op].ret = Some(time);
                    history[op].output = answers[op].take();
                    state[client] = Client::Idle;
                }
            }
        }
        history
    }

    /// Operations one after another, never overlapping, all answered.
    fn random_sequential_history(seed: u64, total: usize) -> Vec<KvOp> {
        let mut rng = Rng(seed);
        let mut store = HashMap::new();
        let mut time = 0;
        (0..total)
            .map(|_| {
                let key = rng.pick(&KEYS).to_string();
                let input = random_input(&mut rng);
                let output = apply_model(&mut store, &key, &input);
                let call = time + 1 + rng.below(3);
                let ret = call + rng.below(3);
                time = ret;
                KvOp { client: rng.below(4) as usize, key, call, ret: Some(ret), input, output: Some(output) }
            })
            .collect()
    }

    /// Replaces the answer of a random answered get with a different value; `None` if there is
    /// no answered get.
    fn corrupt_a_read(history: &mut [KvOp], rng: &mut Rng) -> Option<usize> {
        let reads: Vec<usize> =
            (0..history.len()).filter(|&i| matches!(history[i].output, Some(KvOutput::Value(_)))).collect();
        if reads.is_empty() {
            return None;
        }
        let target = *rng.pick(&reads);
        let Some(KvOutput::Value(real)) = history[target].output.clone() else { return None };
        let others: Vec<Option<Vec<u8>>> =
            VALUES.iter().map(|value| value.and_then(v)).filter(|value| *value != real).collect();
        history[target].output = Some(KvOutput::Value(rng.pick(&others).clone()));
        Some(target)
    }

    #[test]
    fn random_linearizable_histories_pass() {
        for seed in 0..300 {
            let timeouts = seed % 2 == 1;
            let history = random_history(seed, 1 + (seed % 5) as usize, 60, timeouts);
            let verdict = check_kv(&history, BUDGET);
            assert!(verdict.is_linearizable(), "seed {seed}: {verdict}\nhistory: {history:#?}");
        }
    }

    #[test]
    fn corrupted_sequential_histories_fail() {
        let mut corrupted = 0;
        for seed in 0..300 {
            let mut history = random_sequential_history(seed, 40);
            let mut rng = Rng(seed ^ 0xdead_beef);
            let Some(target) = corrupt_a_read(&mut history, &mut rng) else { continue };
            corrupted += 1;
            match check_kv(&history, BUDGET) {
                Verdict::NotLinearizable { key, .. } => assert_eq!(key, history[target].key, "seed {seed}"),
                other => panic!("seed {seed}: corrupted read #{target} not detected: {other}"),
            }
        }
        assert!(corrupted > 250, "only {corrupted} histories had a read to corrupt");
    }

    /// Exhaustive reference: tries every order (and every choice of unanswered operations left
    /// out) of a small one-key history.
    fn brute_force(history: &[KvOp]) -> bool {
        fn place(history: &[KvOp], placed: &mut Vec<bool>, value: &Option<Vec<u8>>) -> bool {
            let all_answered = (0..history.len()).all(|i| placed[i] || history[i].output.is_none());
            if all_answered {
                return true;
            }
            for next in 0..history.len() {
                let must_precede = |r: usize| {
                    !placed[r]
                        && history[r].output.is_some()
                        && history[r].ret.is_some_and(|ret| ret < history[next].call)
                };
                if placed[next] || (0..history.len()).any(must_precede) {
                    continue;
                }
                let mut after = HashMap::from([("k".to_string(), value.clone())]);
                let answer = apply_model(&mut after, "k", &history[next].input);
                if history[next].output.as_ref().is_some_and(|output| *output != answer) {
                    continue;
                }
                placed[next] = true;
                let found = place(history, placed, &after["k"]);
                placed[next] = false;
                if found {
                    return true;
                }
            }
            false
        }
        place(history, &mut vec![false; history.len()], &None)
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        let (mut yes, mut no) = (0, 0);
        for seed in 0..3000u64 {
            let mut rng = Rng(seed.wrapping_mul(0x1234_5678_9abc_def1));
            let history: Vec<KvOp> = (0..1 + rng.below(6))
                .map(|i| {
                    let call = rng.below(20);
                    let input = random_input(&mut rng);
                    let (ret, output) = match (rng.below(5), &input) {
                        (0, _) => (None, None),
                        (_, KvInput::Put(_)) => (Some(call + rng.below(10)), Some(KvOutput::Ok)),
                        (_, KvInput::Cas { .. }) => {
                            (Some(call + rng.below(10)), Some(KvOutput::Cas(rng.below(2) == 0)))
                        }
                        (_, KvInput::Get) => {
                            (Some(call + rng.below(10)), Some(KvOutput::Value(rng.pick(&VALUES).and_then(v))))
                        }
                    };
                    op(i as usize, call, ret, input, output)
                })
                .collect();
            let expected = brute_force(&history);
            let verdict = check_kv(&history, BUDGET);
            assert_eq!(verdict.is_linearizable(), expected, "seed {seed}: {verdict}\nhistory: {history:#?}");
            if expected {
                yes += 1;
            } else {
                no += 1;
            }
        }
        assert!(yes > 500 && no > 500, "{yes} linearizable, {no} not");
    }

    #[test]
    fn corrupted_concurrent_histories_mostly_fail() {
        // With overlaps a wrong read can still be explainable, so only most must be caught.
        let (mut corrupted, mut detected) = (0, 0);
        for seed in 0..200 {
            let mut history = random_history(seed, 3, 40, false);
            let mut rng = Rng(seed ^ 0x5eed);
            if corrupt_a_read(&mut history, &mut rng).is_none() {
                continue;
            }
            corrupted += 1;
            match check_kv(&history, BUDGET) {
                Verdict::NotLinearizable { .. } => detected += 1,
                Verdict::Linearizable => {}
                Verdict::Unknown { key } => panic!("seed {seed}: budget exhausted on {key}"),
            }
        }
        assert!(detected * 2 > corrupted, "detected only {detected} of {corrupted} corrupted histories");
    }
}
