//! Rule expressions compiled once, at ruleset load, into a typed tree evaluated over pre-resolved slots.
//!
//! The `cel` interpreter resolves every name through a scope of `BTreeMap`s of boxed values, so a
//! decision had to build that scope (maps of the features and of `ctx`) and then walk each program
//! generically. Here the parser's AST of each rule is compiled against the ruleset's variables:
//! `amount`, `currency`, `payer`, `payee`, `new_payee`, `new_device`, `payer_balance`,
//! `payer_balance_known`, the features (bare or as
//! `f.<name>`) and model scores become slot reads, `ctx.<attr>` an index into the attributes the
//! ruleset reads (resolved once per decision), and `in_list('name', x)` a lookup memoised for the
//! decision (the lists themselves are read at evaluation: they change at run time).
//!
//! Semantics are the interpreter's, error for error, message for message (the differential test
//! `tests/compiled.rs` runs both on random events): `&&` and `||` short-circuit and absorb an error
//! the way `cel` does, int/uint/double keep CEL's typing (`int + double` is not compiled at all),
//! comparisons across numeric types compare numerically, a missing `ctx` key is `No such key`.
//! Anything this compiler does not know (another function, a list or map value, a type name, an
//! ill-typed operation, a tree deeper than [`DEPTH_MAX`]) makes [`compile`] return `None`, and the
//! rule keeps its `cel::Program`: no ruleset breaks.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, RwLockReadGuard};

use cel::common::ast::{operators, Expr, IdedExpr, LiteralValue};
use cel::ExecutionError;

use crate::rules::Lists;

/// Most distinct `ctx.<attribute>` names the compiled rules of one ruleset read (a rule needing
/// more is interpreted).
pub(crate) const ATTRIBUTES_MAX: usize = 32;
/// Most distinct `in_list(name, value)` lookups memoised per decision (beyond: interpreted).
pub(crate) const LOOKUPS_MAX: usize = 32;
/// Deepest expression compiled; compiling and evaluating recurse at most this deep.
pub(crate) const DEPTH_MAX: usize = 128;

/// Whether `expr` nests more than `limit` levels (counted as [`compile`] and the interpreter recurse:
/// one per call, selection, list, map or comprehension part). Iterative, so a tree of any depth is
/// measured without recursing.
pub(crate) fn deeper_than(expr: &IdedExpr, limit: usize) -> bool {
    let mut stack: Vec<(&IdedExpr, usize)> = vec![(expr, 1)];
    while let Some((e, depth)) = stack.pop() {
        if depth > limit {
            return true;
        }
        children(e, |child| stack.push((child, depth + 1)));
    }
    false
}

/// The first name in `expr` a decision cannot resolve, as the rule's author would write it: a free
/// identifier that `known` refuses (comprehension variables are bound in their macro), or
/// `f.<name>` where `feature` refuses the name. Recurses; call it on trees no deeper than
/// [`DEPTH_MAX`] ([`deeper_than`] first).
pub(crate) fn unknown_name(
    expr: &IdedExpr,
    known: &dyn Fn(&str) -> bool,
    feature: &dyn Fn(&str) -> bool,
) -> Option<String> {
    fn walk<'a>(
        e: &'a IdedExpr,
        bound: &mut Vec<&'a str>,
        known: &dyn Fn(&str) -> bool,
        feature: &dyn Fn(&str) -> bool,
    ) -> Option<String> {
        match &e.expr {
            Expr::Ident(name) if !bound.contains(&name.as_str()) && !known(name) => Some(name.clone()),
            Expr::Select(select) => match &select.operand.expr {
                Expr::Ident(root) if root == "f" && !bound.contains(&"f") && !feature(&select.field) => {
                    Some(format!("f.{}", select.field))
                }
                _ => walk(&select.operand, bound, known, feature),
            },
            Expr::Call(call)
                if call.func_name == operators::INDEX
                    && matches!(call.args.first().map(|a| &a.expr), Some(Expr::Ident(root)) if root == "f")
                    && !bound.contains(&"f") =>
            {
                match call.args.get(1).map(|a| &a.expr) {
                    Some(Expr::Literal(LiteralValue::String(name))) if !feature(name) => {
                        Some(format!("f[{:?}]", &**name))
                    }
                    _ => call.args.iter().skip(1).find_map(|a| walk(a, bound, known, feature)),
                }
            }
            Expr::Comprehension(c) => {
                let outer = bound.len();
                let found = walk(&c.iter_range, bound, known, feature)
                    .or_else(|| walk(&c.accu_init, bound, known, feature))
                    .or_else(|| {
                        bound.push(&c.iter_var);
                        bound.extend(c.iter_var2.as_deref());
                        bound.push(&c.accu_var);
                        [&c.loop_cond, &c.loop_step, &c.result]
                            .into_iter()
                            .find_map(|part| walk(part, bound, known, feature))
                    });
                bound.truncate(outer);
                found
            }
            _ => first_in_children(e, |child| walk(child, bound, known, feature)),
        }
    }
    walk(expr, &mut Vec::new(), known, feature)
}

/// Most comprehensions (`all`, `exists`, `exists_one`, `map`, `filter`) in one expression; none may
/// sit inside another, since nesting multiplies their iterations (two elements per level, fifty
/// levels: 2^50 steps, past any time budget, which is checked between rules).
pub(crate) const COMPREHENSIONS_MAX: usize = 4;

/// Why `expr` could run away or fail on every event, or `None`: a comprehension inside another or
/// more than [`COMPREHENSIONS_MAX`] of them, or a function the interpreter does not have (probed
/// on the `cel` standard library; `in_list` is the engine's own). Recurses; call it on trees no
/// deeper than [`DEPTH_MAX`].
pub(crate) fn static_problem(expr: &IdedExpr) -> Option<String> {
    fn walk(
        e: &IdedExpr,
        inside: bool,
        count: &mut usize,
        probed: &mut HashMap<(String, bool), bool>,
    ) -> Option<String> {
        match &e.expr {
            Expr::Comprehension(c) => {
                if inside {
                    return Some("a comprehension (all, exists, map, filter…) inside another".into());
                }
                *count += 1;
                if *count > COMPREHENSIONS_MAX {
                    return Some(format!(
                        "more than {COMPREHENSIONS_MAX} comprehensions (all, exists, map, filter…)"
                    ));
                }
                [&c.iter_range, &c.accu_init].into_iter().find_map(|p| walk(p, false, count, probed)).or_else(
                    || {
                        [&c.loop_cond, &c.loop_step, &c.result]
                            .into_iter()
                            .find_map(|p| walk(p, true, count, probed))
                    },
                )
            }
            Expr::Call(call) => {
                let name = call.func_name.as_str();
                let operator = !name.starts_with(|c: char| c.is_ascii_alphabetic());
                if !operator && name != "in_list" {
                    let member = call.target.is_some();
                    let known = *probed
                        .entry((name.to_string(), member))
                        .or_insert_with(|| function_exists(name, member));
                    if !known {
                        let how = if member { format!("x.{name}(…)") } else { format!("{name}(…)") };
                        return Some(format!("unknown function {how}"));
                    }
                }
                first_in_children(e, |child| walk(child, inside, count, probed))
            }
            _ => first_in_children(e, |child| walk(child, inside, count, probed)),
        }
    }
    if let Expr::List(_) | Expr::Map(_) | Expr::Literal(_) = &expr.expr {
        if !matches!(&expr.expr, Expr::Literal(LiteralValue::Boolean(_))) {
            return Some("a value that is not a bool (a rule gives a bool)".into());
        }
    }
    let steps = cost(expr);
    if steps > EXPRESSION_COST_MAX {
        return Some(format!(
            "a worst case of {steps} evaluation steps (at most {EXPRESSION_COST_MAX}: every decision runs every rule)"
        ));
    }
    walk(expr, false, &mut 0, &mut HashMap::new())
}

