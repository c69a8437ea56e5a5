//! The blueprint AST. Every node carries a [`Span`], so any later check can
//! point at the exact text it is about.

use dab_diag::{FileId, Span};

/// One parsed `*.dab` file.
#[derive(Debug, Clone, Default)]
pub struct Blueprint {
    pub file: FileId,
    pub statements: Vec<Statement>,
}

/// `service.NewPipeline("name").Op(..).Op(..)`
#[derive(Debug, Clone)]
pub struct Statement {
    pub service: Ident,
    pub name: Option<StrLit>,
    pub ops: Vec<Op>,
    /// `service.NewPipeline(...)`, where pipeline-level problems point.
    pub head_span: Span,
    pub span: Span,
}

impl Statement {
    /// `service` or `service/name` (SPEC section 1).
    pub fn id(&self) -> String {
        match &self.name {
            Some(n) => format!("{}/{}", self.service.name, n.value),
            None => self.service.name.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrLit {
    pub value: String,
    pub span: Span,
}

/// `.Name(args)`
#[derive(Debug, Clone)]
pub struct Op {
    pub name: Ident,
    pub args: Vec<Arg>,
    /// From the name to the closing parenthesis.
    pub span: Span,
}

impl Op {
    pub fn positional(&self) -> impl Iterator<Item = &Arg> {
        self.args.iter().filter(|a| a.key.is_none())
    }

    pub fn named(&self, key: &str) -> Option<&Arg> {
        self.args
            .iter()
            .find(|a| a.key.as_ref().is_some_and(|k| k.name == key))
    }
}

/// A positional value or `key = value`.
#[derive(Debug, Clone)]
pub struct Arg {
    pub key: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Duration(std::time::Duration),
    List(Vec<Expr>),
    Path(Path),
    /// `Name(args)` as a value: an aggregate such as `Count()`.
    Call {
        name: Ident,
        args: Vec<Expr>,
    },
    Not(Box<Expr>),
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
}

impl Expr {
    /// The identifier, when the expression is a bare name (`In(Stdin)`).
    pub fn as_name(&self) -> Option<&Ident> {
        match &self.kind {
            ExprKind::Path(p) if p.segments.is_empty() => Some(&p.root),
            _ => None,
        }
    }

    /// A short description of what kind of value this is, for messages.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            ExprKind::Int(_) => "an integer",
            ExprKind::Float(_) => "a float",
            ExprKind::Str(_) => "a string",
            ExprKind::Bool(_) => "a boolean",
            ExprKind::Duration(_) => "a duration",
            ExprKind::List(_) => "a list",
            ExprKind::Path(p) if p.segments.is_empty() => "a name",
            ExprKind::Path(_) => "a field path",
            ExprKind::Call { .. } => "a call",
            ExprKind::Not(_) | ExprKind::Binary { .. } => "an expression",
        }
    }
}

/// `tags.env`, `tags["k-1"]`, or a bare name.
#[derive(Debug, Clone)]
pub struct Path {
    pub root: Ident,
    pub segments: Vec<PathSeg>,
}

#[derive(Debug, Clone)]
pub enum PathSeg {
    Field(Ident),
    Index(StrLit),
}

impl PathSeg {
    pub fn text(&self) -> &str {
        match self {
            PathSeg::Field(i) => &i.name,
            PathSeg::Index(s) => &s.value,
        }
    }

    pub fn span(&self) -> Span {
        match self {
            PathSeg::Field(i) => i.span,
            PathSeg::Index(s) => s.span,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
}

impl BinOp {
    pub fn as_str(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::In => "in",
        }
    }
}
