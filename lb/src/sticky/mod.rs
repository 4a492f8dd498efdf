//! Session affinity.
//!
//! Precedence for a request: a learned Qlik session cookie (the value a node issued, learned
//! from its `Set-Cookie`), then the balancer's signed route cookie, then a new selection. A
//! missing, expired, tampered or garbage cookie only means "no pin".

pub mod cookie;
pub mod route;
pub mod shared;
pub mod table;
pub mod tickets;

pub use cookie::SessionCookieNames;
pub use route::RouteKey;
pub use shared::SharedStore;
pub use table::StickyTable;
pub use tickets::Tickets;

/// How the node of a request was decided (the access log and metrics use these names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A learned Qlik session cookie.
    Learned,
    /// The balancer's route cookie.
    Cookie,
    /// No pin: a node was selected for a new session.
    New,
    /// A pin named a node that cannot serve: a new node was selected and the pin rewritten.
    Redispatch,
}

impl Decision {
    pub const ALL: [Decision; 4] = [
        Decision::Learned,
        Decision::Cookie,
        Decision::New,
        Decision::Redispatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Learned => "learned",
            Decision::Cookie => "cookie",
            Decision::New => "new",
            Decision::Redispatch => "redispatch",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}