/// The first operation in `expr` whose operands' types are known at publish time and cannot go
/// together, described for the rule's author, or `None`: an ordering (`<`, `<=`, `>`, `>=`) or
/// arithmetic of mismatched types fails on every event that reaches it (CEL has no implicit
/// conversion), and `==`/`!=` across types is constant (a string is never equal to a number), so
/// the rule could never fire as written. The classic case: `ctx` values are strings, so
/// `ctx.kyc_tier > 1` is `int(ctx.kyc_tier) > 1` or `ctx.kyc_tier == '1'`. Operands whose type
/// depends on the event (a comprehension's variable, a function's result) are not judged.
/// Recurses; call it on trees no deeper than [`DEPTH_MAX`].
pub(crate) fn type_problem(expr: &IdedExpr, symbols: &Symbols) -> Option<String> {
    fn walk<'a>(e: &'a IdedExpr, bound: &mut Vec<&'a str>, symbols: &Symbols) -> Option<String> {
        if let Expr::Comprehension(c) = &e.expr {
            let outer = bound.len();
            bound.push(&c.iter_var);
            bound.extend(c.iter_var2.as_deref());
            bound.push(&c.accu_var);
            // The range and the initial value are outside the comprehension's own names, but a
            // name bound by it is only ever judged unknown (never wrongly typed), so one scope will do.
            let found = first_in_children(e, |part| walk(part, bound, symbols));
            bound.truncate(outer);
            return found;
        }
        if let Expr::Call(call) = &e.expr {
            if let (None, [a, b]) = (&call.target, call.args.as_slice()) {
                let types = (static_type(a, bound, symbols), static_type(b, bound, symbols));
                if let (Some(ta), Some(tb)) = types {
                    if let Some(problem) = mismatch(call.func_name.as_str(), ta, tb) {
                        return Some(problem);
                    }
                }
            }
        }
        first_in_children(e, |child| walk(child, bound, symbols))
    }
    walk(expr, &mut Vec::new(), symbols)
}

/// Why `op` cannot take operands of types `a` and `b` (see [`type_problem`]), or `None`.
fn mismatch(op: &str, a: Ty, b: Ty) -> Option<String> {
    let numeric = |t: Ty| matches!(t, Ty::Int | Ty::UInt | Ty::Double);
    let comparable = a == b || (numeric(a) && numeric(b));
    let fits = match op {
        operators::ADD => a == b && a != Ty::Bool,
        operators::MODULO => a == b && matches!(a, Ty::Int | Ty::UInt),
        _ => a == b && numeric(a),
    };
    let what = match op {
        operators::LESS | operators::LESS_EQUALS | operators::GREATER | operators::GREATER_EQUALS
            if !comparable =>
        {
            "fails on every event"
        }
        operators::EQUALS if !comparable => "is never true",
        operators::NOT_EQUALS if !comparable => "is always true",
        operators::ADD
        | operators::SUBSTRACT
        | operators::MULTIPLY
        | operators::DIVIDE
        | operators::MODULO
            if !fits =>
        {
            "fails on every event"
        }
        _ => return None,
    };
    let hint = if (a == Ty::Str) != (b == Ty::Str) && (numeric(a) || numeric(b)) {
        " (CEL does not convert a string to a number: ctx values are strings, so compare with a string \
         literal or convert with int(ctx.<name>))"
    } else {
        ""
    };
    let symbol = op.trim_start_matches('_').trim_end_matches('_');
    Some(format!("`{} {symbol} {}`, which {what}{hint}", ty_name(a), ty_name(b)))
}

fn ty_name(t: Ty) -> &'static str {
    match t {
        Ty::Bool => "bool",
        Ty::Int => "int",
        Ty::UInt => "uint",
        Ty::Double => "double",
        Ty::Str => "string",
    }
}

