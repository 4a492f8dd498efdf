//! `[balance]`: the strategy for new sessions and the balancer's own zone.

use super::Validator;
use crate::{file, Balance, BalanceStrategy, Node};

impl Validator<'_> {
    pub(super) fn balance(&mut self, b: &file::BalanceFile) -> Balance {
        Balance {
            strategy: b.strategy,
            zone: b.zone.clone(),
        }
    }

    /// What the strategy needs from the nodes: checked once `[[nodes]]` is.
    pub(super) fn strategy_needs(&mut self, balance: &Balance, nodes: &[Node]) {
        if balance.strategy == BalanceStrategy::LeastLoaded
            && nodes.iter().all(|n| n.engine.is_none())
        {
            self.err(
                "balance.strategy",
                "least-loaded needs telemetry: give at least one node an `engine`",
            );
        }
    }
}