/// The type `e` has on every event, where that is known without one: literals, the event's names,
/// features, models, `ctx.<name>` (a string), `has(…)`, and operators and conversions of those.
fn static_type(e: &IdedExpr, bound: &[&str], symbols: &Symbols) -> Option<Ty> {
    match &e.expr {
        Expr::Literal(lit) => literal(lit).map(|l| l.ty()),
        Expr::Select(select) if select.test => Some(Ty::Bool),
        Expr::Ident(_) | Expr::Select(_) => {
            let segs = segments(&e.expr)?;
            if bound.contains(&segs[0]) {
                return None;
            }
            match resolve(symbols, &segs)? {
                (Var::Features, [field]) => {
                    let (index, double) = *symbols.features.get(*field)?;
                    var_node(Var::Feature { index, double }).map(|(_, t)| t)
                }
                (Var::Ctx, [_]) => Some(Ty::Str),
                (var, []) => var_node(var).map(|(_, t)| t),
                _ => None,
            }
        }
        Expr::Call(call) => {
            let name = call.func_name.as_str();
            let arg = |i: usize| call.args.get(i).and_then(|a| static_type(a, bound, symbols));
            match (name, call.target.is_some(), call.args.len()) {
                (
                    operators::LOGICAL_AND
                    | operators::LOGICAL_OR
                    | operators::LOGICAL_NOT
                    | operators::LESS
                    | operators::LESS_EQUALS
                    | operators::GREATER
                    | operators::GREATER_EQUALS
                    | operators::EQUALS
                    | operators::NOT_EQUALS
                    | operators::IN,
                    false,
                    _,
                )
                | ("in_list", false, 2)
                | ("contains" | "startsWith" | "endsWith", true, 1) => Some(Ty::Bool),
                (
                    operators::ADD
                    | operators::SUBSTRACT
                    | operators::MULTIPLY
                    | operators::DIVIDE
                    | operators::MODULO,
                    false,
                    2,
                ) => {
                    let (a, b) = (arg(0)?, arg(1)?);
                    mismatch(name, a, b).is_none().then_some(a)
                }
                (operators::NEGATE, false, 1) => arg(0).filter(|t| matches!(t, Ty::Int | Ty::Double)),
                (operators::CONDITIONAL, false, 3) => arg(1).filter(|t| Some(*t) == arg(2)),
                ("size", _, _) => Some(Ty::Int),
                ("int", false, 1) => Some(Ty::Int),
                ("uint", false, 1) => Some(Ty::UInt),
                ("double", false, 1) => Some(Ty::Double),
                ("string", false, 1) => Some(Ty::Str),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Most evaluation steps one expression may take in the worst case, as [`cost`] estimates them
/// (a step is a value made, compared or copied: tens of nanoseconds). Comprehensions over list
/// literals multiply: `[… 1,000 elements …].map(x, [… 1,000 …])` is a million steps.
pub(crate) const EXPRESSION_COST_MAX: u64 = 20_000;

/// An upper bound on the steps evaluating `expr` can take: a list or map is made element by
/// element, an operation copies or scans its operands, and a comprehension runs its condition and
/// step once per element of its range (the accumulator copied each time). The range's size is
/// bounded by the literal's length, a `map`/`filter` result by its own range, a `ctx` by the
/// attributes an event may carry (64). Recurses; call it on trees no deeper than [`DEPTH_MAX`].
pub(crate) fn cost(expr: &IdedExpr) -> u64 {
    /// (steps, elements if a list or map).
    fn walk(e: &IdedExpr) -> (u64, u64) {
        match &e.expr {
            Expr::List(list) => {
                let inner: u64 = list.elements.iter().map(|x| walk(x).0).fold(0, u64::saturating_add);
                let n = list.elements.len() as u64;
                (inner.saturating_add(n).saturating_add(1), n)
            }
            Expr::Map(map) => {
                let mut inner = 1u64;
                for entry in &map.entries {
                    let mut add = |x: &IdedExpr| inner = inner.saturating_add(walk(x).0);
                    push_entry(&entry.expr, &mut add);
                }
                (inner.saturating_add(map.entries.len() as u64), map.entries.len() as u64)
            }
            Expr::Ident(name) if name == "ctx" => (1, 64),
            Expr::Comprehension(c) => {
                let (range_steps, n) = walk(&c.iter_range);
                let (init_steps, _) = walk(&c.accu_init);
                let per = walk(&c.loop_cond).0.saturating_add(walk(&c.loop_step).0).saturating_add(n);
                let steps = range_steps
                    .saturating_add(init_steps)
                    .saturating_add(n.saturating_mul(per))
                    .saturating_add(walk(&c.result).0);
                // map and filter make a list as long as their range at most.
                let list_result = matches!(c.accu_init.expr, Expr::List(_));
                (steps, if list_result { n } else { 1 })
            }
            _ => {
                let (mut steps, mut elements) = (1u64, 0u64);
                children(e, |child| {
                    let (s, n) = walk(child);
                    steps = steps.saturating_add(s).saturating_add(n);
                    elements = elements.saturating_add(n);
                });
                // `+` of two lists is a list as long as both; any other call gives a scalar.
                let concatenation = matches!(&e.expr, Expr::Call(c) if c.func_name == operators::ADD);
                (steps, if concatenation { elements } else { 0 })
            }
        }
    }
    walk(expr).0
}

/// Whether the `cel` standard library has a function (`member`: a method) called `name`: a call
/// without arguments answers "no such overload" if it does, "undeclared reference" if not.
fn function_exists(name: &str, member: bool) -> bool {
    let source = if member { format!("''.{name}()") } else { format!("{name}()") };
    let Ok(program) = cel::Program::compile(&source) else { return false };
    !matches!(program.execute(&cel::Context::default()), Err(ExecutionError::UndeclaredReference(_)))
}

/// The first `Some` that `look` gives for a direct sub-expression of `e`, in order.
fn first_in_children<'a, T>(e: &'a IdedExpr, mut look: impl FnMut(&'a IdedExpr) -> Option<T>) -> Option<T> {
    let mut found = None;
    children(e, |child| {
        if found.is_none() {
            found = look(child);
        }
    });
    found
}

/// Calls `push` with each direct sub-expression of `e`.
fn children<'a>(e: &'a IdedExpr, mut push: impl FnMut(&'a IdedExpr)) {
    {
        match &e.expr {
            Expr::Call(call) => {
                call.target.iter().for_each(|t| push(t));
                call.args.iter().for_each(&mut push);
            }
            Expr::Comprehension(c) => {
                for part in [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                    push(part);
                }
            }
            Expr::List(list) => list.elements.iter().for_each(&mut push),
            Expr::Map(map) => map.entries.iter().for_each(|entry| push_entry(&entry.expr, &mut push)),
            Expr::Struct(st) => st.entries.iter().for_each(|entry| push_entry(&entry.expr, &mut push)),
            Expr::Select(select) => push(&select.operand),
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
}

fn push_entry<'a>(entry: &'a cel::common::ast::EntryExpr, push: &mut impl FnMut(&'a IdedExpr)) {
    match entry {
        cel::common::ast::EntryExpr::StructField(f) => push(&f.value),
        cel::common::ast::EntryExpr::MapEntry(m) => {
            push(&m.key);
            push(&m.value);
        }
    }
}

/// A scalar as the compiled tree computes it (strings borrow the event or the tree).
#[derive(Debug, Clone, Copy, PartialEq)]
enum V<'a> {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(&'a str),
}

impl V<'_> {
    fn type_name(self) -> &'static str {
        match self {
            V::Bool(_) => "bool",
            V::Int(_) => "int",
            V::UInt(_) => "uint",
            V::Double(_) => "double",
            V::Str(_) => "string",
        }
    }
}

/// A failed evaluation: the very error the interpreter would give (boxed: errors are rare).
type Fault = Box<ExecutionError>;

/// The static type of a compiled node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Bool,
    Int,
    UInt,
    Double,
    Str,
}

/// A literal.
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(Box<str>),
}

impl Lit {
    fn value(&self) -> V<'_> {
        match self {
            Lit::Bool(b) => V::Bool(*b),
            Lit::Int(i) => V::Int(*i),
            Lit::UInt(u) => V::UInt(*u),
            Lit::Double(d) => V::Double(*d),
            Lit::Str(s) => V::Str(s),
        }
    }

    fn ty(&self) -> Ty {
        match self {
            Lit::Bool(_) => Ty::Bool,
            Lit::Int(_) => Ty::Int,
            Lit::UInt(_) => Ty::UInt,
            Lit::Double(_) => Ty::Double,
            Lit::Str(_) => Ty::Str,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Less,
    LessEquals,
    Greater,
    GreaterEquals,
}

impl CmpOp {
    fn name(self) -> &'static str {
        match self {
            CmpOp::Less => operators::LESS,
            CmpOp::LessEquals => operators::LESS_EQUALS,
            CmpOp::Greater => operators::GREATER,
            CmpOp::GreaterEquals => operators::GREATER_EQUALS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrTest {
    Contains,
    StartsWith,
    EndsWith,
}

/// A compiled expression.
#[derive(Debug)]
enum Node {
    Const(Lit),
    Amount,
    Currency,
    Payer,
    Payee,
    NewPayee,
    NewDevice,
    /// `payer_balance` (an int: the payer's available balance, or -1 when unknown).
    PayerBalance,
    /// `payer_balance_known`.
    PayerBalanceKnown,
    /// A feature's value, read as CEL sees it: an int (truncated), or a double for z-scores.
    Feature {
        index: u32,
        double: bool,
    },
    /// A model's score (a double).
    Model(u32),
    /// `ctx.<attribute>`, by attribute slot.
    Attr(u32),
    /// `has(ctx.<attribute>)`.
    HasAttr(u32),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Cond(Box<(Node, Node, Node)>),
    Eq {
        negate: bool,
        left: Box<Node>,
        right: Box<Node>,
    },
    Cmp {
        op: CmpOp,
        left: Box<Node>,
        right: Box<Node>,
    },
    IntArith {
        op: Arith,
        left: Box<Node>,
        right: Box<Node>,
    },
    DoubleArith {
        op: Arith,
        left: Box<Node>,
        right: Box<Node>,
    },
    NegInt(Box<Node>),
    NegDouble(Box<Node>),
    /// `in_list('<list>', value)`, memoised in slot `memo` for the decision.
    InList {
        memo: u32,
        list: Box<str>,
        value: Box<Node>,
    },
    Size(Box<Node>),
    /// `target.contains(arg)` and friends (the argument is evaluated first, as `cel` does).
    StrTest {
        test: StrTest,
        target: Box<Node>,
        arg: Box<Node>,
    },
    /// `value in [literal, …]`.
    InLiterals {
        value: Box<Node>,
        items: Box<[Lit]>,
    },
    /// `leaf <op> literal`, the commonest shape (`amount > 50000`, `f.count_1h >= 10`): a
    /// comparison read in place.
    CmpLeaf {
        op: CmpOp,
        leaf: Leaf,
        literal: Lit,
    },
    /// `ctx.<attribute> == 'literal'` (or `!=`).
    EqAttr {
        negate: bool,
        slot: u32,
        literal: Box<str>,
    },
}

/// A number read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaf {
    Amount,
    Feature { index: u32, double: bool },
    Model(u32),
}

impl Leaf {
    fn of(node: &Node) -> Option<Leaf> {
        match node {
            Node::Amount => Some(Leaf::Amount),
            Node::Feature { index, double } => Some(Leaf::Feature { index: *index, double: *double }),
            Node::Model(i) => Some(Leaf::Model(*i)),
            _ => None,
        }
    }
}

/// What a name means in the interpreter's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Amount,
    Currency,
    Payer,
    Payee,
    NewPayee,
    NewDevice,
    PayerBalance,
    PayerBalanceKnown,
    /// The `f` map of features.
    Features,
    /// The `ctx` map of attributes.
    Ctx,
    Feature {
        index: u32,
        double: bool,
    },
    Model(u32),
}

/// A pure string source, the key of a memoised list lookup.
#[derive(Debug, Clone, PartialEq)]
enum LookupKey {
    Attr(u32),
    Currency,
    Payer,
    Payee,
    Const(Box<str>),
}

/// The names a ruleset's rules see, and the slots its compiled rules share (ruleset-wide).
#[derive(Debug)]
pub(crate) struct Symbols {
    /// Variables by name, as the interpreter's scope binds them (a later binding replaces an
    /// earlier one, as in the scope).
    vars: HashMap<String, Var>,
    /// The `f` map: feature name → (index, is a double).
    features: HashMap<String, (u32, bool)>,
    /// The `ctx` attributes compiled rules read, by slot.
    attributes: Vec<String>,
    /// The memoised list lookups, by slot.
    lookups: Vec<(Box<str>, LookupKey)>,
}

impl Symbols {
    /// The scope of a ruleset with these features (name, is a z-score double) and model names,
    /// bound in the order `Engine` binds the interpreter's scope.
    pub(crate) fn new<'n>(
        features: impl Iterator<Item = (&'n str, bool)> + Clone,
        models: impl Iterator<Item = &'n str>,
    ) -> Symbols {
        let mut vars = HashMap::new();
        for (i, name) in models.enumerate() {
            vars.insert(name.to_string(), Var::Model(i as u32));
        }
        for (name, var) in [
            ("amount", Var::Amount),
            ("currency", Var::Currency),
            ("payer", Var::Payer),
            ("payee", Var::Payee),
            ("new_payee", Var::NewPayee),
            ("new_device", Var::NewDevice),
            ("payer_balance", Var::PayerBalance),
            ("payer_balance_known", Var::PayerBalanceKnown),
            ("f", Var::Features),
        ] {
            vars.insert(name.to_string(), var);
        }
        let mut map = HashMap::new();
        for (i, (name, double)) in features.enumerate() {
            map.insert(name.to_string(), (i as u32, double));
            vars.insert(name.to_string(), Var::Feature { index: i as u32, double });
        }
        vars.insert("ctx".to_string(), Var::Ctx);
        Symbols { vars, features: map, attributes: Vec::new(), lookups: Vec::new() }
    }

    /// The attributes compiled rules read, by slot.
    pub(crate) fn attributes(&self) -> &[String] {
        &self.attributes
    }

    fn attribute(&mut self, name: &str) -> Option<u32> {
        if let Some(i) = self.attributes.iter().position(|a| a == name) {
            return Some(i as u32);
        }
        if self.attributes.len() >= ATTRIBUTES_MAX {
            return None;
        }
        self.attributes.push(name.to_string());
        Some(self.attributes.len() as u32 - 1)
    }

    fn lookup(&mut self, list: &str, key: LookupKey) -> Option<u32> {
        if let Some(i) = self.lookups.iter().position(|(l, k)| &**l == list && *k == key) {
            return Some(i as u32);
        }
        if self.lookups.len() >= LOOKUPS_MAX {
            return None;
        }
        self.lookups.push((list.into(), key));
        Some(self.lookups.len() as u32 - 1)
    }
}

/// A rule's compiled expression (a bool).
#[derive(Debug)]
pub(crate) struct Compiled {
    root: Node,
}

/// Compiles `expr` (a rule's whole expression) against `symbols`, or `None` if anything in it is
/// outside what this compiler reproduces exactly, or if it is not a bool: the rule stays interpreted.
///
/// `Err` names the type of an expression that compiles to a number or a string: it gives that for
/// every event, never the bool a rule must give.
pub(crate) fn compile(expr: &IdedExpr, symbols: &mut Symbols) -> Result<Option<Compiled>, &'static str> {
    let (attributes, lookups) = (symbols.attributes.len(), symbols.lookups.len());
    let compiled = node(expr, symbols, 0);
    if let Some((root, Ty::Bool)) = compiled {
        return Ok(Some(Compiled { root }));
    }
    // Give back the slots a rule that is not compiled took.
    symbols.attributes.truncate(attributes);
    symbols.lookups.truncate(lookups);
    match compiled {
        Some((_, Ty::Int)) => Err("an int"),
        Some((_, Ty::UInt)) => Err("a uint"),
        Some((_, Ty::Double)) => Err("a double"),
        Some((_, Ty::Str)) => Err("a string"),
        Some((_, Ty::Bool)) | None => Ok(None),
    }
}

/// The segments of the qualified name `expr` spells (`a.b.c` → `[a, b, c]`), if it spells one.
fn segments(expr: &Expr) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    let mut e = expr;
    for _ in 0..DEPTH_MAX {
        match e {
            Expr::Ident(name) => {
                out.push(name.as_str());
                out.reverse();
                return Some(out);
            }
            Expr::Select(s) if !s.test => {
                out.push(s.field.as_str());
                e = &s.operand.expr;
            }
            _ => return None,
        }
    }
    None
}

/// Resolves a qualified name as the interpreter's scope does: the longest prefix that is a
/// variable, and the fields left to select on it.
fn resolve<'s, 'n>(symbols: &Symbols, segs: &'s [&'n str]) -> Option<(Var, &'s [&'n str])> {
    for prefix in (1..=segs.len()).rev() {
        let name = segs[..prefix].join(".");
        if let Some(var) = symbols.vars.get(&name) {
            return Some((*var, &segs[prefix..]));
        }
    }
    None
}

fn var_node(var: Var) -> Option<(Node, Ty)> {
    Some(match var {
        Var::Amount => (Node::Amount, Ty::Int),
        Var::Currency => (Node::Currency, Ty::Str),
        Var::Payer => (Node::Payer, Ty::Str),
        Var::Payee => (Node::Payee, Ty::Str),
        Var::NewPayee => (Node::NewPayee, Ty::Bool),
        Var::NewDevice => (Node::NewDevice, Ty::Bool),
        Var::PayerBalance => (Node::PayerBalance, Ty::Int),
        Var::PayerBalanceKnown => (Node::PayerBalanceKnown, Ty::Bool),
        Var::Feature { index, double } => {
            (Node::Feature { index, double }, if double { Ty::Double } else { Ty::Int })
        }
        Var::Model(i) => (Node::Model(i), Ty::Double),
        Var::Features | Var::Ctx => return None, // a map as a value
    })
}

fn literal(lit: &LiteralValue) -> Option<Lit> {
    Some(match lit {
        LiteralValue::Boolean(b) => Lit::Bool(*b.inner()),
        LiteralValue::Int(i) => Lit::Int(*i.inner()),
        LiteralValue::UInt(u) => Lit::UInt(*u.inner()),
        LiteralValue::Double(d) => Lit::Double(*d.inner()),
        LiteralValue::String(s) => Lit::Str(s.inner().into()),
        LiteralValue::Null | LiteralValue::Bytes(_) => return None,
    })
}

fn node(expr: &IdedExpr, symbols: &mut Symbols, depth: usize) -> Option<(Node, Ty)> {
    if depth >= DEPTH_MAX {
        return None;
    }
    let sub = |e: &IdedExpr, s: &mut Symbols| node(e, s, depth + 1);
    match &expr.expr {
        Expr::Literal(lit) => {
            let lit = literal(lit)?;
            let ty = lit.ty();
            Some((Node::Const(lit), ty))
        }
        Expr::Ident(_) => {
            let segs = segments(&expr.expr)?;
            let (var, rest) = resolve(symbols, &segs)?;
            if !rest.is_empty() {
                return None;
            }
            var_node(var)
        }
        Expr::Select(select) if select.test => {
            // has(x.field): only its operand is a name.
            let segs = segments(&select.operand.expr)?;
            let (var, rest) = resolve(symbols, &segs)?;
            if !rest.is_empty() {
                return None;
            }
            match var {
                Var::Features => {
                    Some((Node::Const(Lit::Bool(symbols.features.contains_key(&select.field))), Ty::Bool))
                }
                Var::Ctx => Some((Node::HasAttr(symbols.attribute(&select.field)?), Ty::Bool)),
                _ => None,
            }
        }
        Expr::Select(_) => {
            let segs = segments(&expr.expr)?;
            let (var, rest) = resolve(symbols, &segs)?;
            match (var, rest) {
                (var, []) => var_node(var),
                (Var::Features, [field]) => {
                    let (index, double) = *symbols.features.get(*field)?;
                    var_node(Var::Feature { index, double })
                }
                (Var::Ctx, [field]) => Some((Node::Attr(symbols.attribute(field)?), Ty::Str)),
                _ => None,
            }
        }
        Expr::Call(call) => {
            let name = call.func_name.as_str();
            let args = &call.args;
            if let Some(target) = &call.target {
                // Only string methods on event strings or literals: a name rooted elsewhere could
                // name a function namespace (`base64.encode`), which the interpreter calls instead.
                if let Some(segs) = segments(&target.expr) {
                    if !matches!(segs[0], "ctx" | "payer" | "payee" | "currency") {
                        return None;
                    }
                }
                let test = match name {
                    "contains" => StrTest::Contains,
                    "startsWith" => StrTest::StartsWith,
                    "endsWith" => StrTest::EndsWith,
                    "size" if args.is_empty() => {
                        let (t, ty) = sub(target, symbols)?;
                        return (ty == Ty::Str).then(|| (Node::Size(Box::new(t)), Ty::Int));
                    }
                    _ => return None,
                };
                if args.len() != 1 {
                    return None;
                }
                let (arg, arg_ty) = sub(&args[0], symbols)?;
                let (t, t_ty) = sub(target, symbols)?;
                if (arg_ty, t_ty) != (Ty::Str, Ty::Str) {
                    return None;
                }
                return Some((Node::StrTest { test, target: Box::new(t), arg: Box::new(arg) }, Ty::Bool));
            }
            match (name, args.len()) {
                (operators::LOGICAL_AND | operators::LOGICAL_OR, 2) => {
                    let (l, lt) = sub(&args[0], symbols)?;
                    let (r, rt) = sub(&args[1], symbols)?;
                    if (lt, rt) != (Ty::Bool, Ty::Bool) {
                        return None;
                    }
                    let (l, r) = (Box::new(l), Box::new(r));
                    let n = if name == operators::LOGICAL_AND { Node::And(l, r) } else { Node::Or(l, r) };
                    Some((n, Ty::Bool))
                }
                (operators::LOGICAL_NOT, 1) => {
                    let (a, t) = sub(&args[0], symbols)?;
                    (t == Ty::Bool).then(|| (Node::Not(Box::new(a)), Ty::Bool))
                }
                (operators::CONDITIONAL, 3) => {
                    let (c, ct) = sub(&args[0], symbols)?;
                    let (a, at) = sub(&args[1], symbols)?;
                    let (b, bt) = sub(&args[2], symbols)?;
                    (ct == Ty::Bool && at == bt).then(|| (Node::Cond(Box::new((c, a, b))), at))
                }
                (operators::EQUALS | operators::NOT_EQUALS, 2) => {
                    let (l, _) = sub(&args[0], symbols)?;
                    let (r, _) = sub(&args[1], symbols)?;
                    let negate = name == operators::NOT_EQUALS;
                    if let (Node::Attr(slot), Node::Const(Lit::Str(literal))) = (&l, &r) {
                        let (slot, literal) = (*slot, literal.clone());
                        return Some((Node::EqAttr { negate, slot, literal }, Ty::Bool));
                    }
                    Some((Node::Eq { negate, left: Box::new(l), right: Box::new(r) }, Ty::Bool))
                }
                (
                    operators::LESS | operators::LESS_EQUALS | operators::GREATER | operators::GREATER_EQUALS,
                    2,
                ) => {
                    let op = match name {
                        operators::LESS => CmpOp::Less,
                        operators::LESS_EQUALS => CmpOp::LessEquals,
                        operators::GREATER => CmpOp::Greater,
                        _ => CmpOp::GreaterEquals,
                    };
                    let (l, _) = sub(&args[0], symbols)?;
                    let (r, _) = sub(&args[1], symbols)?;
                    if let (Some(leaf), Node::Const(literal)) = (Leaf::of(&l), &r) {
                        if matches!(literal, Lit::Int(_) | Lit::UInt(_) | Lit::Double(_)) {
                            return Some((Node::CmpLeaf { op, leaf, literal: literal.clone() }, Ty::Bool));
                        }
                    }
                    Some((Node::Cmp { op, left: Box::new(l), right: Box::new(r) }, Ty::Bool))
                }
                (
                    operators::ADD
                    | operators::SUBSTRACT
                    | operators::MULTIPLY
                    | operators::DIVIDE
                    | operators::MODULO,
                    2,
                ) => {
                    let op = match name {
                        operators::ADD => Arith::Add,
                        operators::SUBSTRACT => Arith::Sub,
                        operators::MULTIPLY => Arith::Mul,
                        operators::DIVIDE => Arith::Div,
                        _ => Arith::Rem,
                    };
                    let (l, lt) = sub(&args[0], symbols)?;
                    let (r, rt) = sub(&args[1], symbols)?;
                    let (left, right) = (Box::new(l), Box::new(r));
                    match (lt, rt) {
                        (Ty::Int, Ty::Int) => Some((Node::IntArith { op, left, right }, Ty::Int)),
                        (Ty::Double, Ty::Double) if op != Arith::Rem => {
                            Some((Node::DoubleArith { op, left, right }, Ty::Double))
                        }
                        _ => None,
                    }
                }
                (operators::NEGATE, 1) => {
                    let (a, t) = sub(&args[0], symbols)?;
                    match t {
                        Ty::Int => Some((Node::NegInt(Box::new(a)), Ty::Int)),
                        Ty::Double => Some((Node::NegDouble(Box::new(a)), Ty::Double)),
                        _ => None,
                    }
                }
                (operators::IN, 2) => {
                    let (value, _) = sub(&args[0], symbols)?;
                    let Expr::List(list) = &args[1].expr else { return None };
                    if !list.optional_indices.is_empty() || list.elements.len() > 1_024 {
                        return None;
                    }
                    let mut items = Vec::with_capacity(list.elements.len());
                    for e in &list.elements {
                        match &e.expr {
                            Expr::Literal(l) => items.push(literal(l)?),
                            _ => return None,
                        }
                    }
                    Some((Node::InLiterals { value: Box::new(value), items: items.into() }, Ty::Bool))
                }
                ("size", 1) => {
                    let (a, t) = sub(&args[0], symbols)?;
                    (t == Ty::Str).then(|| (Node::Size(Box::new(a)), Ty::Int))
                }
                ("in_list", 2) => {
                    let Expr::Literal(LiteralValue::String(list)) = &args[0].expr else { return None };
                    let (value, t) = sub(&args[1], symbols)?;
                    if t != Ty::Str {
                        return None;
                    }
                    let key = match &value {
                        Node::Attr(slot) => LookupKey::Attr(*slot),
                        Node::Currency => LookupKey::Currency,
                        Node::Payer => LookupKey::Payer,
                        Node::Payee => LookupKey::Payee,
                        Node::Const(Lit::Str(s)) => LookupKey::Const(s.clone()),
                        _ => return None,
                    };
                    let memo = symbols.lookup(list.inner(), key)?;
                    Some((Node::InList { memo, list: list.inner().into(), value: Box::new(value) }, Ty::Bool))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// A list membership memoised for one decision: not looked up yet, or the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Memo {
    Unknown,
    Member(bool),
}

/// What one decision's compiled rules read: the event's slots, the feature values and model
/// scores, the attributes the ruleset reads, and the lists (read-locked once, on first use).
pub(crate) struct Frame<'a> {
    /// `amount`.
    pub amount: i64,
    /// `currency`.
    pub currency: &'a str,
    /// `payer`.
    pub payer: &'a str,
    /// `payee`.
    pub payee: &'a str,
    /// `new_payee`.
    pub new_payee: bool,
    /// `new_device`.
    pub new_device: bool,
    /// The payer's available balance, if known (`payer_balance` is -1 when not,
    /// `payer_balance_known` says which).
    pub payer_balance: Option<i64>,
    /// Feature values, in declaration order.
    pub features: &'a [(Arc<str>, f64)],
    /// Model scores, in declaration order (name, score).
    pub models: &'a [(Arc<str>, f64)],
    /// The attributes of [`Symbols::attributes`], by slot (the last value of a repeated key, as
    /// the interpreter's `ctx` map keeps).
    pub attributes: &'a [Option<&'a str>],
    /// Their names, by slot.
    pub attribute_names: &'a [String],
    lists: &'a Lists,
    guard: Option<RwLockReadGuard<'a, HashMap<String, crate::rules::ListSet>>>,
    memo: [Memo; LOOKUPS_MAX],
}

impl<'a> Frame<'a> {
    /// A frame over `lists`; the other fields are set by the caller.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        amount: i64,
        currency: &'a str,
        payer: &'a str,
        payee: &'a str,
        new_payee: bool,
        new_device: bool,
        payer_balance: Option<i64>,
        features: &'a [(Arc<str>, f64)],
        models: &'a [(Arc<str>, f64)],
        attributes: &'a [Option<&'a str>],
        attribute_names: &'a [String],
        lists: &'a Lists,
    ) -> Frame<'a> {
        Frame {
            amount,
            currency,
            payer,
            payee,
            new_payee,
            new_device,
            payer_balance,
            features,
            models,
            attributes,
            attribute_names,
            lists,
            guard: None,
            memo: [Memo::Unknown; LOOKUPS_MAX],
        }
    }

    /// Releases the lists' read lock (before an interpreted rule takes it again: a reader waiting
    /// behind a queued writer while holding the lock would deadlock).
    pub(crate) fn release_lists(&mut self) {
        self.guard = None;
    }

    /// Evaluates a compiled rule: `Ok(fired)` or the interpreter's error.
    pub(crate) fn eval(&mut self, rule: &'a Compiled) -> Result<bool, ExecutionError> {
        eval_bool(&rule.root, self).map_err(|e| *e)
    }

    fn in_list(&mut self, memo: u32, list: &str, value: &str) -> bool {
        let slot = memo as usize;
        if let Some(Memo::Member(b)) = self.memo.get(slot) {
            return *b;
        }
        let lists = self.lists;
        let guard = self.guard.get_or_insert_with(|| lists.read().unwrap_or_else(|p| p.into_inner()));
        let member = guard.get(list).is_some_and(|set| set.contains(value));
        if let Some(m) = self.memo.get_mut(slot) {
            *m = Memo::Member(member);
        }
        member
    }
}

#[inline(always)]
fn ordering(a: V<'_>, b: V<'_>) -> Option<Ordering> {
    match (a, b) {
        (V::Int(x), V::Int(y)) => Some(x.cmp(&y)),
        (V::Int(x), V::UInt(y)) => Some(u64::try_from(x).map(|x| x.cmp(&y)).unwrap_or(Ordering::Less)),
        (V::Int(x), V::Double(y)) => (x as f64).partial_cmp(&y),
        (V::UInt(x), V::UInt(y)) => Some(x.cmp(&y)),
        (V::UInt(x), V::Int(y)) => Some(i64::try_from(x).map(|x| x.cmp(&y)).unwrap_or(Ordering::Greater)),
        (V::UInt(x), V::Double(y)) => (x as f64).partial_cmp(&y),
        (V::Double(x), V::Double(y)) => x.partial_cmp(&y),
        (V::Double(x), V::Int(y)) => x.partial_cmp(&(y as f64)),
        (V::Double(x), V::UInt(y)) => x.partial_cmp(&(y as f64)),
        (V::Str(x), V::Str(y)) => Some(x.cmp(y)),
        (V::Bool(x), V::Bool(y)) => Some(x.cmp(&y)),
        _ => None,
    }
}

fn overload(function: &str, a: V<'_>, b: V<'_>) -> Fault {
    Box::new(ExecutionError::no_such_overload(function, vec![a.type_name().into(), b.type_name().into()]))
}

#[inline]
fn as_bool(v: V<'_>) -> Result<bool, Fault> {
    match v {
        V::Bool(b) => Ok(b),
        other => Err(Box::new(ExecutionError::UnexpectedType {
            got: other.type_name().to_string(),
            want: "bool".to_string(),
        })),
    }
}

#[inline]
fn as_str(v: V<'_>) -> Result<&str, Fault> {
    match v {
        V::Str(s) => Ok(s),
        other => Err(Box::new(ExecutionError::UnexpectedType {
            got: other.type_name().to_string(),
            want: "string".to_string(),
        })),
    }
}

fn int_arith(op: Arith, a: V<'_>, b: V<'_>) -> Result<i64, Fault> {
    let (V::Int(x), V::Int(y)) = (a, b) else {
        return Err(overload(arith_name(op), a, b));
    };
    let overflow = |name| Box::new(ExecutionError::Overflow(name, x.into(), y.into()));
    match op {
        Arith::Add => x.checked_add(y).ok_or_else(|| overflow("add")),
        Arith::Sub => x.checked_sub(y).ok_or_else(|| overflow("sub")),
        Arith::Mul => x.checked_mul(y).ok_or_else(|| overflow("mul")),
        Arith::Div if y == 0 => Err(Box::new(ExecutionError::DivisionByZero(x.into()))),
        Arith::Div => x.checked_div(y).ok_or_else(|| overflow("div")),
        Arith::Rem if y == 0 => Err(Box::new(ExecutionError::RemainderByZero(x.into()))),
        Arith::Rem => x.checked_rem(y).ok_or_else(|| overflow("rem")),
    }
}

fn arith_name(op: Arith) -> &'static str {
    match op {
        Arith::Add => operators::ADD,
        Arith::Sub => operators::SUBSTRACT,
        Arith::Mul => operators::MULTIPLY,
        Arith::Div => operators::DIVIDE,
        Arith::Rem => operators::MODULO,
    }
}

fn no_such_key(frame: &Frame<'_>, slot: u32) -> Fault {
    let name = frame.attribute_names.get(slot as usize).map_or("", String::as_str);
    Box::new(ExecutionError::no_such_key(name))
}

/// A feature's value as CEL sees it.
#[inline(always)]
fn feature(f: &Frame<'_>, index: u32, double: bool) -> V<'static> {
    let value = f.features.get(index as usize).map_or(0.0, |(_, v)| *v);
    if double {
        V::Double(value)
    } else {
        V::Int(value as i64)
    }
}

/// An operand of a comparison or an arithmetic operation: the leaves most are (a constant, the
/// amount, a feature) read in place, anything else evaluated.
#[inline(always)]
fn operand<'a>(n: &'a Node, f: &mut Frame<'a>) -> Result<V<'a>, Fault> {
    match n {
        Node::Const(l) => Ok(l.value()),
        Node::Amount => Ok(V::Int(f.amount)),
        Node::Feature { index, double } => Ok(feature(f, *index, *double)),
        _ => eval(n, f),
    }
}

#[inline(always)]
fn leaf(f: &Frame<'_>, leaf: Leaf) -> V<'static> {
    match leaf {
        Leaf::Amount => V::Int(f.amount),
        Leaf::Feature { index, double } => feature(f, index, double),
        Leaf::Model(i) => V::Double(f.models.get(i as usize).map_or(f64::NAN, |(_, s)| *s)),
    }
}

#[inline(always)]
fn compare(op: CmpOp, a: V<'_>, b: V<'_>) -> Result<bool, Fault> {
    let Some(o) = ordering(a, b) else { return Err(overload(op.name(), a, b)) };
    Ok(match op {
        CmpOp::Less => o == Ordering::Less,
        CmpOp::LessEquals => o != Ordering::Greater,
        CmpOp::Greater => o == Ordering::Greater,
        CmpOp::GreaterEquals => o != Ordering::Less,
    })
}

/// Evaluates a node whose static type is bool (anything else goes through [`eval`]).
fn eval_bool<'a>(n: &'a Node, f: &mut Frame<'a>) -> Result<bool, Fault> {
    match n {
        Node::CmpLeaf { op, leaf: l, literal } => compare(*op, leaf(f, *l), literal.value()),
        Node::EqAttr { negate, slot, literal } => match f.attributes.get(*slot as usize) {
            Some(Some(v)) => Ok((*v == &**literal) != *negate),
            _ => Err(no_such_key(f, *slot)),
        },
        Node::NewPayee => Ok(f.new_payee),
        Node::NewDevice => Ok(f.new_device),
        Node::PayerBalanceKnown => Ok(f.payer_balance.is_some()),
        Node::And(a, b) => {
            let left = eval_bool(a, f);
            if matches!(left, Ok(false)) {
                return Ok(false);
            }
            let right = eval_bool(b, f)?;
            match (left, right) {
                (Ok(_), r) => Ok(r),
                (Err(_), false) => Ok(false),
                (Err(e), true) => Err(e),
            }
        }
        Node::Or(a, b) => {
            let left = eval_bool(a, f);
            if matches!(left, Ok(true)) {
                return Ok(true);
            }
            let right = eval_bool(b, f)?;
            match (left, right) {
                (Ok(_), r) => Ok(r),
                (Err(_), true) => Ok(true),
                (Err(e), false) => Err(e),
            }
        }
        Node::Not(a) => Ok(!eval_bool(a, f)?),
        Node::Cmp { op, left, right } => {
            let a = operand(left, f)?;
            let b = operand(right, f)?;
            compare(*op, a, b)
        }
        Node::InList { memo, list, value } => {
            let v = as_str(eval(value, f)?)?;
            Ok(f.in_list(*memo, list, v))
        }
        _ => as_bool(eval(n, f)?),
    }
}

fn eval<'a>(n: &'a Node, f: &mut Frame<'a>) -> Result<V<'a>, Fault> {
    Ok(match n {
        Node::Const(l) => l.value(),
        Node::Amount => V::Int(f.amount),
        Node::Currency => V::Str(f.currency),
        Node::Payer => V::Str(f.payer),
        Node::Payee => V::Str(f.payee),
        Node::NewPayee => V::Bool(f.new_payee),
        Node::NewDevice => V::Bool(f.new_device),
        Node::PayerBalance => V::Int(f.payer_balance.unwrap_or(-1)),
        Node::PayerBalanceKnown => V::Bool(f.payer_balance.is_some()),
        Node::Feature { index, double } => feature(f, *index, *double),
        Node::Model(i) => V::Double(f.models.get(*i as usize).map_or(f64::NAN, |(_, s)| *s)),
        Node::Attr(slot) => match f.attributes.get(*slot as usize) {
            Some(Some(v)) => V::Str(v),
            _ => return Err(no_such_key(f, *slot)),
        },
        Node::HasAttr(slot) => V::Bool(matches!(f.attributes.get(*slot as usize), Some(Some(_)))),
        Node::Cond(c) => {
            if as_bool(eval(&c.0, f)?)? {
                eval(&c.1, f)?
            } else {
                eval(&c.2, f)?
            }
        }
        Node::Eq { negate, left, right } => {
            let a = operand(left, f)?;
            let b = operand(right, f)?;
            V::Bool((ordering(a, b) == Some(Ordering::Equal)) != *negate)
        }
        Node::Cmp { op, left, right } => {
            let a = operand(left, f)?;
            let b = operand(right, f)?;
            let Some(o) = ordering(a, b) else { return Err(overload(op.name(), a, b)) };
            V::Bool(match op {
                CmpOp::Less => o == Ordering::Less,
                CmpOp::LessEquals => o != Ordering::Greater,
                CmpOp::Greater => o == Ordering::Greater,
                CmpOp::GreaterEquals => o != Ordering::Less,
            })
        }
        Node::IntArith { op, left, right } => {
            let a = operand(left, f)?;
            let b = operand(right, f)?;
            V::Int(int_arith(*op, a, b)?)
        }
        Node::DoubleArith { op, left, right } => {
            let (V::Double(x), V::Double(y)) = (eval(left, f)?, eval(right, f)?) else {
                return Err(Box::new(ExecutionError::InternalError("compiled double arithmetic".into())));
            };
            V::Double(match op {
                Arith::Add => x + y,
                Arith::Sub => x - y,
                Arith::Mul => x * y,
                Arith::Div | Arith::Rem => x / y,
            })
        }
        Node::NegInt(a) => match eval(a, f)? {
            V::Int(x) => {
                V::Int(x.checked_neg().ok_or_else(|| {
                    Box::new(ExecutionError::Overflow("negate", x.into(), cel::Value::Null))
                })?)
            }
            other => {
                return Err(Box::new(ExecutionError::no_such_overload("-_", vec![other.type_name().into()])))
            }
        },
        Node::NegDouble(a) => match eval(a, f)? {
            V::Double(x) => V::Double(-x),
            other => {
                return Err(Box::new(ExecutionError::no_such_overload("-_", vec![other.type_name().into()])))
            }
        },
        Node::InList { memo, list, value } => {
            let v = as_str(eval(value, f)?)?;
            V::Bool(f.in_list(*memo, list, v))
        }
        Node::Size(a) => V::Int(as_str(eval(a, f)?)?.chars().count() as i64),
        Node::StrTest { test, target, arg } => {
            let needle = as_str(eval(arg, f)?)?;
            let hay = as_str(eval(target, f)?)?;
            V::Bool(match test {
                StrTest::Contains => hay.contains(needle),
                StrTest::StartsWith => hay.starts_with(needle),
                StrTest::EndsWith => hay.ends_with(needle),
            })
        }
        Node::CmpLeaf { .. } | Node::EqAttr { .. } | Node::And(..) | Node::Or(..) | Node::Not(_) => {
            V::Bool(eval_bool(n, f)?)
        }
        Node::InLiterals { value, items } => {
            let v = eval(value, f)?;
            V::Bool(items.iter().any(|i| ordering(i.value(), v) == Some(Ordering::Equal)))
        }
    })
}
